//! The records the store keeps, as the rest of mainloop (and the API) sees them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

/// What an assistant message is: a model reply, a visible error in place of a reply, or a
/// short note the system adds to the thread (task events, later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Chat,
    Error,
    Note,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Tokens are still arriving; `content` is empty until the message completes.
    Streaming,
    Complete,
}

/// Tokens the model reported for one chat turn, and what they cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub model: String,
    /// Uncached input tokens.
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Prompt-cache writes and reads.
    #[serde(default)]
    pub cache_tokens: i64,
    /// In US dollars at the model's list price (as the CLI reports it for a subscription
    /// turn); absent for a model whose price is unknown.
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: String,
    /// Position in the thread; strictly increasing per store.
    pub seq: i64,
    pub role: Role,
    pub kind: MessageKind,
    pub content: String,
    pub status: MessageStatus,
    /// For an assistant reply: the user message it answers.
    pub reply_to: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub usage: Option<Usage>,
    /// Task proposals the model made in this message.
    pub proposals: Vec<Proposal>,
    /// For a note: the task it is about.
    #[serde(default)]
    pub task_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    Pending,
    Confirmed,
    Rejected,
}

impl ProposalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalStatus::Pending => "pending",
            ProposalStatus::Confirmed => "confirmed",
            ProposalStatus::Rejected => "rejected",
        }
    }
}

/// A worker task the model proposed; nothing runs until the user confirms it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Proposal {
    pub id: String,
    pub message_id: String,
    pub title: String,
    pub description: String,
    pub repo: String,
    pub model: Option<String>,
    pub skip_planning: bool,
    pub status: ProposalStatus,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// One entry of the append-only event log that `GET /api/events` streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: i64,
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: &'static str,
    pub data: serde_json::Value,
}

impl NewEvent {
    pub fn new(kind: &'static str, data: impl Serialize) -> Self {
        NewEvent {
            kind,
            // Serialising our own plain data types cannot fail.
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Event kinds: the `event:` field of the SSE stream. Clients switch on these strings.
pub mod event_kind {
    /// A message was added to the thread (`data`: the message).
    pub const MESSAGE_CREATED: &str = "message.created";
    /// An assistant reply (re)starts streaming (`data`: `{message_id, reply_to, attempt}`);
    /// a client drops any partial text it holds for that message.
    pub const MESSAGE_STARTED: &str = "message.started";
    /// Streamed text of a reply (`data`: `{message_id, attempt, text}`), to append.
    pub const MESSAGE_DELTA: &str = "message.delta";
    /// A reply waits for the model's rate limit to reset before it calls the model
    /// (`data`: `{message_id, attempt, until, reason}`); its next delta or completion ends
    /// the wait.
    pub const MESSAGE_WAITING: &str = "message.waiting";
    /// A message is complete (`data`: the message, with its full text).
    pub const MESSAGE_COMPLETED: &str = "message.completed";
    /// A proposal was made or decided (`data`: the proposal).
    pub const PROPOSAL_CREATED: &str = "proposal.created";
    pub const PROPOSAL_UPDATED: &str = "proposal.updated";
    /// Something the user should know that is not a message (`data`: `{level, text}`),
    /// e.g. an input the main thread ignored.
    pub const THREAD_NOTICE: &str = "thread.notice";
    /// A task was created or changed (`data`: the task).
    pub const TASK_UPDATED: &str = "task.updated";
    /// A job of a task printed a line (`data`: `{task_id, job, line, source, text}`).
    pub const TASK_LOG: &str = "task.log";
    /// Human input for a task was accepted (`data`: `{task_id, kind, id}`).
    pub const TASK_INPUT: &str = "task.input";
    /// An inbox item was raised, read or resolved (`data`: the item).
    pub const INBOX_UPDATED: &str = "inbox.updated";
}

/// A signal waiting in the outbox for delivery to Temporal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub user_id: String,
    pub workflow_id: String,
    pub signal: String,
    pub payload: String,
    pub attempts: i64,
}

/// What a chat turn needs from the store to call the model.
#[derive(Debug, Clone)]
pub struct TurnContext {
    /// The user message this turn answers.
    pub message: Message,
    /// The reply if one exists already (a retried or duplicated turn).
    pub existing_reply: Option<Message>,
    pub summary: String,
    /// Messages after the summary and before `message`, in conversation order.
    pub history: Vec<Message>,
    pub recent_repos: Vec<String>,
}

/// Messages that a compaction would fold into the summary.
#[derive(Debug, Clone)]
pub struct CompactionPlan {
    pub previous_summary: String,
    /// seq the summary reaches now (exclusive lower bound of `messages`).
    pub summarized_through: i64,
    pub messages: Vec<Message>,
}

/// A compaction that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub key: String,
    pub from_seq: i64,
    pub through_seq: i64,
    pub message_count: i64,
}
