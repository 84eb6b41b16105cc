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

/// A local activity (a store write) that may take up to `timeout`.
pub fn local_options(timeout: Duration) -> LocalActivityOptions {
    LocalActivityOptions::builder()
        .start_to_close_timeout(timeout)
        .build()
}
