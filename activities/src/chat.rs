//! The main thread's activities: a chat turn (load context, call the model with streaming and
//! tools, stream text into the event log, store the reply), compaction of old messages into
//! the summary, and the small store writes the workflow makes as local activities.
//!
//! The model is the Messages API (an API key), or the Claude Code CLI on a Claude
//! subscription (`chat_cli`); the worker picks one at start-up ([`ChatBackend`]).
//!
//! Every activity here may run more than once for the same input; each is written so that a
//! repeat has the effect of one run: a user message gets one reply, a proposal is stored once
//! per (reply, ordinal), a compaction key is applied once.

use std::sync::Arc;
use std::time::Duration;

use mainloop_store::{
    MessageKind, NewEvent, NewProposal, Proposal, ProposalStatus, Role, Store, StoreError,
    TurnContext, Usage, event_kind,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio::sync::mpsc;

use crate::anthropic::{
    AnthropicClient, ApiMessage, ApiRole, Block, ModelError, Request, StreamError, Tool,
};
use crate::chat_cli::ClaudeCli;
use crate::errors::{permanent, rate_limit_message, retryable, store_error};
use crate::governor::{Governor, GovernorSettings, MODEL_SCOPE};
use crate::heartbeat::Heartbeat;
use crate::metrics::{ActivityMetrics, Source, Spent, TurnOutcome};
use crate::pricing::{self, Tokens};
use crate::repo::parse_repo;

/// How the chat activities behave; from the worker's configuration.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// Model of the main thread (a fast one).
    pub model: String,
    /// Model that writes summaries.
    pub summary_model: String,
    pub max_tokens: u32,
    /// Most messages of verbatim history sent with a turn.
    pub history_limit: i64,
    /// Streamed text is written to the event log at most this often (the first piece at once).
    pub flush_interval: Duration,
    /// …or as soon as this much text is waiting.
    pub flush_chars: usize,
    /// Most model calls in one turn (each tool use costs one more).
    pub max_model_calls: usize,
    /// How often a running turn heartbeats.
    pub heartbeat_interval: Duration,
    /// The main-thread workflow's settings, handed to it by `thread.config`.
    pub thread: ThreadConfig,
}

/// Timeouts and retries of one kind of activity, in milliseconds (a wire type: it travels in
/// workflow history).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivityTiming {
    pub start_to_close_ms: u64,
    pub heartbeat_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// 0 = retry until `start_to_close`/schedule limits.
    pub retry_attempts: u32,
}

/// What the main-thread workflow decides with. Read once per run through the `thread.config`
/// local activity, so the worker's configuration governs it and a new run picks up changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreadConfig {
    /// Turns per workflow run before continuing as new (keeps history bounded).
    pub turns_per_run: u32,
    /// History events after which a run continues as new even short of `turns_per_run`; none:
    /// only turns count (a thread from before the limit).
    #[serde(default)]
    pub history_limit: Option<u32>,
    /// Compact when more messages than this are not yet summarised.
    pub compaction_threshold: i64,
    /// Messages left verbatim by a compaction.
    pub keep_recent: u32,
    pub turn: ActivityTiming,
    pub compaction: ActivityTiming,
    /// The task queue of the tasks the thread starts; none: the thread's own (as before
    /// threads had a queue of their own).
    #[serde(default)]
    pub task_queue: Option<String>,
    /// The thread's own task queue, which it moves to when it continues as new; none: it
    /// stays where it is.
    #[serde(default)]
    pub chat_queue: Option<String>,
    /// The task queue the thread starts new tasks on (they move to `task_queue` when they first
    /// wait); none: `task_queue`.
    #[serde(default)]
    pub intake_queue: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TurnInput {
    pub user: String,
    pub message_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TurnOutput {
    pub reply_id: String,
    /// The message had been answered already (a duplicate or retried turn).
    pub already_answered: bool,
    pub proposal_ids: Vec<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Messages not yet summarised after this turn.
    pub unsummarized: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompactInput {
    pub user: String,
    /// Unique per compaction the workflow decides on; a retry reuses it.
    pub key: String,
    pub keep_recent: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompactOutput {
    pub applied: bool,
    pub message_count: i64,
    pub through_seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailTurnInput {
    pub user: String,
    pub message_id: String,
    /// What the user should read in place of the reply.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NoticeInput {
    pub user: String,
    pub level: String,
    pub text: String,
}

/// A short assistant note for the thread (a task event), said once per key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NoteInput {
    pub user: String,
    pub key: String,
    pub text: String,
}

/// Several notes for one thread, said in order, each once per key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotesInput {
    pub user: String,
    pub notes: Vec<NoteLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NoteLine {
    pub key: String,
    pub text: String,
}

/// Error types the workflow tells apart (`ApplicationFailure` type names).
pub mod failure_type {
    /// The model refused the request for good (bad key, unknown model, invalid request).
    pub const MODEL_REJECTED: &str = "ModelRejected";
    /// No model is configured.
    pub const MODEL_NOT_CONFIGURED: &str = "ModelNotConfigured";
    /// The message a signal named does not exist for that user.
    pub const MESSAGE_NOT_FOUND: &str = "MessageNotFound";
}

/// The reply a turn writes: whose, which, and which attempt at it.
pub(crate) struct ReplyRef<'a> {
    pub user: &'a str,
    pub id: &'a str,
    pub attempt: i64,
}

/// What answers the chat: chosen once, at start-up, from the worker's configuration.
#[derive(Debug, Clone)]
pub enum ChatBackend {
    /// The Messages API with an API key (`ANTHROPIC_API_KEY`).
    Api(AnthropicClient),
    /// The Claude Code CLI with a subscription token (`CLAUDE_CODE_OAUTH_TOKEN`).
    Cli(ClaudeCli),
    /// Neither is configured: turns end in a visible error that says what to configure.
    NotConfigured,
}

impl ChatBackend {
    /// How the start-up log names it.
    pub fn describe(&self) -> &'static str {
        match self {
            ChatBackend::Api(_) => "Anthropic API (ANTHROPIC_API_KEY)",
            ChatBackend::Cli(_) => "Claude Code CLI with a subscription (CLAUDE_CODE_OAUTH_TOKEN)",
            ChatBackend::NotConfigured => "none",
        }
    }
}

pub struct ChatActivities {
    store: Store,
    backend: ChatBackend,
    settings: ChatSettings,
    metrics: Option<Arc<ActivityMetrics>>,
    governor: Governor,
}

impl ChatActivities {
    pub fn new(store: Store, backend: ChatBackend, settings: ChatSettings) -> Self {
        ChatActivities {
            governor: Governor::new(store.clone(), GovernorSettings::default()),
            store,
            backend,
            settings,
            metrics: None,
        }
    }

    /// Waits out rate limits as `settings` say.
    pub fn with_governor(mut self, settings: GovernorSettings) -> Self {
        self.governor = Governor::new(self.store.clone(), settings);
        self
    }

    /// Records turns and what they spent in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ActivityMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn settings(&self) -> &ChatSettings {
        &self.settings
    }

    /// Waits until no rate limit blocks the model, showing the wait on `reply`.
    async fn wait_for_rate_limit(
        &self,
        ctx: &ActivityContext,
        reply: &ReplyRef<'_>,
    ) -> Result<(), ActivityError> {
        self.governor
            .wait(ctx, MODEL_SCOPE, |limit| async move {
                self.show_waiting(reply, &limit).await
            })
            .await
    }

    /// The activity error for a failed model call; a rate limit blocks every worker first.
    async fn model_failed(&self, error: ModelError) -> ActivityError {
        if let ModelError::Retryable {
            message,
            retry_after,
            rate_limited: true,
        } = &error
            && let Err(failed) = self
                .governor
                .rate_limited(MODEL_SCOPE, *retry_after, message)
                .await
        {
            return failed;
        }
        model_error(error)
    }

    /// Tells the user that `reply` waits for `limit` to reset.
    async fn show_waiting(
        &self,
        reply: &ReplyRef<'_>,
        limit: &mainloop_store::RateLimit,
    ) -> Result<(), ActivityError> {
        self.store
            .reply_waiting(reply.user, reply.id, reply.attempt, limit)
            .await
            .map_err(store_error)
    }

    fn not_configured() -> ActivityError {
        permanent(
            failure_type::MODEL_NOT_CONFIGURED,
            "no model is configured: set ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN, for a \
             Claude subscription) for the worker",
        )
    }
}

#[activities]
impl ChatActivities {
    /// The main-thread workflow's settings.
    #[activity(name = "thread.config")]
    pub async fn thread_config(
        self: Arc<Self>,
        _ctx: ActivityContext,
        _input: (),
    ) -> Result<ThreadConfig, ActivityError> {
        Ok(self.settings.thread.clone())
    }

    /// Answers one user message: streams the model's reply into the event log and stores it.
    #[activity(name = "chat.respond")]
    pub async fn respond(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: TurnInput,
    ) -> Result<TurnOutput, ActivityError> {
        let result = self.turn(ctx, input).await;
        if let Some(metrics) = &self.metrics {
            metrics.chat_turn(turn_outcome(&result));
        }
        result
    }

    /// Folds the oldest unsummarised messages into the summary, once per key.
    #[activity(name = "chat.compact")]
    pub async fn compact(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: CompactInput,
    ) -> Result<CompactOutput, ActivityError> {
        if let Some(done) = self
            .store
            .compaction(&input.key)
            .await
            .map_err(store_error)?
        {
            return Ok(CompactOutput {
                applied: true,
                message_count: done.message_count,
                through_seq: done.through_seq,
            });
        }
        let plan = self
            .store
            .compaction_plan(&input.user, input.keep_recent as usize)
            .await
            .map_err(store_error)?;
        let Some(last) = plan.messages.last() else {
            return Ok(CompactOutput {
                applied: false,
                message_count: 0,
                through_seq: plan.summarized_through,
            });
        };
        let through_seq = last.seq;
        let count = i64::try_from(plan.messages.len()).unwrap_or(i64::MAX);
        let transcript = plan
            .messages
            .iter()
            .map(|m| format!("{}: {}", speaker(m.role), m.content))
            .collect::<Vec<_>>()
            .join("\n\n");
        let previous = if plan.previous_summary.is_empty() {
            "(none yet)".to_string()
        } else {
            plan.previous_summary.clone()
        };
        let prompt = format!(
            "<summary>\n{previous}\n</summary>\n\n<new_messages>\n{transcript}\n\
             </new_messages>\n\nWrite the updated summary."
        );
        // A summary can wait: nothing is shown while it does.
        self.governor
            .wait(&ctx, MODEL_SCOPE, |_| async { Ok(()) })
            .await?;
        let summary = match &self.backend {
            ChatBackend::Api(model) => {
                let request = Request {
                    model: self.settings.summary_model.clone(),
                    max_tokens: 1500,
                    system: SUMMARY_PROMPT.to_string(),
                    messages: vec![ApiMessage {
                        role: ApiRole::User,
                        content: vec![Block::Text { text: prompt }],
                    }],
                    tools: Vec::new(),
                };
                match model.complete(&request).await {
                    Ok(completion) => completion.text(),
                    Err(error) => return Err(self.model_failed(error).await),
                }
            }
            ChatBackend::Cli(cli) => {
                match cli
                    .complete(&self.settings.summary_model, SUMMARY_PROMPT, prompt)
                    .await
                {
                    Ok(text) => text,
                    Err(error) => {
                        if let Some(message) = rate_limit_message(&error) {
                            self.governor
                                .rate_limited(MODEL_SCOPE, None, &message)
                                .await?;
                        }
                        return Err(error);
                    }
                }
            }
            ChatBackend::NotConfigured => return Err(Self::not_configured()),
        };
        let summary = summary.trim().to_string();
        if summary.is_empty() {
            return Err(retryable("the model wrote an empty summary", None));
        }
        match self
            .store
            .apply_compaction(
                &input.key,
                &input.user,
                plan.summarized_through,
                through_seq,
                count,
                &summary,
            )
            .await
        {
            Ok(done) => Ok(CompactOutput {
                applied: true,
                message_count: done.message_count,
                through_seq: done.through_seq,
            }),
            // Another compaction moved the summary first: nothing to do.
            Err(StoreError::Conflict(_)) => Ok(CompactOutput {
                applied: false,
                message_count: 0,
                through_seq: plan.summarized_through,
            }),
            Err(error) => Err(store_error(error)),
        }
    }

    /// Puts a visible error in place of a reply that could not be written.
    #[activity(name = "chat.fail_turn")]
    pub async fn fail_turn(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: FailTurnInput,
    ) -> Result<(), ActivityError> {
        match self
            .store
            .fail_reply(&input.user, &input.message_id, &input.reason)
            .await
        {
            Ok(_) => Ok(()),
            // The message is gone (or never was): there is nothing to answer.
            Err(StoreError::NotFound) => Ok(()),
            Err(error) => Err(store_error(error)),
        }
    }

    /// Records something the user should see that is not a message.
    #[activity(name = "thread.notice")]
    pub async fn notice(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: NoticeInput,
    ) -> Result<(), ActivityError> {
        self.store
            .append_events(
                &input.user,
                &[NewEvent::new(
                    event_kind::THREAD_NOTICE,
                    json!({ "level": input.level, "text": input.text }),
                )],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Adds a task event to the thread as a short note.
    #[activity(name = "thread.note")]
    pub async fn note(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: NoteInput,
    ) -> Result<(), ActivityError> {
        self.store
            .add_note(&input.user, &input.key, &input.text)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Adds several task events to the thread as notes, in order. A retry after a partial
    /// write re-adds nothing: each note is keyed.
    #[activity(name = "thread.notes")]
    pub async fn notes(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: NotesInput,
    ) -> Result<(), ActivityError> {
        for note in &input.notes {
            self.store
                .add_note(&input.user, &note.key, &note.text)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }
}

/// What a turn produced, whichever backend ran it.
pub(crate) struct Outcome {
    pub text: String,
    pub proposals: Vec<Proposal>,
    pub tokens: Tokens,
    /// The cost as the backend reported it (the CLI does); none: priced from `tokens`.
    pub cost_usd: Option<f64>,
}

impl ChatActivities {
    /// One chat turn: the body of `chat.respond`, which counts how it ended.
    async fn turn(
        &self,
        ctx: ActivityContext,
        input: TurnInput,
    ) -> Result<TurnOutput, ActivityError> {
        let context = match self
            .store
            .turn_context(&input.user, &input.message_id, self.settings.history_limit)
            .await
        {
            Ok(context) => context,
            Err(StoreError::NotFound | StoreError::Conflict(_)) => {
                return Err(permanent(
                    failure_type::MESSAGE_NOT_FOUND,
                    format!("no user message {} for this user", input.message_id),
                ));
            }
            Err(error) => return Err(store_error(error)),
        };
        if let Some(reply) = &context.existing_reply
            && reply.status == mainloop_store::MessageStatus::Complete
        {
            return self.already_answered(&input.user, reply).await;
        }
        if matches!(self.backend, ChatBackend::NotConfigured) {
            return Err(Self::not_configured());
        }
        let started = self
            .store
            .start_reply(&input.user, &input.message_id)
            .await
            .map_err(store_error)?;
        if started.already_complete {
            return self.already_answered(&input.user, &started.message).await;
        }
        let reply_id = started.message.id.clone();
        let _heartbeat = Heartbeat::start(ctx.clone(), self.settings.heartbeat_interval);
        let reply = ReplyRef {
            user: &input.user,
            id: &reply_id,
            attempt: started.attempt,
        };
        self.wait_for_rate_limit(&ctx, &reply).await?;
        // Temporal cancels an attempt it has given up on (timed out, say): stop streaming then,
        // rather than compete with the attempt that replaces it.
        let conversed = async {
            match &self.backend {
                ChatBackend::Api(model) => self.converse(&ctx, model, &reply, &context).await,
                ChatBackend::Cli(cli) => {
                    self.converse_cli(cli, &input.user, &reply_id, started.attempt, &context)
                        .await
                }
                ChatBackend::NotConfigured => Err(Self::not_configured()),
            }
        };
        let result = tokio::select! {
            result = conversed => result,
            _ = ctx.cancelled() => Err(ActivityError::cancelled()),
        };
        if let Err(error) = &result
            && let Some(message) = rate_limit_message(error)
        {
            // The CLI retried on its own already: block every worker, show it, and let the
            // next attempt wait out the block.
            let limit = self
                .governor
                .rate_limited(MODEL_SCOPE, None, &message)
                .await?;
            self.show_waiting(&reply, &limit).await?;
        }
        let outcome = result?;
        let usage = Usage {
            model: self.settings.model.clone(),
            input_tokens: outcome.tokens.input,
            output_tokens: outcome.tokens.output,
            cache_tokens: outcome.tokens.cache(),
            cost_usd: outcome
                .cost_usd
                .or_else(|| pricing::cost_usd(&self.settings.model, outcome.tokens)),
        };
        self.store
            .finish_reply(
                &input.user,
                &reply_id,
                Some(started.attempt),
                MessageKind::Chat,
                &outcome.text,
                Some(&usage),
            )
            .await
            .map_err(store_error)?;
        if let Some(metrics) = &self.metrics {
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            metrics.spent(
                Source::Chat,
                Spent {
                    input_tokens: count(usage.input_tokens),
                    output_tokens: count(usage.output_tokens),
                    cache_tokens: count(usage.cache_tokens),
                    cost_usd: usage.cost_usd,
                },
            );
        }
        Ok(TurnOutput {
            reply_id,
            already_answered: false,
            proposal_ids: outcome.proposals.into_iter().map(|p| p.id).collect(),
            input_tokens: outcome.tokens.input,
            output_tokens: outcome.tokens.output,
            unsummarized: self.unsummarized(&input.user).await?,
        })
    }

    /// The outcome of a turn whose reply exists already (a duplicate or retried turn).
    async fn already_answered(
        &self,
        user: &str,
        reply: &mainloop_store::Message,
    ) -> Result<TurnOutput, ActivityError> {
        Ok(TurnOutput {
            reply_id: reply.id.clone(),
            already_answered: true,
            proposal_ids: reply.proposals.iter().map(|p| p.id.clone()).collect(),
            input_tokens: 0,
            output_tokens: 0,
            unsummarized: self.unsummarized(user).await?,
        })
    }

    async fn unsummarized(&self, user: &str) -> Result<i64, ActivityError> {
        self.store
            .unsummarized_count(user)
            .await
            .map_err(store_error)
    }

    /// Calls the model until it stops using tools, streaming its text into reply
    /// `reply_id`. The text streamed is exactly the text returned.
    async fn converse(
        &self,
        ctx: &ActivityContext,
        model: &AnthropicClient,
        reply: &ReplyRef<'_>,
        context: &TurnContext,
    ) -> Result<Outcome, ActivityError> {
        let (user, reply_id, attempt) = (reply.user, reply.id, reply.attempt);
        let mut messages = api_messages(context);
        let system = system_prompt(context);
        let tools = vec![propose_task_tool()];
        let (writer, pieces) = spawn_text_writer(
            self.store.clone(),
            user.to_string(),
            reply_id.to_string(),
            attempt,
            self.settings.flush_interval,
            self.settings.flush_chars,
        );
        let mut text = String::new();
        let mut proposals = Vec::new();
        let mut tokens = Tokens::default();
        let mut result = Ok(());
        for _ in 0..self.settings.max_model_calls {
            let request = Request {
                model: self.settings.model.clone(),
                max_tokens: self.settings.max_tokens,
                system: system.clone(),
                messages: messages.clone(),
                tools: tools.clone(),
            };
            let completion = loop {
                // Text of separate model calls is separated by a blank line, streamed like the
                // rest.
                let mut needs_separator = !text.is_empty();
                let text_before = text.len();
                let streamed = model
                    .stream(&request, |piece| {
                        let mut chunk = String::new();
                        if needs_separator {
                            chunk.push_str("\n\n");
                            needs_separator = false;
                        }
                        chunk.push_str(&piece);
                        text.push_str(&chunk);
                        let sent = pieces.send(chunk).map_err(|_| {
                            anyhow::anyhow!("the reply could not be written to the event log")
                        });
                        async move { sent }
                    })
                    .await;
                match streamed {
                    Ok(completion) => break Ok(completion),
                    // Rate limited before it said a word: every worker waits for the limit to
                    // reset, and then this call is made again, within this attempt (a 429
                    // does not use up the turn's retries).
                    Err(StreamError::Model(ModelError::Retryable {
                        message,
                        retry_after,
                        rate_limited: true,
                    })) if text.len() == text_before => {
                        let waited = async {
                            let limit = self
                                .governor
                                .rate_limited(MODEL_SCOPE, retry_after, &message)
                                .await?;
                            self.show_waiting(reply, &limit).await?;
                            self.wait_for_rate_limit(ctx, reply).await
                        };
                        if let Err(error) = waited.await {
                            break Err(error);
                        }
                    }
                    Err(StreamError::Model(error)) => break Err(self.model_failed(error).await),
                    Err(StreamError::Sink(error)) => break Err(retryable(error.to_string(), None)),
                }
            };
            let completion = match completion {
                Ok(completion) => completion,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            tokens.add(completion.tokens());
            let tool_uses: Vec<(String, String, Value)> = completion
                .content
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { id, name, input } => {
                        Some((id.clone(), name.clone(), input.clone()))
                    }
                    _ => None,
                })
                .collect();
            if tool_uses.is_empty() || completion.stop_reason.as_deref() != Some("tool_use") {
                break;
            }
            let mut results = Vec::new();
            for (id, name, input) in tool_uses {
                let (content, is_error) = if name == PROPOSE_TASK {
                    match self.propose(user, reply_id, proposals.len(), &input).await {
                        Ok(Ok(proposal)) => {
                            let content =
                                proposal_shown(Some(&proposal.id), &proposal.title, &proposal.repo);
                            proposals.push(proposal);
                            (content, false)
                        }
                        Ok(Err(invalid)) => (invalid, true),
                        Err(error) => {
                            result = Err(error);
                            break;
                        }
                    }
                } else {
                    (format!("Unknown tool {name:?}."), true)
                };
                results.push(Block::ToolResult {
                    tool_use_id: id,
                    content,
                    is_error,
                });
            }
            if result.is_err() {
                break;
            }
            messages.push(ApiMessage {
                role: ApiRole::Assistant,
                content: completion.content,
            });
            messages.push(ApiMessage {
                role: ApiRole::User,
                content: results,
            });
        }
        drop(pieces);
        let written = writer.await.map_err(|e| retryable(e.to_string(), None))?;
        result?;
        written.map_err(store_error)?;
        if text.trim().is_empty() && !proposals.is_empty() {
            text = PROPOSED_WITHOUT_A_WORD.to_string();
        }
        Ok(Outcome {
            text,
            proposals,
            tokens,
            cost_usd: None,
        })
    }

    /// Validates a `propose_task` call and stores the proposal. The inner error is the reason
    /// the model gets back (it may try again); the outer one fails the turn.
    pub(crate) async fn propose(
        &self,
        user: &str,
        reply_id: &str,
        ordinal: usize,
        input: &Value,
    ) -> Result<Result<Proposal, String>, ActivityError> {
        let proposal = match validate_proposal(input) {
            Ok(valid) => valid,
            Err(reason) => return Ok(Err(reason)),
        };
        // One id per (reply, ordinal): a retried turn that proposes again updates nothing.
        let id = uuid::Uuid::new_v5(
            &PROPOSAL_NAMESPACE,
            format!("{reply_id}/{ordinal}").as_bytes(),
        )
        .to_string();
        let stored = self
            .store
            .create_proposal(
                user,
                &NewProposal {
                    id,
                    message_id: reply_id.to_string(),
                    title: proposal.title,
                    description: proposal.description,
                    repo: proposal.repo,
                    model: proposal.model,
                    skip_planning: proposal.skip_planning,
                },
            )
            .await
            .map_err(store_error)?;
        Ok(Ok(stored))
    }
}

/// The reply when the model proposed without a word: the card speaks for itself, but the
/// thread should not show an empty bubble.
pub(crate) const PROPOSED_WITHOUT_A_WORD: &str = "I've proposed a task; confirm it below to start.";

/// What the model is told after a valid `propose_task` call (`id` is the stored proposal's,
/// when the caller knows it).
pub fn proposal_shown(id: Option<&str>, title: &str, repo: &str) -> String {
    let id = id.map(|id| format!(" (id {id})")).unwrap_or_default();
    format!(
        "Proposal shown to the user as a card{id}: \"{title}\" in {repo}. Nothing runs until \
         they press Confirm; they may also edit or reject it. Tell them briefly what you proposed."
    )
}

const PROPOSAL_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6d61696e_6c6f_6f70_7072_6f706f73616c);

/// A `propose_task` call that passed [`validate_proposal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidProposal {
    pub title: String,
    pub description: String,
    /// `owner/name`.
    pub repo: String,
    pub model: Option<String>,
    pub skip_planning: bool,
}

/// Checks a `propose_task` call's input; the error is a reason the model can act on.
pub fn validate_proposal(input: &Value) -> Result<ValidProposal, String> {
    let text = |field: &str, max: usize| -> Result<String, String> {
        let value = input
            .get(field)
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or_default();
        if value.is_empty() {
            return Err(format!("`{field}` is required."));
        }
        if value.chars().count() > max {
            return Err(format!("`{field}` is longer than {max} characters."));
        }
        Ok(value.to_string())
    };
    let title = text("title", 200)?;
    let description = text("description", 20_000)?;
    let repo = text("repo", 300)?;
    let repo = parse_repo(&repo)
        .map_err(|e| format!("{e}. Ask the user which GitHub repository (owner/name) to use."))?;
    let model = match input.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if m.trim().is_empty() => None,
        Some(Value::String(m))
            if m.len() <= 100
                && m.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) =>
        {
            Some(m.clone())
        }
        Some(_) => return Err("`model` must be a model name such as `opus`.".into()),
    };
    let skip_planning = match input.get("skip_planning") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("`skip_planning` must be true or false.".into()),
    };
    Ok(ValidProposal {
        title,
        description,
        repo: repo.full_name(),
        model,
        skip_planning,
    })
}

fn speaker(role: Role) -> &'static str {
    match role {
        Role::User => "User",
        Role::Assistant => "Assistant",
    }
}

/// The conversation as the model sees it: history after the summary (replies right after
/// their messages), then the message being answered. Error placeholders are left out, a
/// reply's proposals are noted in its text, same-role neighbours are merged, and the first
/// message is the user's (as the API requires).
pub(crate) fn api_messages(context: &TurnContext) -> Vec<ApiMessage> {
    let mut out: Vec<ApiMessage> = Vec::new();
    let entries = context
        .history
        .iter()
        .filter(|m| m.kind != MessageKind::Error)
        .map(|m| {
            let mut text = m.content.clone();
            for p in &m.proposals {
                let status = match p.status {
                    ProposalStatus::Pending => "awaiting the user's decision",
                    ProposalStatus::Confirmed => "confirmed by the user",
                    ProposalStatus::Rejected => "rejected by the user",
                };
                text.push_str(&format!(
                    "\n\n[Proposed task \"{}\" in {}: {status}]",
                    p.title, p.repo
                ));
            }
            (m.role, text)
        })
        .chain(std::iter::once((
            Role::User,
            context.message.content.clone(),
        )));
    for (role, text) in entries {
        if text.trim().is_empty() {
            continue;
        }
        let role = match role {
            Role::User => ApiRole::User,
            Role::Assistant => ApiRole::Assistant,
        };
        if out.is_empty() && role == ApiRole::Assistant {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == role => last.content.push(Block::Text { text }),
            _ => out.push(ApiMessage {
                role,
                content: vec![Block::Text { text }],
            }),
        }
    }
    out
}

const BASE_PROMPT: &str = "\
You are the assistant in mainloop, the user's single continuous conversation for getting \
software work done. You are fast and concise; the user often reads you on a phone.

You can hand development work to autonomous worker agents (Claude Code). A worker plans the \
change in a GitHub issue, implements it in a draft pull request, fixes CI, and marks the pull \
request ready for review; everything that needs the user lands in their inbox.

When the user asks for a change to a codebase (write, modify or delete code, fix a bug, add a \
feature, update dependencies, …), call the `propose_task` tool. The proposal appears as a card \
with Confirm and Reject buttons: nothing starts until the user confirms, so propose directly \
instead of asking for permission first. You need the GitHub repository (owner/name); if it is \
not clear from the conversation, ask for it (suggest a recent one if it fits). Write a \
description a capable engineer could act on without this conversation: goal, context the user \
gave, constraints and acceptance criteria. Only set `skip_planning` when the user asks to skip \
the plan.

Do not propose tasks for questions, explanations, or general conversation: answer those \
yourself. Never claim that work has started, finished or been merged unless a note in this \
conversation says so.";

const SUMMARY_PROMPT: &str = "\
You maintain the memory of a long-running conversation between a user and their assistant in \
mainloop, an orchestrator for coding agents. Given the current summary and the messages that \
follow it, write the updated summary. Keep what is needed to continue naturally: facts about \
the user and their preferences, decisions, repositories, tasks proposed (and whether they were \
confirmed or rejected), open questions and commitments. Drop small talk. Be concise: at most \
about 400 words. Write only the summary.";

pub(crate) fn system_prompt(context: &TurnContext) -> String {
    let mut prompt = BASE_PROMPT.to_string();
    if !context.recent_repos.is_empty() {
        prompt.push_str("\n\nRepositories the user worked with recently:\n");
        for repo in &context.recent_repos {
            prompt.push_str(&format!("- {repo}\n"));
        }
    }
    if !context.summary.trim().is_empty() {
        prompt.push_str("\n\nSummary of the earlier conversation:\n<summary>\n");
        prompt.push_str(context.summary.trim());
        prompt.push_str("\n</summary>");
    }
    prompt
}

/// The name of the tool the model proposes tasks with.
pub const PROPOSE_TASK: &str = "propose_task";

/// The `propose_task` tool: its description and input schema (the Messages API's and the MCP
/// server's).
pub fn propose_task_tool() -> Tool {
    Tool {
        name: PROPOSE_TASK.into(),
        description: "Propose a worker task: a coding agent that plans the change in a GitHub \
                      issue, implements it in a draft pull request, fixes CI and marks the pull \
                      request ready for review. The user sees the proposal as a card and must \
                      confirm it before anything starts."
            .into(),
        input_schema: json!({
            "type": "object",
            "properties": {
                "title": {
                    "type": "string",
                    "description": "Short imperative title, e.g. \"Add dark mode\"."
                },
                "description": {
                    "type": "string",
                    "description": "What to change and why, with the context the user gave, constraints and acceptance criteria."
                },
                "repo": {
                    "type": "string",
                    "description": "GitHub repository as owner/name (or its https://github.com/owner/name URL)."
                },
                "model": {
                    "type": "string",
                    "description": "Model for the worker, only if the user asked for one."
                },
                "skip_planning": {
                    "type": "boolean",
                    "description": "Go straight to implementation without a plan review; only when the user asks for it."
                }
            },
            "required": ["title", "description", "repo"]
        }),
    }
}

/// Maps a model failure to the activity error that makes Temporal retry it, or not.
fn model_error(error: ModelError) -> ActivityError {
    match error {
        ModelError::Retryable {
            message,
            retry_after,
            ..
        } => retryable(message, retry_after),
        ModelError::Permanent { message, .. } => permanent(failure_type::MODEL_REJECTED, message),
    }
}

/// Writes streamed text into the event log: the first piece at once (it is what the user is
/// waiting for), then in batches, so a long reply costs tens of rows, not thousands. Text sent
/// to the returned channel is written; the task ends once the channel is dropped.
pub(crate) fn spawn_text_writer(
    store: Store,
    user: String,
    reply_id: String,
    attempt: i64,
    interval: Duration,
    max_chars: usize,
) -> (
    tokio::task::JoinHandle<Result<(), StoreError>>,
    mpsc::UnboundedSender<String>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let handle = tokio::spawn(async move {
        let mut buffer = String::new();
        let mut first = true;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let piece = match deadline {
                Some(at) => tokio::select! {
                    piece = rx.recv() => piece,
                    () = tokio::time::sleep_until(at) => {
                        store.append_reply_text(&user, &reply_id, attempt, &buffer).await?;
                        buffer.clear();
                        deadline = None;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(piece) = piece else { break };
            buffer.push_str(&piece);
            if first || buffer.len() >= max_chars {
                first = false;
                store
                    .append_reply_text(&user, &reply_id, attempt, &buffer)
                    .await?;
                buffer.clear();
                deadline = None;
            } else if deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + interval);
            }
        }
        if !buffer.is_empty() {
            store
                .append_reply_text(&user, &reply_id, attempt, &buffer)
                .await?;
        }
        Ok(())
    });
    (handle, tx)
}

/// How a turn ended, for `mainloop_chat_turns_total`.
fn turn_outcome(result: &Result<TurnOutput, ActivityError>) -> TurnOutcome {
    match result {
        Ok(output) if output.already_answered => TurnOutcome::Duplicate,
        Ok(_) => TurnOutcome::Answered,
        Err(ActivityError::Cancelled { .. }) => TurnOutcome::Cancelled,
        Err(ActivityError::Application(failure)) if failure.is_non_retryable() => {
            TurnOutcome::Failed
        }
        Err(_) => TurnOutcome::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_are_validated_with_reasons_the_model_can_act_on() {
        let ok = validate_proposal(&json!({
            "title": " Add dark mode ", "description": "Follow the system theme",
            "repo": "https://github.com/acme/web.git"
        }));
        let ok = ok.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.title, "Add dark mode");
        assert_eq!(ok.repo, "acme/web");
        assert!(!ok.skip_planning);

        let missing = validate_proposal(&json!({"title": "x", "description": "y"}));
        assert!(matches!(missing, Err(reason) if reason.contains("`repo` is required")));
        let bad_repo =
            validate_proposal(&json!({"title": "x", "description": "y", "repo": "../etc"}));
        assert!(matches!(bad_repo, Err(reason) if reason.contains("owner/name")));
        let bad_flag = validate_proposal(
            &json!({"title": "x", "description": "y", "repo": "a/b", "skip_planning": "yes"}),
        );
        assert!(bad_flag.is_err());
        let bad_model = validate_proposal(
            &json!({"title": "x", "description": "y", "repo": "a/b", "model": "rm -rf /"}),
        );
        assert!(bad_model.is_err());
    }
}
