//! `MainThreadWorkflow` (`main-thread/{user}`): the user's one continuous conversation.
//!
//! Inputs arrive as signals whose payload is stored first by the API and only referenced by
//! id here, so history stays small. Payloads are taken raw and validated inside the
//! workflow: a malformed signal is ignored with a visible notice and can never jam the
//! workflow. Inputs are de-duplicated by id (the outbox delivers at least once) and handled
//! one at a time, in arrival order: one chat turn per message.
//!
//! Decisions only; every effect is an activity. A turn that fails for good leaves a visible
//! error in the thread instead of failing the workflow. Compaction runs beside the
//! conversation, never in front of it: a slow or failing summary does not delay a reply. The
//! workflow continues as new every `turns_per_run` turns (or when the server suggests it),
//! carrying what it has not handled yet.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::future::FusedFuture;
use mainloop_activities::ChatActivities;
use mainloop_activities::chat::{
    CompactInput, CompactOutput, FailTurnInput, NoteInput, NoteLine, NotesInput, NoticeInput,
    ThreadConfig, TurnInput, failure_type,
};
use mainloop_store::task_workflow_id;
use serde::{Deserialize, Serialize};
use temporalio_common::data_converters::RawValue;
use temporalio_common::search_attributes::SearchAttributes;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::workflows::select;
use temporalio_sdk::{
    ActivityExecutionError, ChildWorkflowOptions, ChildWorkflowStartError, ContinueAsNewOptions,
    ParentClosePolicy, StartChildWorkflowExecutionFailedCause, SyncWorkflowContext,
    WorkflowContext, WorkflowContextView, WorkflowResult,
};

use crate::options::{activity_options, local_options};
use crate::payload::{Inbound, describe_activity_error};
use crate::task::{TaskInput, WorkerTaskWorkflow};
use crate::{SEARCH_ATTRIBUTE_REPO, SEARCH_ATTRIBUTE_USER, defaults};

/// Most input ids remembered for de-duplication. The outbox redelivers only what it could not
/// confirm, moments later, so a window this size is far beyond any real duplicate distance;
/// the turn activity is idempotent besides.
const SEEN_WINDOW: usize = 512;

/// Patch id: what the user sends (messages, confirmations) is handled before task events.
const USER_INPUT_FIRST_PATCH: &str = "user-input-first";

/// Patch id: task events queued together are written to the thread by one local activity.
const TASK_NOTES_BATCHED_PATCH: &str = "task-notes-batched";

/// Most task events written by one `thread.notes`: bounds its input and how long a batch
/// keeps the thread from the next message.
const NOTES_PER_BATCH: usize = 50;

/// The next input to handle. Task events are only lines in the thread; with `user_first`,
/// messages and proposal decisions overtake them, so a backlog of tasks reporting at once
/// (a thousand plans finishing after an outage) cannot keep the user waiting for a reply
/// or a new task. Inputs of one kind keep their arrival order.
fn next_input(inbox: &mut VecDeque<Inbound>, user_first: bool) -> Option<Inbound> {
    let at = if user_first {
        inbox
            .iter()
            .position(|inbound| inbound.signal != TASK_EVENT_SIGNAL)
            .unwrap_or(0)
    } else {
        0
    };
    inbox.remove(at)
}

const TASK_EVENT_SIGNAL: &str = "task_event";

/// The workflow's input: who it belongs to, and what a previous run handed over.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MainThreadInput {
    pub user: String,
    #[serde(default)]
    pub carry: Carry,
}

/// State that crosses continue-as-new.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Carry {
    /// Inputs received but not handled yet, in arrival order.
    #[serde(default)]
    pub pending: Vec<Inbound>,
    /// Ids of recently handled inputs.
    #[serde(default)]
    pub seen: Vec<String>,
    #[serde(default)]
    pub turns_total: u64,
    #[serde(default)]
    pub compactions: u64,
    #[serde(default)]
    pub runs: u64,
}

/// Payload of the `message` signal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MessageSignal {
    pub message_id: String,
}

/// Payload of the `proposal_decision` signal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProposalDecisionSignal {
    pub proposal_id: String,
    /// `confirmed` or `rejected`.
    pub decision: String,
    /// For `confirmed`: what the task is, as confirmed (the user may have changed the repo).
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub skip_planning: Option<bool>,
    /// Limits the user set for the task (the rest are the worker's defaults).
    #[serde(default)]
    pub budget: Option<mainloop_store::TaskBudget>,
}

/// Payload of the `task_event` signal: a task tells the thread something worth a line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TaskEventSignal {
    /// Unique per occasion: said once.
    pub id: String,
    pub task_id: String,
    pub text: String,
}

/// What the `state` query reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreadState {
    pub user: String,
    /// Message being answered now, if any.
    pub answering: Option<String>,
    pub pending: usize,
    pub turns_total: u64,
    pub turns_this_run: u32,
    pub compactions: u64,
    pub runs: u64,
}

#[workflow]
pub struct MainThreadWorkflow {
    user: String,
    inbox: VecDeque<Inbound>,
    seen: VecDeque<String>,
    answering: Option<String>,
    turns_total: u64,
    turns_this_run: u32,
    compactions: u64,
    runs: u64,
}

enum Input {
    Message(MessageSignal),
    ProposalDecision(ProposalDecisionSignal),
    TaskEvent(TaskEventSignal),
}

#[workflow_methods]
impl MainThreadWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, input: MainThreadInput) -> Self {
        MainThreadWorkflow {
            user: input.user,
            inbox: input.carry.pending.into(),
            seen: input.carry.seen.into(),
            answering: None,
            turns_total: input.carry.turns_total,
            turns_this_run: 0,
            compactions: input.carry.compactions,
            runs: input.carry.runs + 1,
        }
    }

    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        let ctx: &WorkflowContext<Self> = ctx;
        let user = ctx.state(|s| s.user.clone());
        if ctx
            .search_attributes()
            .get(&SEARCH_ATTRIBUTE_USER)
            .is_none()
        {
            ctx.upsert_search_attributes([SEARCH_ATTRIBUTE_USER.value_set(user.clone())]);
        }
        let config = ctx
            .execute_local_activity(
                ChatActivities::thread_config,
                (),
                local_options(Duration::from_secs(10)),
            )
            .await
            // The worker always has a configuration; should the call fail anyway, the compiled
            // defaults are as deterministic as a recorded result.
            .unwrap_or_else(|_| defaults::thread_config());
        // At most one compaction at a time, running while turns go on.
        let mut compaction: Option<Compaction<'_>> = None;

        loop {
            let turns = ctx.state(|s| s.turns_total);
            ctx.set_current_details(format!("Waiting for a message ({turns} turns so far)"));
            let finished = match compaction.as_mut() {
                Some(mut running) => select! {
                    result = running => Some(result),
                    waited = ctx.wait_condition(|s| !s.inbox.is_empty()) => {
                        waited?;
                        None
                    }
                },
                None => {
                    ctx.wait_condition(|s| !s.inbox.is_empty()).await?;
                    None
                }
            };
            if let Some(result) = finished {
                compaction = None;
                compacted(ctx, &user, result).await;
                continue;
            }
            let user_first = ctx.patched(USER_INPUT_FIRST_PATCH);
            let Some(inbound) = ctx.state_mut(|s| next_input(&mut s.inbox, user_first)) else {
                continue;
            };
            match parse(&inbound) {
                Ok(Input::Message(message)) => {
                    if remember(ctx, &message.message_id) {
                        let unsummarized = turn(ctx, &config, &user, &message.message_id).await;
                        if compaction.is_none()
                            && unsummarized.is_some_and(|n| n > config.compaction_threshold)
                        {
                            compaction = Some(start_compaction(ctx, &config, &user));
                        }
                    }
                }
                Ok(Input::ProposalDecision(decision)) => {
                    // The store already holds the decision; a confirmation starts the task.
                    if remember(ctx, &format!("proposal:{}", decision.proposal_id))
                        && decision.decision == "confirmed"
                    {
                        start_task(ctx, &config, &user, decision).await;
                    }
                }
                Ok(Input::TaskEvent(event)) => {
                    // A worker back from a restart, or a thousand tasks reporting at once, finds
                    // hundreds of events queued: one local activity (and one history marker)
                    // each made the thread's workflow tasks take seconds and its runs
                    // thousands of events, while the user waited for a reply.
                    if ctx.patched(TASK_NOTES_BATCHED_PATCH) {
                        let mut events = vec![event];
                        events.extend(ctx.state_mut(|s| queued_task_events(&mut s.inbox)));
                        let fresh: Vec<TaskEventSignal> = events
                            .into_iter()
                            .filter(|event| remember(ctx, &format!("task-event:{}", event.id)))
                            .collect();
                        say_task_events(ctx, &user, fresh).await;
                    } else if remember(ctx, &format!("task-event:{}", event.id)) {
                        say_task_event(ctx, &user, event).await;
                    }
                }
                Err(reason) => {
                    notice(
                        ctx,
                        &user,
                        "warning",
                        format!("Ignored a `{}` signal: {reason}", inbound.signal),
                    )
                    .await;
                }
            }
            let turns_this_run = ctx.state(|s| s.turns_this_run);
            // Task starts and task news grow the history without turns; a restarted worker
            // replays the whole run before the thread can answer, so its length is bounded too.
            // Preferably once the inputs in hand are handled: the server refuses to close a run
            // while signals keep arriving, and each refusal costs a full replay. A stream of
            // task news may never leave the inbox empty, hence the hard bound at twice the limit.
            let long = config.history_limit.is_some_and(|limit| {
                let length = ctx.history_length();
                (length > limit && ctx.state(|s| s.inbox.is_empty()))
                    || length > limit.saturating_mul(2)
            });
            if turns_this_run >= config.turns_per_run.max(1)
                || long
                || ctx.continue_as_new_suggested()
            {
                // A new run must not inherit a compaction it cannot see finish.
                if let Some(running) = compaction.take() {
                    compacted(ctx, &user, running.await).await;
                }
                let carry = ctx.state(|s| Carry {
                    pending: s.inbox.iter().cloned().collect(),
                    seen: s.seen.iter().cloned().collect(),
                    turns_total: s.turns_total,
                    compactions: s.compactions,
                    runs: s.runs,
                });
                // A thread started before threads had a queue of their own moves there now.
                let options = ContinueAsNewOptions::builder()
                    .maybe_task_queue(
                        config
                            .chat_queue
                            .clone()
                            .filter(|queue| queue != ctx.task_queue()),
                    )
                    .build();
                ctx.continue_as_new(
                    MainThreadInput {
                        user: user.clone(),
                        carry,
                    },
                    options,
                )?;
            }
        }
    }

    #[signal(name = "message")]
    pub fn message(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: RawValue) {
        self.inbox.push_back(Inbound::received("message", &payload));
    }

    #[signal(name = "proposal_decision")]
    pub fn proposal_decision(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: RawValue) {
        self.inbox
            .push_back(Inbound::received("proposal_decision", &payload));
    }

    #[signal(name = "task_event")]
    pub fn task_event(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: RawValue) {
        self.inbox
            .push_back(Inbound::received(TASK_EVENT_SIGNAL, &payload));
    }

    #[query(name = "state")]
    pub fn state(&self, _ctx: &WorkflowContextView) -> ThreadState {
        ThreadState {
            user: self.user.clone(),
            answering: self.answering.clone(),
            pending: self.inbox.len(),
            turns_total: self.turns_total,
            turns_this_run: self.turns_this_run,
            compactions: self.compactions,
            runs: self.runs,
        }
    }
}

/// Validates a received signal. The reason comes back to the user verbatim.
fn parse(inbound: &Inbound) -> Result<Input, String> {
    let payload = inbound.json()?;
    let non_empty = |id: &str, field: &str| {
        if id.trim().is_empty() || id.len() > 200 {
            Err(format!("`{field}` must be a non-empty id"))
        } else {
            Ok(())
        }
    };
    match inbound.signal.as_str() {
        "message" => {
            let message: MessageSignal = serde_json::from_value(payload)
                .map_err(|e| format!("expected {{\"message_id\": \"…\"}} ({e})"))?;
            non_empty(&message.message_id, "message_id")?;
            Ok(Input::Message(message))
        }
        "proposal_decision" => {
            let decision: ProposalDecisionSignal =
                serde_json::from_value(payload).map_err(|e| {
                    format!(
                        "expected {{\"proposal_id\": \"…\", \"decision\": \"confirmed|rejected\"}} ({e})"
                    )
                })?;
            non_empty(&decision.proposal_id, "proposal_id")?;
            match decision.decision.as_str() {
                "rejected" => {}
                "confirmed" if decision.title.is_some() && decision.repo.is_some() => {}
                "confirmed" => return Err("a confirmation needs `title` and `repo`".to_string()),
                other => return Err(format!("unknown decision {other:?}")),
            }
            Ok(Input::ProposalDecision(decision))
        }
        "task_event" => {
            let event: TaskEventSignal = serde_json::from_value(payload)
                .map_err(|e| format!("expected {{\"id\", \"task_id\", \"text\"}} ({e})"))?;
            non_empty(&event.id, "id")?;
            non_empty(&event.task_id, "task_id")?;
            Ok(Input::TaskEvent(event))
        }
        other => Err(format!("unknown signal {other:?}")),
    }
}

/// Records an input id; false if it was handled already.
fn remember(ctx: &WorkflowContext<MainThreadWorkflow>, id: &str) -> bool {
    ctx.state_mut(|s| {
        if s.seen.iter().any(|seen| seen == id) {
            return false;
        }
        s.seen.push_back(id.to_string());
        while s.seen.len() > SEEN_WINDOW {
            s.seen.pop_front();
        }
        true
    })
}

/// One chat turn. Never fails: what went wrong ends up in the thread. Returns how many
/// messages are not yet summarised, when the turn got that far.
async fn turn(
    ctx: &WorkflowContext<MainThreadWorkflow>,
    config: &ThreadConfig,
    user: &str,
    message_id: &str,
) -> Option<i64> {
    ctx.state_mut(|s| s.answering = Some(message_id.to_string()));
    ctx.set_current_details(format!("Answering message {message_id}"));
    let result = ctx
        .execute_activity(
            ChatActivities::respond,
            TurnInput {
                user: user.to_string(),
                message_id: message_id.to_string(),
            },
            activity_options(&config.turn),
        )
        .await;
    ctx.state_mut(|s| {
        s.answering = None;
        s.turns_total += 1;
        s.turns_this_run += 1;
    });
    match result {
        Ok(output) => Some(output.unsummarized),
        Err(error) => {
            fail_turn(ctx, user, message_id, &error).await;
            None
        }
    }
}

/// A compaction in flight.
type Compaction<'a> =
    Pin<Box<dyn FusedFuture<Output = Result<CompactOutput, ActivityExecutionError>> + 'a>>;

fn start_compaction<'a>(
    ctx: &'a WorkflowContext<MainThreadWorkflow>,
    config: &ThreadConfig,
    user: &str,
) -> Compaction<'a> {
    let key = ctx.state_mut(|s| {
        s.compactions += 1;
        format!("{user}/compaction/{}", s.compactions)
    });
    Box::pin(ctx.execute_activity(
        ChatActivities::compact,
        CompactInput {
            user: user.to_string(),
            key,
            keep_recent: config.keep_recent,
        },
        activity_options(&config.compaction),
    ))
}

/// A failed compaction is only a notice: the next turn past the threshold tries again.
async fn compacted(
    ctx: &WorkflowContext<MainThreadWorkflow>,
    user: &str,
    result: Result<CompactOutput, ActivityExecutionError>,
) {
    if let Err(error) = result {
        let (_, detail) = describe_activity_error(&error);
        notice(
            ctx,
            user,
            "warning",
            format!("Older messages could not be summarised yet: {detail}"),
        )
        .await;
    }
}

/// Leaves a visible error where the reply should be.
async fn fail_turn(
    ctx: &WorkflowContext<MainThreadWorkflow>,
    user: &str,
    message_id: &str,
    error: &ActivityExecutionError,
) {
    let (kind, detail) = describe_activity_error(error);
    if kind.as_deref() == Some(failure_type::MESSAGE_NOT_FOUND) {
        notice(
            ctx,
            user,
            "warning",
            format!("Ignored a message signal: {detail}"),
        )
        .await;
        return;
    }
    let reason = match kind.as_deref() {
        Some(failure_type::MODEL_NOT_CONFIGURED) => {
            format!("I can't reply: {detail}. Once it is set, send your message again.")
        }
        Some(failure_type::MODEL_REJECTED) => {
            format!("I couldn't reply: the model API refused the request ({detail}).")
        }
        _ => format!(
            "I couldn't reply: the model API kept failing ({detail}). Send your message again to \
             retry."
        ),
    };
    let recorded = ctx
        .execute_local_activity(
            ChatActivities::fail_turn,
            FailTurnInput {
                user: user.to_string(),
                message_id: message_id.to_string(),
                reason,
            },
            local_options(Duration::from_secs(30)),
        )
        .await;
    if let Err(error) = recorded {
        tracing::error!(%error, "could not record a failed turn");
    }
}

async fn notice(ctx: &WorkflowContext<MainThreadWorkflow>, user: &str, level: &str, text: String) {
    let recorded = ctx
        .execute_local_activity(
            ChatActivities::notice,
            NoticeInput {
                user: user.to_string(),
                level: level.to_string(),
                text,
            },
            local_options(Duration::from_secs(30)),
        )
        .await;
    if let Err(error) = recorded {
        tracing::error!(%error, "could not record a notice");
    }
}

/// Starts the worker task of a confirmed proposal. It outlives this run of the thread
/// (continue-as-new) and the thread itself: parent-close ABANDON.
async fn start_task(
    ctx: &WorkflowContext<MainThreadWorkflow>,
    config: &ThreadConfig,
    user: &str,
    decision: ProposalDecisionSignal,
) {
    let task_id = decision.proposal_id.clone();
    let title = decision.title.unwrap_or_default();
    let input = TaskInput {
        task_id: task_id.clone(),
        user: user.to_string(),
        title: title.clone(),
        repo: decision.repo.unwrap_or_default(),
        skip_planning: decision.skip_planning.unwrap_or(false),
        resume: None,
        budget: decision.budget,
        on_intake: config.intake_queue.is_some(),
    };
    // Set at the start, the task is found by user and repository at once, and its first run
    // needs no upsert of its own (tasks started before did one).
    let search_attributes = SearchAttributes::new([
        SEARCH_ATTRIBUTE_USER.value_set(input.user.clone()),
        SEARCH_ATTRIBUTE_REPO.value_set(input.repo.clone()),
    ]);
    let options = ChildWorkflowOptions::builder()
        .workflow_id(task_workflow_id(&task_id))
        .parent_close_policy(ParentClosePolicy::Abandon)
        .static_summary(title)
        .search_attributes(search_attributes)
        .maybe_task_queue(config.intake_queue.clone().or(config.task_queue.clone()))
        .build();
    match ctx
        .start_child_workflow(WorkerTaskWorkflow::run, input, options)
        .await
    {
        // Already started: a redelivered confirmation, or a retry by hand.
        Ok(_)
        | Err(ChildWorkflowStartError::StartFailed {
            cause: StartChildWorkflowExecutionFailedCause::WorkflowAlreadyExists,
            ..
        }) => {}
        Err(error) => {
            notice(
                ctx,
                user,
                "error",
                format!("The task {task_id} could not be started: {error}"),
            )
            .await;
        }
    }
}

/// Takes the valid task events at the front of `inbox`, up to a batch: what the thread
/// would handle next anyway, since what the user sends is taken first. An invalid one stays
/// for the loop to warn about.
fn queued_task_events(inbox: &mut VecDeque<Inbound>) -> Vec<TaskEventSignal> {
    let mut events = Vec::new();
    while events.len() + 1 < NOTES_PER_BATCH
        && let Some(front) = inbox.front()
        && front.signal == TASK_EVENT_SIGNAL
        && let Ok(Input::TaskEvent(event)) = parse(front)
    {
        inbox.pop_front();
        events.push(event);
    }
    events
}

async fn say_task_events(
    ctx: &WorkflowContext<MainThreadWorkflow>,
    user: &str,
    events: Vec<TaskEventSignal>,
) {
    if events.is_empty() {
        return;
    }
    let count = events.len();
    let recorded = ctx
        .execute_local_activity(
            ChatActivities::notes,
            NotesInput {
                user: user.to_string(),
                notes: events
                    .into_iter()
                    .map(|event| NoteLine {
                        key: event.id,
                        text: event.text,
                    })
                    .collect(),
            },
            local_options(Duration::from_secs(30)),
        )
        .await;
    if let Err(error) = recorded {
        tracing::error!(%error, count, "could not add task notes to the thread");
    }
}

async fn say_task_event(
    ctx: &WorkflowContext<MainThreadWorkflow>,
    user: &str,
    event: TaskEventSignal,
) {
    let recorded = ctx
        .execute_local_activity(
            ChatActivities::note,
            NoteInput {
                user: user.to_string(),
                key: event.id,
                text: event.text,
            },
            local_options(Duration::from_secs(30)),
        )
        .await;
    if let Err(error) = recorded {
        tracing::error!(%error, "could not add a task note to the thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(signal: &str, id: &str) -> Inbound {
        Inbound {
            signal: signal.to_string(),
            payload: Some(serde_json::json!({ "id": id })),
            error: None,
        }
    }

    fn drain(mut inbox: VecDeque<Inbound>, user_first: bool) -> Vec<String> {
        std::iter::from_fn(|| next_input(&mut inbox, user_first))
            .map(|i| i.payload.map(|p| p["id"].to_string()).unwrap_or_default())
            .collect()
    }

    #[test]
    fn what_the_user_sends_overtakes_task_events_in_order() {
        let inbox: VecDeque<Inbound> = [
            inbound("task_event", "e1"),
            inbound("message", "m1"),
            inbound("task_event", "e2"),
            inbound("proposal_decision", "d1"),
            inbound("message", "m2"),
            inbound("task_event", "e3"),
        ]
        .into();
        let ids = |v: &[&str]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>();
        assert_eq!(
            drain(inbox.clone(), true),
            ids(&["m1", "d1", "m2", "e1", "e2", "e3"])
        );
        // Histories recorded before the patch keep arrival order.
        assert_eq!(
            drain(inbox, false),
            ids(&["e1", "m1", "e2", "d1", "m2", "e3"])
        );
    }

    fn task_event(id: &str) -> Inbound {
        Inbound {
            signal: TASK_EVENT_SIGNAL.to_string(),
            payload: Some(serde_json::json!({ "id": id, "task_id": "t", "text": id })),
            error: None,
        }
    }

    #[test]
    fn queued_task_events_are_taken_in_order_up_to_a_batch_and_an_invalid_one_stays() {
        let mut inbox: VecDeque<Inbound> = (1..=3).map(|n| task_event(&format!("e{n}"))).collect();
        inbox.push_back(inbound(TASK_EVENT_SIGNAL, "bad"));
        inbox.push_back(task_event("e4"));
        let taken: Vec<String> = queued_task_events(&mut inbox)
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(taken, ["e1", "e2", "e3"]);
        assert_eq!(inbox.len(), 2, "the invalid event and what follows it stay");

        let mut many: VecDeque<Inbound> = (0..120).map(|n| task_event(&format!("e{n}"))).collect();
        // The caller already holds one event of the batch.
        assert_eq!(queued_task_events(&mut many).len(), NOTES_PER_BATCH - 1);
        assert_eq!(many.len(), 120 - (NOTES_PER_BATCH - 1));
    }
}
