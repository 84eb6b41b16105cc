//! Compaction of the main thread: folding the oldest unsummarised messages into the rolling
//! summary. Each message is summarised exactly once: the pointer only moves forward, by a
//! compare-and-set, and a retried compaction (same key) is a no-op.

use crate::model::{Compaction, CompactionPlan, Message};
use crate::{Result, Store, StoreError, begin_write, db, now};

#[derive(sqlx::FromRow)]
struct CompactionRow {
    key: String,
    from_seq: i64,
    through_seq: i64,
    message_count: i64,
}

impl From<CompactionRow> for Compaction {
    fn from(row: CompactionRow) -> Self {
        Compaction {
            key: row.key,
            from_seq: row.from_seq,
            through_seq: row.through_seq,
            message_count: row.message_count,
        }
    }
}

impl Store {
    /// The messages a compaction would fold in now: the complete messages after the summary,
    /// stopping before the oldest user message still waiting for its reply, minus the
    /// `keep_recent` newest (they stay verbatim in the model's context).
    pub async fn compaction_plan(&self, user: &str, keep_recent: usize) -> Result<CompactionPlan> {
        let (summary, pointer): (String, i64) = db!(self, |pool, pg| {
            sqlx::query_as("SELECT summary, summarized_through FROM threads WHERE user_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await?
        })
        .unwrap_or_default();
        let unanswered: Option<i64> = db!(self, |pool, pg| {
            sqlx::query_scalar(
                "SELECT MIN(u.seq) FROM messages u WHERE u.user_id = $1 AND u.role = 'user' \
                 AND u.seq > $2 AND NOT EXISTS ( \
                   SELECT 1 FROM messages r WHERE r.reply_to = u.id AND r.status = 'complete')",
            )
            .bind(user)
            .bind(pointer)
            .fetch_one(pool)
            .await?
        });
        let page = self
            .complete_messages_between(user, pointer, unanswered.unwrap_or(i64::MAX))
            .await?;
        let keep = page.len().saturating_sub(keep_recent);
        let messages: Vec<Message> = page.into_iter().take(keep).collect();
        Ok(CompactionPlan {
            previous_summary: summary,
            summarized_through: pointer,
            messages,
        })
    }

    /// Replaces the summary and moves the pointer from `from_pointer` to `through_seq`, once
    /// per `key`. Returns the compaction as recorded (the earlier one for a repeated key);
    /// a pointer that moved since the plan was made is a conflict and changes nothing.
    pub async fn apply_compaction(
        &self,
        key: &str,
        user: &str,
        from_pointer: i64,
        through_seq: i64,
        message_count: i64,
        summary: &str,
    ) -> Result<Compaction> {
        db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let existing: Option<CompactionRow> = sqlx::query_as(
                "SELECT key, from_seq, through_seq, message_count FROM compactions WHERE key = $1",
            )
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                tx.rollback().await?;
                return Ok(row.into());
            }
            let at = now();
            let moved = sqlx::query(
                "UPDATE threads SET summary = $1, summarized_through = $2, updated_at = $3 \
                 WHERE user_id = $4 AND summarized_through = $5",
            )
            .bind(summary)
            .bind(through_seq)
            .bind(at)
            .bind(user)
            .bind(from_pointer)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved == 0 {
                tx.rollback().await?;
                return Err(StoreError::Conflict(
                    "the summary moved since this compaction was planned".into(),
                ));
            }
            sqlx::query(
                "INSERT INTO compactions (key, user_id, from_seq, through_seq, message_count, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(key)
            .bind(user)
            .bind(from_pointer + 1)
            .bind(through_seq)
            .bind(message_count)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(Compaction {
            key: key.to_string(),
            from_seq: from_pointer + 1,
            through_seq,
            message_count,
        })
    }

    pub async fn compaction(&self, key: &str) -> Result<Option<Compaction>> {
        let row: Option<CompactionRow> = db!(self, |pool, pg| {
            sqlx::query_as(
                "SELECT key, from_seq, through_seq, message_count FROM compactions WHERE key = $1",
            )
            .bind(key)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(Into::into))
    }

    /// Every compaction of the user, in order.
    pub async fn compactions(&self, user: &str) -> Result<Vec<Compaction>> {
        let rows: Vec<CompactionRow> = db!(self, |pool, pg| {
            sqlx::query_as(
                "SELECT key, from_seq, through_seq, message_count FROM compactions \
                 WHERE user_id = $1 ORDER BY from_seq",
            )
            .bind(user)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The summary and how far it reaches.
    pub async fn summary(&self, user: &str) -> Result<(String, i64)> {
        let found: Option<(String, i64)> = db!(self, |pool, pg| {
            sqlx::query_as("SELECT summary, summarized_through FROM threads WHERE user_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.unwrap_or_default())
    }
}
