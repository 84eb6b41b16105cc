//! How long a loop that keeps the store in use waits before trying a failed call again: the
//! event feed, the outbox relay and the PostgreSQL listener all back off the same way, so an
//! outage is retried quickly at first and then at most every few seconds.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const MOST: Duration = Duration::from_secs(5);

/// Doubling delays from 100 ms up to 5 s, back to 100 ms after a success.
#[derive(Debug)]
pub struct RetryBackoff {
    next: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff { next: FIRST }
    }
}

impl RetryBackoff {
    /// The call worked: the next failure is retried quickly again.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// The delay before the next try; each call doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MOST);
        delay
    }

    /// Sleeps for [`RetryBackoff::next_delay`].
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_five_seconds_and_a_success_starts_over() {
        let mut backoff = RetryBackoff::default();
        let delays: Vec<u128> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
