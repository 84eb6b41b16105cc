//! Rate limits shared by every worker: the time until which a scope (the model's API, say)
//! must not be called, because it answered 429. See `mainloop_activities::governor`, which
//! decides when to block and waits out blocks.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::json;

use crate::model::{NewEvent, event_kind};
use crate::{Result, Store, StoreError, db};

/// A scope blocked until a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub scope: String,
    pub until: DateTime<Utc>,
    /// What the API said (e.g. "429 rate_limit_error: …").
    pub reason: String,
}

fn from_millis(scope: &str, ms: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("rate limit {scope}: bad time {ms}")))
}

impl Store {
    /// Blocks `scope` until `until`, unless it is already blocked for longer, and returns the
    /// block now in force. One statement, so racing workers end with the latest `until`.
    pub async fn block_rate_limit(
        &self,
        scope: &str,
        until: DateTime<Utc>,
        reason: &str,
    ) -> Result<RateLimit> {
        let (until_ms, reason): (i64, String) = db!(self, |pool, pg| {
            // CASE, not GREATEST (PostgreSQL) or MAX (SQLite): one statement for both backends.
            let sql = "INSERT INTO rate_limits (scope, until_ms, reason) VALUES ($1, $2, $3) \
                 ON CONFLICT (scope) DO UPDATE SET \
                   reason = CASE WHEN excluded.until_ms > rate_limits.until_ms \
                            THEN excluded.reason ELSE rate_limits.reason END, \
                   until_ms = CASE WHEN excluded.until_ms > rate_limits.until_ms \
                              THEN excluded.until_ms ELSE rate_limits.until_ms END \
                 RETURNING until_ms, reason";
            sqlx::query_as(sql)
                .bind(scope)
                .bind(until.timestamp_millis())
                .bind(reason)
                .fetch_one(pool)
                .await?
        });
        Ok(RateLimit {
            scope: scope.to_string(),
            until: from_millis(scope, until_ms)?,
            reason,
        })
    }

    /// The last block of `scope`, if any (it may have expired: compare `until` with now).
    pub async fn rate_limit(&self, scope: &str) -> Result<Option<RateLimit>> {
        let row: Option<(i64, String)> = db!(self, |pool, pg| {
            sqlx::query_as("SELECT until_ms, reason FROM rate_limits WHERE scope = $1")
                .bind(scope)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(until_ms, reason)| {
            Ok(RateLimit {
                scope: scope.to_string(),
                until: from_millis(scope, until_ms)?,
                reason,
            })
        })
        .transpose()
    }

    /// Tells the user that attempt `attempt` of reply `message_id` waits for `limit` to reset
    /// before it calls the model.
    pub async fn reply_waiting(
        &self,
        user: &str,
        message_id: &str,
        attempt: i64,
        limit: &RateLimit,
    ) -> Result<()> {
        self.append_events(
            user,
            &[NewEvent::new(
                event_kind::MESSAGE_WAITING,
                json!({
                    "message_id": message_id,
                    "attempt": attempt,
                    "until": limit.until,
                    "reason": limit.reason,
                }),
            )],
        )
        .await?;
        Ok(())
    }
}
