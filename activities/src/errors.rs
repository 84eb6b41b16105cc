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
