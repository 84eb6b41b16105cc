//! How activities fail: every error becomes either a retryable failure (Temporal tries again
//! with backoff) or a non-retryable one with a type name the workflow can tell apart.

use std::time::Duration;

use mainloop_store::StoreError;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::ActivityError;

/// A failure that retrying cannot fix.
pub fn permanent(type_name: &str, message: impl Into<String>) -> ActivityError {
    ActivityError::Application(Box::new(
        ApplicationFailure::builder(message.into())
            .type_name(type_name.to_string())
            .non_retryable(true)
            .build(),
    ))
}

/// A failure worth retrying, after `delay` if the other side asked for one.
pub fn retryable(message: impl Into<String>, delay: Option<Duration>) -> ActivityError {
    let builder = ApplicationFailure::builder(message.into());
    // Temporal reads a zero delay as "no time left" and stops retrying: "retry now" is the
    // policy's own backoff.
    let failure = match delay {
        Some(delay) if !delay.is_zero() => builder.next_retry_delay(delay).build(),
        _ => builder.build(),
    };
    ActivityError::Application(Box::new(failure))
}

/// The type name of a failure caused by a rate limit: retried, after the governor has
/// blocked every worker (see `governor`).
pub const RATE_LIMITED: &str = "RateLimited";

/// A retryable failure that says the rate limit was hit.
pub fn rate_limited(message: impl Into<String>) -> ActivityError {
    ActivityError::Application(Box::new(
        ApplicationFailure::builder(message.into())
            .type_name(RATE_LIMITED.to_string())
            .build(),
    ))
}

/// The message of a failure made by [`rate_limited`].
pub fn rate_limit_message(error: &ActivityError) -> Option<String> {
    match error {
        ActivityError::Application(failure) if failure.type_name() == Some(RATE_LIMITED) => {
            Some(failure.source_error().to_string())
        }
        _ => None,
    }
}

/// Store failures are retried when the database may come back (it restarted, was busy,
/// the pool was exhausted); anything else is a bug or corruption that retrying cannot fix.
pub fn store_error(error: StoreError) -> ActivityError {
    if error.is_transient() {
        retryable(format!("store: {error}"), None)
    } else {
        tracing::error!(%error, "store failure");
        permanent("StoreError", format!("store: {error}"))
    }
}
