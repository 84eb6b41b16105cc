//! Rate limits: a token bucket per caller. Authenticated requests are counted against their
//! user (so users behind one proxy do not share a budget); requests with no user yet (login,
//! webhook deliveries, failed authentication) against the peer's address. An event stream
//! is one request however long it stays open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, code};

/// Buckets kept before idle (full) ones are forgotten.
const PRUNE_AT: usize = 10_000;

/// Where the limiter reads the time; tests move it by hand instead of sleeping.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Instant + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Instant::now))
    }

    /// A clock that stands still until its [`ManualClock`] moves it.
    pub fn manual() -> (Clock, ManualClock) {
        let start = Instant::now();
        let offset = Arc::new(Mutex::new(Duration::ZERO));
        let read = offset.clone();
        let clock = Clock(Arc::new(move || {
            start + *read.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
        }));
        (clock, ManualClock(offset))
    }

    fn now(&self) -> Instant {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Moves a [`Clock::manual`] clock.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Duration>>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) += by;
    }
}

#[derive(Clone, Debug)]
pub struct RateLimitSettings {
    /// Requests per minute each caller may make on average; 0 turns limits off.
    pub per_minute: u32,
    /// Requests a caller may make at once after being idle.
    pub burst: u32,
    pub clock: Clock,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            per_minute: 600,
            burst: 200,
            clock: Clock::system(),
        }
    }
}

/// Who a bucket belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    User(String),
    Peer(IpAddr),
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    clock: Clock,
    buckets: Mutex<HashMap<Caller, Bucket>>,
}

impl RateLimiter {
    pub fn new(settings: &RateLimitSettings) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(settings.per_minute) / 60.0,
            burst: f64::from(settings.burst.max(1)),
            clock: settings.clock.clone(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `caller`'s bucket, or says how long until one is available.
    pub fn take(&self, caller: Caller) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = self.clock.now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= PRUNE_AT {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, bucket| level(bucket, now, rate, burst) < burst);
        }
        let bucket = buckets.entry(caller).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = level(bucket, now, self.per_second, self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    /// Takes one request, or gives the `429` to answer instead.
    pub fn refusal(&self, caller: Caller) -> Option<Response> {
        self.take(caller).err().map(too_many)
    }
}

fn level(bucket: &Bucket, now: Instant, per_second: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * per_second).min(burst)
}

fn too_many(wait: Duration) -> Response {
    // Whole seconds, rounded up: a client that waits as told is served.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        code::RATE_LIMITED,
        format!("too many requests; try again in {seconds} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// The TCP peer of a request, when the server was started with connection info.
pub fn peer(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}

/// A peer's bucket; requests whose peer is unknown share one (the unspecified address).
pub fn peer_caller(peer: Option<SocketAddr>) -> Caller {
    Caller::Peer(peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip().to_canonical()))
}

/// Middleware for routes without a user: limits by peer address.
pub async fn by_peer(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    match limiter.refusal(peer_caller(peer(&request))) {
        None => next.run(request).await,
        Some(refused) => refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, burst: u32) -> (RateLimiter, ManualClock) {
        let (clock, hand) = Clock::manual();
        let settings = RateLimitSettings {
            per_minute,
            burst,
            clock,
        };
        (RateLimiter::new(&settings), hand)
    }

    fn alice() -> Caller {
        Caller::User("alice".into())
    }

    #[test]
    fn a_bucket_empties_refills_and_is_per_caller() {
        let (limiter, hand) = limiter(60, 3);
        for _ in 0..3 {
            assert_eq!(limiter.take(alice()), Ok(()));
        }
        let wait = limiter.take(alice()).expect_err("empty");
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(limiter.take(Caller::User("bob".into())), Ok(()));
        hand.advance(Duration::from_millis(999));
        assert!(limiter.take(alice()).is_err());
        hand.advance(Duration::from_millis(1));
        assert_eq!(limiter.take(alice()), Ok(()));
        // Idle time fills the bucket up to the burst, no further.
        hand.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            assert_eq!(limiter.take(alice()), Ok(()));
        }
        assert!(limiter.take(alice()).is_err());
    }

    #[test]
    fn zero_per_minute_turns_limits_off() {
        let (limiter, _) = limiter(0, 1);
        for _ in 0..1000 {
            assert_eq!(limiter.take(alice()), Ok(()));
        }
    }

    #[test]
    fn idle_buckets_are_forgotten_once_there_are_many() {
        let (limiter, hand) = limiter(60, 2);
        for i in 0..PRUNE_AT {
            let ip = IpAddr::from((u32::try_from(i).unwrap_or(0)).to_be_bytes());
            assert_eq!(limiter.take(Caller::Peer(ip)), Ok(()));
        }
        hand.advance(Duration::from_secs(60));
        assert_eq!(limiter.take(alice()), Ok(()));
        let kept = limiter.buckets.lock().map(|b| b.len()).unwrap_or(0);
        assert_eq!(kept, 1);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let response = too_many(Duration::from_millis(1500));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(2u64))
        );
    }
}
