//! The outbox: signals the API accepted, waiting for delivery to Temporal. The API writes an
//! item in the same transaction as the input it carries, so an outage of Temporal delays the
//! signal but never loses it; the relay delivers items in order per workflow.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::OutboxItem;
use crate::{Result, Store, begin_write, db, now};

/// Inserts an outbox item inside the open transaction `$tx`.
macro_rules! insert_outbox {
    ($tx:expr, $user:expr, $workflow_id:expr, $signal:expr, $payload:expr, $at:expr) => {
        sqlx::query(
            "INSERT INTO outbox (user_id, workflow_id, signal, payload, available_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind($user)
        .bind($workflow_id)
        .bind($signal)
        .bind($payload)
        .bind($at)
        .execute(&mut *$tx)
        .await?
    };
}
pub(crate) use insert_outbox;

/// Serialises claims across API replicas on PostgreSQL, so two relays never deliver items of
/// one workflow out of order.
const CLAIM_LOCK: i64 = 0x6d61_696e_6c6f_6f70;

/// Signals to users' main threads (chat messages, proposal decisions) are claimed before
/// signals to tasks. A thousand task answers posted at once took the relay about 12 s to
/// deliver, and a chat message posted after them waited for all of them. Order within one
/// workflow is unchanged: the priority is the workflow's.
const FIRST_WORKFLOWS: &str = "main-thread/%";

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    user_id: String,
    workflow_id: String,
    signal: String,
    payload: String,
    attempts: i64,
}

impl Store {
    /// Claims up to `limit` items for the relay `relay`, leasing them for `lease`. An item is
    /// due when its time has come, or when `relay` itself holds it: a relay claims again only
    /// once it has settled everything of its last claim, so what it still holds is a claim
    /// whose answer it never got (the database went down as the claim committed). Without
    /// taking those back, the user's thread stalled for the whole lease. An item is held back
    /// while an earlier undelivered item of its workflow waits for a retry. Items for main
    /// threads are claimed first. Items come back in id order.
    pub async fn claim_outbox(
        &self,
        relay: &str,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<OutboxItem>> {
        let at = now();
        let lease_until = at + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let mut rows: Vec<OutboxRow> = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            if pg {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(CLAIM_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            let rows = sqlx::query_as(
                "UPDATE outbox SET available_at = $1, attempts = attempts + 1, claimed_by = $5 \
                 WHERE id IN ( \
                   SELECT o.id FROM outbox o \
                   WHERE o.delivered_at IS NULL \
                   AND (o.available_at <= $2 OR o.claimed_by = $5) \
                   AND NOT EXISTS ( \
                     SELECT 1 FROM outbox p WHERE p.workflow_id = o.workflow_id \
                     AND p.delivered_at IS NULL AND p.id < o.id AND p.available_at > $2 \
                     AND COALESCE(p.claimed_by, '') <> $5) \
                   ORDER BY CASE WHEN o.workflow_id LIKE $4 THEN 0 ELSE 1 END, o.id LIMIT $3) \
                 RETURNING id, user_id, workflow_id, signal, payload, attempts",
            )
            .bind(lease_until)
            .bind(at)
            .bind(limit)
            .bind(FIRST_WORKFLOWS)
            .bind(relay)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows
        });
        rows.sort_by_key(|row| row.id);
        Ok(rows
            .into_iter()
            .map(|row| OutboxItem {
                id: row.id,
                user_id: row.user_id,
                workflow_id: row.workflow_id,
                signal: row.signal,
                payload: row.payload,
                attempts: row.attempts,
            })
            .collect())
    }

    pub async fn outbox_delivered(&self, id: i64) -> Result<()> {
        db!(self, |pool, pg| {
            sqlx::query("UPDATE outbox SET delivered_at = $1, last_error = NULL WHERE id = $2")
                .bind(now())
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Gives up on an item that can never be delivered (it is corrupt), keeping it with the
    /// reason for inspection, so it stops holding up its workflow's later items.
    pub async fn outbox_abandon(&self, id: i64, error: &str) -> Result<()> {
        db!(self, |pool, pg| {
            sqlx::query("UPDATE outbox SET delivered_at = $1, last_error = $2 WHERE id = $3")
                .bind(now())
                .bind(format!("abandoned: {error}"))
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Makes a claimed item due again after `delay`, recording why it was not delivered, and
    /// releases it from its relay's claim (which would otherwise take it back at once).
    pub async fn outbox_retry(&self, id: i64, error: Option<&str>, delay: Duration) -> Result<()> {
        let due = now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        db!(self, |pool, pg| {
            sqlx::query(
                "UPDATE outbox SET available_at = $1, last_error = COALESCE($2, last_error), \
                 claimed_by = NULL WHERE id = $3 AND delivered_at IS NULL",
            )
            .bind(due)
            .bind(error)
            .bind(id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// When the next undelivered item becomes due, if there is one.
    pub async fn outbox_next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let due: Option<DateTime<Utc>> = db!(self, |pool, pg| {
            sqlx::query_scalar("SELECT MIN(available_at) FROM outbox WHERE delivered_at IS NULL")
                .fetch_one(pool)
                .await?
        });
        Ok(due)
    }

    /// Number of items not yet delivered.
    pub async fn outbox_backlog(&self) -> Result<i64> {
        let count: i64 = db!(self, |pool, pg| {
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
                .fetch_one(pool)
                .await?
        });
        Ok(count)
    }
}
