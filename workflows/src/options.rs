//! Activity options, built the same way by every workflow from the timings in its
//! configuration (which travel in history, so they replay exactly).

use std::time::Duration;

use mainloop_activities::chat::ActivityTiming;
use temporalio_common::RetryPolicy;
use temporalio_sdk::{ActivityOptions, LocalActivityOptions};

/// Start-to-close timeout, heartbeat (when non-zero) and exponential retries from `timing`.
pub fn activity_options(timing: &ActivityTiming) -> ActivityOptions {
    let retry = RetryPolicy::builder()
        .initial_interval(Duration::from_millis(timing.retry_initial_ms.max(1)))
        .backoff_coefficient(2.0)
        .maximum_interval(Duration::from_millis(timing.retry_max_ms.max(1)))
        .maximum_attempts(timing.retry_attempts)
        .build();
    let builder = ActivityOptions::with_start_to_close_timeout(Duration::from_millis(
        timing.start_to_close_ms.max(1),
    ))
    .retry_policy(retry);
    if timing.heartbeat_ms > 0 {
        builder
            .heartbeat_timeout(Duration::from_millis(timing.heartbeat_ms))
            .build()
    } else {
        builder.build()
    }
}

/// A local activity (a store write) that may take up to `timeout` per attempt, retried
/// until it succeeds. The retries stay close together: with the SDK's default (1 s doubling
/// to 100 s), a database that was down for 20 s left the workflow waiting 11 s more for its
/// next attempt.
pub fn local_options(timeout: Duration) -> LocalActivityOptions {
    LocalActivityOptions::builder()
        .start_to_close_timeout(timeout)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(LOCAL_RETRY_INITIAL)
                .backoff_coefficient(2.0)
                .maximum_interval(LOCAL_RETRY_MAX)
                .build(),
        )
        .build()
}

const LOCAL_RETRY_INITIAL: Duration = Duration::from_millis(100);
const LOCAL_RETRY_MAX: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    /// When a store write's retry next comes after the store is back from an outage of
    /// `outage`, following `policy`'s backoff.
    fn late_by(options: &LocalActivityOptions, outage: Duration) -> Duration {
        let policy = &options.retry_policy;
        let cap = policy
            .maximum_interval()
            .unwrap_or(policy.initial_interval() * 100);
        let (mut at, mut wait) = (Duration::ZERO, policy.initial_interval());
        while at < outage {
            at += wait;
            wait = wait.mul_f64(policy.backoff_coefficient()).min(cap);
        }
        at - outage
    }

    #[test]
    fn a_store_write_resumes_soon_after_the_store_is_back() {
        let options = local_options(Duration::from_secs(30));
        assert_eq!(
            options.retry_policy.maximum_attempts(),
            0,
            "retried until it succeeds"
        );
        for outage in [1, 5, 20, 60, 600].map(Duration::from_secs) {
            let late = late_by(&options, outage);
            assert!(
                late <= LOCAL_RETRY_MAX,
                "{late:?} late after an outage of {outage:?}"
            );
        }
    }
}
