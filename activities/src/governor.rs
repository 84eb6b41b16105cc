//! The rate-limit governor: when the model's API answers 429, every worker stops calling it
//! until the limit resets, instead of each worker finding out for itself (and each failed call
//! counting against the same limit again).
//!
//! The block lives in the store (`rate_limits`), so it holds across processes and pods: a
//! worker that never saw the 429, or that started after it, waits too. Callers wait out a
//! block inside their activity, heartbeating, and show the wait to the user ("waiting for the
//! limit to reset") rather than failing.
//!
//! Blocks are wall-clock times because they are shared between machines; they only ever
//! extend, so racing workers cannot shorten each other's.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use mainloop_store::{RateLimit, Store};
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::errors::store_error;

/// The scope of the Anthropic API (chat turns, summaries and jobs share one key).
pub const MODEL_SCOPE: &str = "anthropic";

#[derive(Debug, Clone)]
pub struct GovernorSettings {
    /// How long every worker waits after a 429 that names no `retry-after`.
    pub default_wait: Duration,
    /// The longest wait honoured: a larger `retry-after` is cut to it (the call then finds
    /// out for itself whether the limit has reset).
    pub max_wait: Duration,
}

impl Default for GovernorSettings {
    fn default() -> Self {
        GovernorSettings {
            default_wait: Duration::from_secs(30),
            max_wait: Duration::from_secs(10 * 60),
        }
    }
}

#[derive(Clone)]
pub struct Governor {
    store: Store,
    settings: GovernorSettings,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Governor {
    pub fn new(store: Store, settings: GovernorSettings) -> Governor {
        Governor { store, settings }
    }

    /// Records that `scope` answered 429: no worker calls it again for `retry_after` (or the
    /// default wait). Returns the block in force, which may be a longer one already there.
    pub async fn rate_limited(
        &self,
        scope: &str,
        retry_after: Option<Duration>,
        reason: &str,
    ) -> Result<RateLimit, ActivityError> {
        let wait = retry_after
            .unwrap_or(self.settings.default_wait)
            .min(self.settings.max_wait);
        let until = Utc::now()
            + chrono::Duration::from_std(wait).unwrap_or_else(|_| chrono::Duration::zero());
        let limit = self
            .store
            .block_rate_limit(scope, until, reason)
            .await
            .map_err(store_error)?;
        tracing::warn!(
            scope,
            until = %limit.until,
            reason = %limit.reason,
            "rate limited: every worker waits until the limit resets"
        );
        Ok(limit)
    }

    /// Waits until `scope` is not blocked. Before waiting out a block, hands it to `on_wait`
    /// (once per block), so the caller can show the user what it waits for. Returns at once
    /// when nothing blocks; cancelling the activity ends the wait.
    pub async fn wait<F, Fut>(
        &self,
        ctx: &ActivityContext,
        scope: &str,
        mut on_wait: F,
    ) -> Result<(), ActivityError>
    where
        F: FnMut(RateLimit) -> Fut,
        Fut: Future<Output = Result<(), ActivityError>>,
    {
        let mut shown: Option<RateLimit> = None;
        loop {
            let Some(limit) = self.store.rate_limit(scope).await.map_err(store_error)? else {
                return Ok(());
            };
            let Ok(left) = (limit.until - Utc::now()).to_std() else {
                return Ok(());
            };
            if left.is_zero() {
                return Ok(());
            }
            if shown.as_ref() != Some(&limit) {
                tracing::info!(scope, until = %limit.until, "waiting for the rate limit to reset");
                on_wait(limit.clone()).await?;
                shown = Some(limit);
            }
            // Then read again: another worker may have extended the block meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(left) => {}
                _ = ctx.cancelled() => return Err(ActivityError::cancelled()),
            }
        }
    }
}

/// Whether a failure message of Claude Code (or the API) says the rate limit was hit.
pub fn says_rate_limited(text: &str) -> bool {
    let lower = text.to_lowercase();
    lower.contains("rate_limit_error")
        || lower.contains("rate limit")
        || lower.contains("rate-limit")
        || lower.contains("rate limited")
        || says_status_429(&lower)
}

/// "429" as a number of its own, not inside a longer one (a line number, a commit id).
fn says_status_429(text: &str) -> bool {
    text.match_indices("429").any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + 3..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_recognised_in_failure_messages() {
        assert!(says_rate_limited(
            "Claude Code failed: API Error: 429 {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\"}}"
        ));
        assert!(says_rate_limited(
            "API Error: Request rejected (429) · this may be a temporary capacity issue"
        ));
        assert!(says_rate_limited("Rate limit reached"));
        assert!(!says_rate_limited("API Error: 529 Overloaded"));
        assert!(!says_rate_limited(
            "fatal: unable to access: Could not resolve host"
        ));
        assert!(!says_rate_limited("commit 4429ab1 failed at line 14290"));
    }
}
