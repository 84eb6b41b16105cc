//! Messages of the main thread: user messages accepted by the API, and assistant replies
//! written by chat turns.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::error::is_unique_violation;
use crate::events::insert_events;
use crate::model::{
    Message, MessageKind, MessageStatus, NewEvent, Proposal, Role, TurnContext, Usage, event_kind,
};
use crate::proposals::ProposalRow;
use crate::{Result, Store, StoreError, begin_write, db, now};

/// The outbox signal that hands a user message to the main thread.
pub const SIGNAL_MESSAGE: &str = "message";

pub(crate) const MESSAGE_COLUMNS: &str = "seq, id, role, kind, content, status, reply_to, model, \
     input_tokens, output_tokens, cache_tokens, cost_usd, created_at, completed_at, \
     idempotency_key";

#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    seq: i64,
    id: String,
    role: String,
    kind: String,
    content: String,
    status: String,
    reply_to: Option<String>,
    model: Option<String>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cache_tokens: Option<i64>,
    cost_usd: Option<f64>,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    idempotency_key: Option<String>,
}

impl MessageRow {
    pub(crate) fn into_message(self, proposals: Vec<Proposal>) -> Result<Message> {
        let role = match self.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(StoreError::Corrupt(format!("message role {other:?}"))),
        };
        let kind = match self.kind.as_str() {
            "chat" => MessageKind::Chat,
            "error" => MessageKind::Error,
            "note" => MessageKind::Note,
            other => return Err(StoreError::Corrupt(format!("message kind {other:?}"))),
        };
        let status = match self.status.as_str() {
            "streaming" => MessageStatus::Streaming,
            "complete" => MessageStatus::Complete,
            other => return Err(StoreError::Corrupt(format!("message status {other:?}"))),
        };
        let usage = match (self.model, self.input_tokens, self.output_tokens) {
            (Some(model), Some(input_tokens), Some(output_tokens)) => Some(Usage {
                model,
                input_tokens,
                output_tokens,
                cache_tokens: self.cache_tokens.unwrap_or(0),
                cost_usd: self.cost_usd,
            }),
            _ => None,
        };
        let task_id = match kind {
            MessageKind::Note => self.idempotency_key.as_deref().and_then(note_task_id),
            _ => None,
        };
        Ok(Message {
            id: self.id,
            seq: self.seq,
            role,
            kind,
            content: self.content,
            status,
            reply_to: self.reply_to,
            created_at: self.created_at,
            completed_at: self.completed_at,
            usage,
            proposals,
            task_id,
        })
    }
}

/// The task a note is about: notes are keyed `note:{task_id}/{occasion}` (see `add_note`).
/// Inside an open write transaction: adds the note `text` to `user`'s thread once per `key`.
/// Evaluates to the note and whether it was added now (false: it was there already, and that
/// one is returned); the caller appends its `message.created` event.
macro_rules! insert_note {
    ($tx:expr, $user:expr, $key:expr, $text:expr) => {{
        let user: &str = $user;
        let text: &str = $text;
        let idempotency_key = format!("note:{}", $key);
        let existing: Option<$crate::messages::MessageRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM messages WHERE user_id = $1 AND idempotency_key = $2",
                $crate::messages::MESSAGE_COLUMNS
            )))
            .bind(user)
            .bind(&idempotency_key)
            .fetch_optional(&mut *$tx)
            .await?;
        if let Some(row) = existing {
            (row.into_message(Vec::new())?, false)
        } else {
            let at = $crate::now();
            sqlx::query(
                "INSERT INTO threads (user_id, created_at, updated_at) VALUES ($1, $2, $2) \
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user)
            .bind(at)
            .execute(&mut *$tx)
            .await?;
            let id = $crate::messages::new_message_id();
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO messages (id, user_id, role, kind, content, status, \
                 idempotency_key, created_at, completed_at) \
                 VALUES ($1, $2, 'assistant', 'note', $3, 'complete', $4, $5, $5) RETURNING seq",
            )
            .bind(&id)
            .bind(user)
            .bind(text)
            .bind(&idempotency_key)
            .bind(at)
            .fetch_one(&mut *$tx)
            .await?;
            let message = $crate::model::Message {
                id,
                seq,
                role: $crate::model::Role::Assistant,
                kind: $crate::model::MessageKind::Note,
                content: text.to_string(),
                status: $crate::model::MessageStatus::Complete,
                reply_to: None,
                created_at: at,
                completed_at: Some(at),
                usage: None,
                proposals: Vec::new(),
                task_id: $crate::messages::note_task_id(&idempotency_key),
            };
            (message, true)
        }
    }};
}
pub(crate) use insert_note;

pub(crate) fn note_task_id(key: &str) -> Option<String> {
    let (task_id, _) = key.strip_prefix("note:")?.split_once('/')?;
    (!task_id.is_empty()).then(|| task_id.to_string())
}

/// A reply that a chat turn may stream into.
#[derive(Debug, Clone)]
pub struct StartedReply {
    pub message: Message,
    /// Numbers the streaming attempts of this reply; deltas carry it.
    pub attempt: i64,
    /// The reply was complete already: a retried or duplicated turn.
    pub already_complete: bool,
}

/// Result of accepting a user message.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub message: Message,
    /// True when the idempotency key had been seen: nothing new was stored.
    pub replayed: bool,
}

pub(crate) fn new_message_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Store {
    /// Stores a user message, and in the same transaction the outbox signal that will hand
    /// it to the main thread and the `message.created` event. A second call with the same
    /// idempotency key returns the first message (or fails if the content differs).
    pub async fn accept_user_message(
        &self,
        user: &str,
        idempotency_key: &str,
        content: &str,
        workflow_id: &str,
    ) -> Result<Accepted> {
        // A concurrent duplicate can slip past the lookup on PostgreSQL and lose on the unique
        // index; the second pass then finds the winner.
        for _ in 0..2 {
            match self
                .try_accept_user_message(user, idempotency_key, content, workflow_id)
                .await
            {
                Err(StoreError::Database(error)) if is_unique_violation(&error) => continue,
                other => return other,
            }
        }
        Err(StoreError::Conflict(
            "the idempotency key is being used concurrently".into(),
        ))
    }

    async fn try_accept_user_message(
        &self,
        user: &str,
        idempotency_key: &str,
        content: &str,
        workflow_id: &str,
    ) -> Result<Accepted> {
        let accepted = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let existing: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 AND idempotency_key = $2"
            )))
            .bind(user)
            .bind(idempotency_key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                tx.rollback().await?;
                if row.content != content {
                    return Err(StoreError::IdempotencyMismatch);
                }
                return Ok(Accepted {
                    message: row.into_message(Vec::new())?,
                    replayed: true,
                });
            }
            let at = now();
            sqlx::query(
                "INSERT INTO threads (user_id, created_at, updated_at) VALUES ($1, $2, $2) \
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            let id = new_message_id();
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO messages (id, user_id, role, kind, content, status, idempotency_key, \
                 created_at, completed_at) \
                 VALUES ($1, $2, 'user', 'chat', $3, 'complete', $4, $5, $5) RETURNING seq",
            )
            .bind(&id)
            .bind(user)
            .bind(content)
            .bind(idempotency_key)
            .bind(at)
            .fetch_one(&mut *tx)
            .await?;
            let message = Message {
                id: id.clone(),
                seq,
                role: Role::User,
                kind: MessageKind::Chat,
                content: content.to_string(),
                status: MessageStatus::Complete,
                reply_to: None,
                created_at: at,
                completed_at: Some(at),
                usage: None,
                proposals: Vec::new(),
                task_id: None,
            };
            crate::outbox::insert_outbox!(
                tx,
                user,
                workflow_id,
                SIGNAL_MESSAGE,
                &json!({ "message_id": id }).to_string(),
                at
            );
            insert_events!(
                tx,
                pg,
                user,
                &[NewEvent::new(event_kind::MESSAGE_CREATED, &message)]
            );
            tx.commit().await?;
            Accepted {
                message,
                replayed: false,
            }
        });
        self.wake_events();
        self.wake_outbox();
        Ok(accepted)
    }

    /// Adds a short assistant note to the thread (a task event said in the chat), once per
    /// `key`: a repeated note returns the first.
    pub async fn add_note(&self, user: &str, key: &str, text: &str) -> Result<Message> {
        let (message, added) = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let (message, added) = insert_note!(tx, user, key, text);
            if added {
                insert_events!(
                    tx,
                    pg,
                    user,
                    &[NewEvent::new(event_kind::MESSAGE_CREATED, &message)]
                );
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            (message, added)
        });
        if added {
            self.wake_events();
        }
        Ok(message)
    }

    /// One page of the thread, oldest first: the `limit` messages just before `before_seq`
    /// (or the newest ones), with their proposals.
    pub async fn list_messages(
        &self,
        user: &str,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let before = before_seq.unwrap_or(i64::MAX);
        let rows: Vec<MessageRow> = db!(self, |pool, pg| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 AND seq < $2 \
                 ORDER BY seq DESC LIMIT $3"
            )))
            .bind(user)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        let mut messages = self.with_proposals(user, rows).await?;
        messages.reverse();
        Ok(messages)
    }

    /// Complete messages with `after < seq < before`, oldest first, without their proposals.
    pub(crate) async fn complete_messages_between(
        &self,
        user: &str,
        after: i64,
        before: i64,
    ) -> Result<Vec<Message>> {
        let rows: Vec<MessageRow> = db!(self, |pool, pg| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 AND seq > $2 \
                 AND seq < $3 AND status = 'complete' ORDER BY seq"
            )))
            .bind(user)
            .bind(after)
            .bind(before)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|row| row.into_message(Vec::new()))
            .collect()
    }

    pub async fn get_message(&self, user: &str, id: &str) -> Result<Message> {
        let row: Option<MessageRow> = db!(self, |pool, pg| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 AND id = $2"
            )))
            .bind(user)
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        let row = row.ok_or(StoreError::NotFound)?;
        self.with_proposals(user, vec![row])
            .await?
            .pop()
            .ok_or(StoreError::NotFound)
    }

    /// Attaches each message's proposals.
    async fn with_proposals(&self, user: &str, rows: Vec<MessageRow>) -> Result<Vec<Message>> {
        let (Some(min), Some(max)) = (
            rows.iter().map(|r| r.seq).min(),
            rows.iter().map(|r| r.seq).max(),
        ) else {
            return Ok(Vec::new());
        };
        let proposals: Vec<(String, ProposalRow)> = if rows.iter().any(|r| r.role == "assistant") {
            let found: Vec<ProposalRow> = db!(self, |pool, pg| {
                sqlx::query_as(
                    "SELECT p.id, p.user_id, p.message_id, p.title, p.description, p.repo, \
                     p.model, p.skip_planning, p.status, p.created_at, p.decided_at \
                     FROM proposals p JOIN messages m ON m.id = p.message_id \
                     WHERE m.user_id = $1 AND m.seq BETWEEN $2 AND $3 \
                     ORDER BY p.created_at, p.id",
                )
                .bind(user)
                .bind(min)
                .bind(max)
                .fetch_all(pool)
                .await?
            });
            found
                .into_iter()
                .map(|p| (p.message_id.clone(), p))
                .collect()
        } else {
            Vec::new()
        };
        rows.into_iter()
            .map(|row| {
                let mine = proposals
                    .iter()
                    .filter(|(message_id, _)| *message_id == row.id)
                    .map(|(_, p)| p.clone().into_proposal())
                    .collect::<Result<Vec<_>>>()?;
                row.into_message(mine)
            })
            .collect()
    }

    /// Everything a chat turn for `message_id` needs: the message, any reply it already has,
    /// the summary, and up to `recent_limit` messages of history after the summary in
    /// conversation order (a reply right after the message it answers, even when later
    /// user messages were stored before it).
    pub async fn turn_context(
        &self,
        user: &str,
        message_id: &str,
        recent_limit: i64,
    ) -> Result<TurnContext> {
        let message = self.get_message(user, message_id).await?;
        if message.role != Role::User {
            return Err(StoreError::Conflict(format!(
                "message {message_id} is not a user message"
            )));
        }
        let (summary, pointer): (String, i64) = db!(self, |pool, pg| {
            sqlx::query_as("SELECT summary, summarized_through FROM threads WHERE user_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await?
        })
        .unwrap_or_default();
        let existing_reply = self.reply_to(user, message_id).await?;
        let mut history: Vec<MessageRow> = db!(self, |pool, pg| {
            sqlx::query_as(
                "SELECT m.seq, m.id, m.role, m.kind, m.content, m.status, m.reply_to, \
                 m.model, m.input_tokens, m.output_tokens, m.cache_tokens, m.cost_usd, \
                 m.created_at, m.completed_at, m.idempotency_key \
                 FROM messages m LEFT JOIN messages q ON q.id = m.reply_to \
                 WHERE m.user_id = $1 AND m.seq > $2 AND m.status = 'complete' \
                 AND COALESCE(q.seq, m.seq) < $3 \
                 ORDER BY COALESCE(q.seq, m.seq) DESC, m.seq DESC LIMIT $4",
            )
            .bind(user)
            .bind(pointer)
            .bind(message.seq)
            .bind(recent_limit)
            .fetch_all(pool)
            .await?
        });
        history.reverse();
        let history = self.with_proposals(user, history).await?;
        let recent_repos = self.recent_repos(user, 5).await?;
        Ok(TurnContext {
            message,
            existing_reply,
            summary,
            history,
            recent_repos,
        })
    }

    /// The assistant message answering `message_id`, if any.
    pub async fn reply_to(&self, user: &str, message_id: &str) -> Result<Option<Message>> {
        let row: Option<MessageRow> = db!(self, |pool, pg| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 AND reply_to = $2"
            )))
            .bind(user)
            .bind(message_id)
            .fetch_optional(pool)
            .await?
        });
        match row {
            Some(row) => Ok(self.with_proposals(user, vec![row]).await?.pop()),
            None => Ok(None),
        }
    }

    /// Creates the reply to `reply_to` (or finds it) and starts a new streaming attempt on
    /// it, announced by `message.started`. A reply that is already complete is returned as
    /// it is, and the caller must not stream again.
    pub async fn start_reply(&self, user: &str, reply_to: &str) -> Result<StartedReply> {
        let started: Option<(Message, i64)> = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            sqlx::query(
                "INSERT INTO messages (id, user_id, role, kind, content, status, reply_to, \
                 attempt, created_at) \
                 VALUES ($1, $2, 'assistant', 'chat', '', 'streaming', $3, 0, $4) \
                 ON CONFLICT (reply_to) DO NOTHING",
            )
            .bind(new_message_id())
            .bind(user)
            .bind(reply_to)
            .bind(now())
            .execute(&mut *tx)
            .await?;
            let row: MessageRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE reply_to = $1 AND user_id = $2"
            )))
            .bind(reply_to)
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
            if row.status == "complete" {
                tx.rollback().await?;
                None
            } else {
                let attempt: i64 = sqlx::query_scalar(
                    "UPDATE messages SET attempt = attempt + 1 WHERE id = $1 RETURNING attempt",
                )
                .bind(&row.id)
                .fetch_one(&mut *tx)
                .await?;
                let message = row.into_message(Vec::new())?;
                insert_events!(
                    tx,
                    pg,
                    user,
                    &[NewEvent::new(
                        event_kind::MESSAGE_STARTED,
                        json!({
                            "message_id": message.id,
                            "reply_to": reply_to,
                            "attempt": attempt,
                            "message": message,
                        }),
                    )]
                );
                tx.commit().await?;
                Some((message, attempt))
            }
        });
        match started {
            Some((message, attempt)) => {
                self.wake_events();
                Ok(StartedReply {
                    message,
                    attempt,
                    already_complete: false,
                })
            }
            None => Ok(StartedReply {
                message: self
                    .reply_to(user, reply_to)
                    .await?
                    .ok_or(StoreError::NotFound)?,
                attempt: 0,
                already_complete: true,
            }),
        }
    }

    /// Appends streamed text of attempt `attempt` of reply `message_id`.
    pub async fn append_reply_text(
        &self,
        user: &str,
        message_id: &str,
        attempt: i64,
        text: &str,
    ) -> Result<()> {
        self.append_events(
            user,
            &[NewEvent::new(
                event_kind::MESSAGE_DELTA,
                json!({ "message_id": message_id, "attempt": attempt, "text": text }),
            )],
        )
        .await?;
        Ok(())
    }

    /// Completes a streaming reply with its full text. With `attempt`, only that attempt may
    /// complete it: an older attempt that outlived its timeout cannot overwrite a newer one.
    /// Completing a reply that is already complete changes nothing and returns it as stored.
    pub async fn finish_reply(
        &self,
        user: &str,
        message_id: &str,
        attempt: Option<i64>,
        kind: MessageKind,
        content: &str,
        usage: Option<&Usage>,
    ) -> Result<Message> {
        let changed = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let updated = sqlx::query(
                "UPDATE messages SET kind = $1, content = $2, status = 'complete', \
                 completed_at = $3, model = $4, input_tokens = $5, output_tokens = $6, \
                 cache_tokens = $7, cost_usd = $8 \
                 WHERE id = $9 AND user_id = $10 AND status = 'streaming' \
                 AND ($11 IS NULL OR attempt = $11)",
            )
            .bind(kind_str(kind))
            .bind(content)
            .bind(now())
            .bind(usage.map(|u| u.model.clone()))
            .bind(usage.map(|u| u.input_tokens))
            .bind(usage.map(|u| u.output_tokens))
            .bind(usage.map(|u| u.cache_tokens))
            .bind(usage.and_then(|u| u.cost_usd))
            .bind(message_id)
            .bind(user)
            .bind(attempt)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                tx.rollback().await?;
                false
            } else {
                let row: MessageRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"
                )))
                .bind(message_id)
                .fetch_one(&mut *tx)
                .await?;
                let proposals: Vec<ProposalRow> = sqlx::query_as(
                    "SELECT id, user_id, message_id, title, description, repo, model, \
                     skip_planning, status, created_at, decided_at FROM proposals \
                     WHERE message_id = $1 ORDER BY created_at, id",
                )
                .bind(message_id)
                .fetch_all(&mut *tx)
                .await?;
                let proposals = proposals
                    .into_iter()
                    .map(ProposalRow::into_proposal)
                    .collect::<Result<Vec<_>>>()?;
                let message = row.into_message(proposals)?;
                insert_events!(
                    tx,
                    pg,
                    user,
                    &[NewEvent::new(event_kind::MESSAGE_COMPLETED, &message)]
                );
                tx.commit().await?;
                true
            }
        });
        if changed {
            self.wake_events();
        }
        self.get_message(user, message_id).await
    }

    /// Puts a visible error in place of the reply to `reply_to` (creating the reply if the
    /// turn never started one). A reply that already completed is left as it is.
    pub async fn fail_reply(&self, user: &str, reply_to: &str, text: &str) -> Result<Message> {
        let started = self.start_reply(user, reply_to).await?;
        if started.already_complete {
            return Ok(started.message);
        }
        self.finish_reply(
            user,
            &started.message.id,
            Some(started.attempt),
            MessageKind::Error,
            text,
            None,
        )
        .await
    }

    /// Number of complete messages not yet folded into the summary.
    pub async fn unsummarized_count(&self, user: &str) -> Result<i64> {
        let count: i64 = db!(self, |pool, pg| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM messages m \
                 WHERE m.user_id = $1 AND m.status = 'complete' AND m.seq > \
                 COALESCE((SELECT summarized_through FROM threads WHERE user_id = $1), 0)",
            )
            .bind(user)
            .fetch_one(pool)
            .await?
        });
        Ok(count)
    }
}

pub(crate) fn kind_str(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Chat => "chat",
        MessageKind::Error => "error",
        MessageKind::Note => "note",
    }
}
