//! `WorkerTaskWorkflow` (`task/{id}`): one confirmed proposal carried from a plan to a merged
//! PR. Phases run in order — plan (issue, questions, plan review), implement (draft PR), CI
//! (poll; on failure fix and push, within the CI-attempts budget), ready (mark ready, summary
//! comment), review (feedback jobs until merged or closed) — and every one of them may fail
//! into `failed`: parked with the error and an inbox item, waiting for `retry` (which runs the
//! failed phase again with the same issue, branch and PR) or `cancel`. Nothing here fails the
//! workflow itself.
//!
//! Human input arrives as signals (`answers`, `plan_review`, `retry`, `cancel`) with raw
//! payloads validated here, de-duplicated by id; the same decisions can also be written on
//! GitHub, where only people with write access count. Status changes are written to the store
//! through a local activity, with the line the user's thread gets for news (runs before
//! behaviour level 2 told the main thread instead, as `task_event` signals).

use std::collections::VecDeque;
use std::pin::pin;
use std::time::Duration;

use futures::FutureExt as _;
use mainloop_activities::chat::{ActivityTiming, NoteLine};
use mainloop_activities::task_text::{self, LedgerEntry};
use mainloop_activities::tasks::{
    CheckInput, CiVerdict, CloseInput, CommentBody, CommentInfo, CommentInput, GitHubReply,
    HumanWait, IssueAndCommentInput, IssueBodyInput, IssueInfo, JobInput, JobOutcome, JobOutput,
    JobSpent, PollHumanInput, PrState, PullInfo, PullInput, ReadyAndCommentInput, ReadyInput,
    RecordInput, RepoInfo, ReviewPollInput, StartInput, StopJobInput, TaskActivities, TaskConfig,
    TaskRef,
};
use mainloop_agent::protocol::{Answer, Mode};
use mainloop_store::{
    InboxKind, NewInboxItem, TaskBudget, TaskProjection, TaskQuestion, TaskStatus,
};
use serde::{Deserialize, Serialize};
use temporalio_common::data_converters::RawValue;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::workflows::select;
use temporalio_sdk::{
    ActivityExecutionError, ActivityOptions, CancellableFuture, ContinueAsNewOptions,
    LocalActivityOptions, SignalWorkflowOptions, SyncWorkflowContext, WorkflowContext,
    WorkflowContextView, WorkflowResult,
};

use crate::main_thread::MainThreadWorkflow;
use crate::options::{activity_options, local_options};
use crate::payload::{Inbound, describe_activity_error, json_payload};
use crate::{
    SEARCH_ATTRIBUTE_REPO, SEARCH_ATTRIBUTE_TASK_STATUS, SEARCH_ATTRIBUTE_USER, main_thread_id,
};

mod budget;

/// Input ids remembered for de-duplication.
const SEEN_WINDOW: usize = 256;

/// The workflow's input. `resume` carries the state across continue-as-new.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskInput {
    pub task_id: String,
    pub user: String,
    pub title: String,
    /// `owner/name`.
    pub repo: String,
    #[serde(default)]
    pub skip_planning: bool,
    #[serde(default)]
    pub resume: Option<Memory>,
    /// Limits the user set for this task when confirming it; the rest come from the worker's
    /// defaults when the task starts.
    #[serde(default)]
    pub budget: Option<TaskBudget>,
    /// The task runs on the intake queue it started on and moves when it first waits (see
    /// `leaving_intake`). Told by the input, not by the worker's queue: a replayer polls a
    /// queue of its own.
    #[serde(default)]
    pub on_intake: bool,
}

/// Where the task is; each phase can be run again by `retry`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Start,
    Plan,
    Questions,
    PlanReview,
    Implement,
    Ci,
    Ready,
    Review,
    Feedback,
    Done,
}

/// Why a phase stopped short.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub phase: Phase,
    pub error: String,
}

/// Everything the workflow knows, carried across continue-as-new.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// A webhook nudge had not been acted on when the run continued as new (as a task does
    /// when it leaves the intake queue, often just as CI reports): the next run looks at
    /// GitHub at its first wait.
    #[serde(default)]
    pub nudged: bool,
    pub phase: Phase,
    pub status: Option<TaskStatus>,
    pub detail: String,
    pub repo: Option<RepoInfo>,
    pub issue: Option<IssueInfo>,
    pub questions: Vec<TaskQuestion>,
    /// When the questions or the plan were posted: only later replies on GitHub count.
    pub asked_at: Option<String>,
    /// The id of the comment that asked: a reply in the same second as it still counts.
    #[serde(default)]
    pub asked_comment: Option<u64>,
    pub answers: Vec<Answer>,
    pub revision: Option<String>,
    pub plan_version: u32,
    pub plan_comment: Option<CommentInfo>,
    pub branch: Option<String>,
    pub pr: Option<PullInfo>,
    pub ci_fixes: u32,
    pub ledger: Vec<LedgerEntry>,
    pub summary: String,
    pub feedback_rounds: u32,
    pub review_since: Option<String>,
    /// Jobs started so far: numbers job names, so a retried step gets a fresh job.
    pub jobs: u32,
    pub failure: Option<Failure>,
    pub outcome: Option<TaskStatus>,
    pub seen: Vec<String>,
    pub pending: Vec<Inbound>,
    pub cancel: Option<String>,
    /// The task's limits; none: budgets are off (a task started before they existed).
    #[serde(default)]
    pub budget: Option<TaskBudget>,
    /// What the task's jobs spent, from their results.
    #[serde(default)]
    pub spent: JobSpent,
    /// CI fix jobs over the task since it started or a failed CI phase was retried
    /// (`ci_fixes` counts the current CI phase).
    #[serde(default)]
    pub ci_attempts: u32,
    /// Budget changes received: each ends a budget pause's wait.
    #[serde(default)]
    pub budget_changes: u32,
}

/// Payload of `answers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnswersSignal {
    pub id: String,
    pub answers: Vec<AnswerInput>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnswerInput {
    pub question_id: String,
    pub answer: String,
}

/// Payload of `plan_review`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanReviewSignal {
    pub id: String,
    /// `approve`, `revise` or `cancel`.
    pub action: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// Payload of `retry` and `cancel`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlSignal {
    pub id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What the `state` query reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskState {
    pub task_id: String,
    pub status: Option<TaskStatus>,
    pub phase: Phase,
    pub detail: String,
    pub issue: Option<u64>,
    pub pr: Option<u64>,
    pub branch: Option<String>,
    pub ci_fixes: u32,
    pub jobs: u32,
    pub error: Option<String>,
    pub pending_inputs: usize,
    /// The task's limits (none: budgets off) and what it spent of them.
    #[serde(default)]
    pub budget: Option<TaskBudget>,
    #[serde(default)]
    pub spent: JobSpent,
    #[serde(default)]
    pub ci_attempts: u32,
}

/// A decision taken from the signals (or GitHub) while waiting.
enum Decision {
    Answers(Vec<Answer>),
    Approve,
    Revise(String),
    Retry,
    Cancel(String),
}

#[workflow]
pub struct WorkerTaskWorkflow {
    task_id: String,
    user: String,
    title: String,
    repo_name: String,
    skip_planning: bool,
    budget_override: Option<TaskBudget>,
    on_intake: bool,
    mem: Memory,
    inbox: VecDeque<Inbound>,
    /// GitHub webhook deliveries about this task so far (in this run): each wakes a wait
    /// for GitHub at once. Only whether one is still to be acted on crosses a
    /// continue-as-new (`Memory::nudged`).
    nudges: u64,
    /// `nudges` when the task last went to look at GitHub: any beyond it came during that
    /// look or after it, and have not been acted on.
    nudges_looked: u64,
    /// This run's behaviour level, from its recorded config (see [`at_level`]).
    behaviour: u32,
}

type Ctx = WorkflowContext<WorkerTaskWorkflow>;

/// What a phase ended with.
enum Step {
    Next(Phase),
    /// Parked as failed: wait for retry or cancel.
    Fail(String),
    /// Cancelled by the user (the reason).
    Cancel(String),
    /// The task is over with this status.
    Finish(TaskStatus),
}

#[workflow_methods]
impl WorkerTaskWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, input: TaskInput) -> Self {
        let mem = input.resume.unwrap_or_default();
        let inbox = mem.pending.clone().into();
        let nudges = u64::from(mem.nudged);
        WorkerTaskWorkflow {
            task_id: input.task_id,
            user: input.user,
            title: input.title,
            repo_name: input.repo,
            skip_planning: input.skip_planning,
            budget_override: input.budget,
            on_intake: input.on_intake,
            mem: Memory {
                pending: Vec::new(),
                nudged: false,
                ..mem
            },
            inbox,
            nudges,
            nudges_looked: 0,
            behaviour: 0,
        }
    }

    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        let ctx: &Ctx = ctx;
        let (user, repo_name) = ctx.state(|s| (s.user.clone(), s.repo_name.clone()));
        if ctx
            .search_attributes()
            .get(&SEARCH_ATTRIBUTE_USER)
            .is_none()
        {
            ctx.upsert_search_attributes([
                SEARCH_ATTRIBUTE_USER.value_set(user),
                SEARCH_ATTRIBUTE_REPO.value_set(repo_name),
            ]);
        }
        let config = ctx
            .execute_local_activity(TaskActivities::config, (), local())
            .await
            .unwrap_or_default();
        ctx.state_mut(|s| s.behaviour = config.behaviour);
        // Resolved once per task (and carried across continue-as-new), so later changes to the
        // worker's defaults leave a running task's limits alone.
        if ctx.state(|s| s.mem.budget.is_none()) && (at_level(ctx, 1) || ctx.patched(budget::PATCH))
        {
            let limits = budget::resolve(ctx.state(|s| s.budget_override), &config.budget);
            ctx.state_mut(|s| s.mem.budget = Some(limits));
        }
        loop {
            if let Some(reason) = ctx.state(|s| s.mem.cancel.clone()) {
                cancel(ctx, &config, &reason).await;
                return Ok(());
            }
            let phase = ctx.state(|s| s.mem.phase);
            if phase == Phase::Done {
                let outcome = ctx.state(|s| s.mem.outcome).unwrap_or(TaskStatus::Merged);
                finish(ctx, &config, outcome).await;
                return Ok(());
            }
            if let Some(queue) = leaving_intake(ctx, &config, phase) {
                continue_as_new(ctx, Some(queue))?;
            }
            let step = match phase {
                Phase::Start => start(ctx, &config).await,
                Phase::Plan => plan(ctx, &config).await,
                Phase::Questions => questions(ctx, &config).await,
                Phase::PlanReview => plan_review(ctx, &config).await,
                Phase::Implement => implement(ctx, &config).await,
                Phase::Ci => ci(ctx, &config).await,
                Phase::Ready => ready(ctx, &config).await,
                Phase::Review => review(ctx, &config).await,
                Phase::Feedback => feedback(ctx, &config).await,
                Phase::Done => Step::Finish(TaskStatus::Merged),
            };
            match step {
                Step::Next(next) => ctx.state_mut(|s| s.mem.phase = next),
                Step::Cancel(reason) => ctx.state_mut(|s| s.mem.cancel = Some(reason)),
                Step::Finish(status) => ctx.state_mut(|s| {
                    s.mem.outcome = Some(status);
                    s.mem.phase = Phase::Done;
                }),
                Step::Fail(error) => {
                    if park(ctx, phase, error).await {
                        continue;
                    }
                    // Cancelled while parked: the loop's top handles it.
                }
            }
            if ctx.continue_as_new_suggested() || ctx.history_length() > config.history_limit {
                continue_as_new(ctx, None)?;
            }
        }
    }

    #[signal(name = "answers")]
    pub fn answers(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: RawValue) {
        self.inbox.push_back(Inbound::received("answers", &payload));
    }

    #[signal(name = "plan_review")]
    pub fn plan_review(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: RawValue) {
        self.inbox
            .push_back(Inbound::received("plan_review", &payload));
    }

    #[signal(name = "retry")]
    pub fn retry(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: RawValue) {
        self.inbox.push_back(Inbound::received("retry", &payload));
    }

    #[signal(name = "cancel")]
    pub fn cancel(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: RawValue) {
        // Cancel is acted on at once, whatever the task is doing: the run loop and every
        // interruptible step watch `mem.cancel`. An invalid cancel must not cancel anything.
        match parse(&Inbound::received("cancel", &payload)) {
            Ok(ParsedInput::Cancel(id, reason)) => {
                if !self.mem.seen.contains(&id) {
                    remember_id(&mut self.mem, id);
                    self.mem.cancel = Some(reason);
                }
            }
            Ok(_) => {}
            Err(reason) => tracing::warn!(%reason, "ignored an invalid cancel signal"),
        }
    }

    /// New limits for the task (the API sends them whole): a task paused on its budget goes
    /// on if they leave room. An invalid payload changes nothing.
    #[signal(name = "budget")]
    pub fn budget(&mut self, _ctx: &mut SyncWorkflowContext<Self>, payload: RawValue) {
        match budget::parse(&Inbound::received("budget", &payload)) {
            Ok((id, limits)) => {
                if !self.mem.seen.contains(&id) {
                    remember_id(&mut self.mem, id);
                    self.mem.budget = Some(limits);
                    self.mem.budget_changes += 1;
                }
            }
            Err(reason) => tracing::warn!(%reason, "ignored an invalid budget signal"),
        }
    }

    /// Something happened on GitHub (from a webhook delivery): look now rather than at the
    /// next poll. The payload is not needed; polling reads what happened.
    #[signal(name = "github")]
    pub fn github(&mut self, _ctx: &mut SyncWorkflowContext<Self>, _payload: RawValue) {
        self.nudges += 1;
    }

    #[query(name = "state")]
    pub fn state(&self, _ctx: &WorkflowContextView) -> TaskState {
        TaskState {
            task_id: self.task_id.clone(),
            status: self.mem.status,
            phase: self.mem.phase,
            detail: self.mem.detail.clone(),
            issue: self.mem.issue.as_ref().map(|i| i.number),
            pr: self.mem.pr.as_ref().map(|p| p.number),
            branch: self.mem.branch.clone(),
            ci_fixes: self.mem.ci_fixes,
            jobs: self.mem.jobs,
            error: self.mem.failure.as_ref().map(|f| f.error.clone()),
            pending_inputs: self.inbox.len(),
            budget: self.mem.budget,
            spent: self.mem.spent,
            ci_attempts: self.mem.ci_attempts,
        }
    }
}

enum ParsedInput {
    Answers(String, Vec<AnswerInput>),
    PlanReview(String, PlanReviewSignal),
    Retry(String),
    Cancel(String, String),
}

fn parse(inbound: &Inbound) -> Result<ParsedInput, String> {
    let payload = inbound.json()?;
    let check_id = |id: &str| {
        if id.trim().is_empty() || id.len() > 200 {
            Err("`id` must be a non-empty id".to_string())
        } else {
            Ok(())
        }
    };
    match inbound.signal.as_str() {
        "answers" => {
            let signal: AnswersSignal = serde_json::from_value(payload).map_err(|e| {
                format!("expected {{\"id\", \"answers\": [{{\"question_id\", \"answer\"}}]}} ({e})")
            })?;
            check_id(&signal.id)?;
            if signal.answers.is_empty() {
                return Err("no answers".to_string());
            }
            Ok(ParsedInput::Answers(signal.id, signal.answers))
        }
        "plan_review" => {
            let signal: PlanReviewSignal = serde_json::from_value(payload).map_err(|e| {
                format!(
                    "expected {{\"id\", \"action\": \"approve|revise|cancel\", \"text\"}} ({e})"
                )
            })?;
            check_id(&signal.id)?;
            match signal.action.as_str() {
                "approve" | "cancel" => {}
                "revise" if signal.text.as_deref().is_some_and(|t| !t.trim().is_empty()) => {}
                "revise" => return Err("a revision needs text".to_string()),
                other => return Err(format!("unknown action {other:?}")),
            }
            Ok(ParsedInput::PlanReview(signal.id.clone(), signal))
        }
        "retry" | "cancel" => {
            let signal: ControlSignal = serde_json::from_value(payload)
                .map_err(|e| format!("expected {{\"id\", \"reason\"?}} ({e})"))?;
            check_id(&signal.id)?;
            if inbound.signal == "retry" {
                Ok(ParsedInput::Retry(signal.id))
            } else {
                Ok(ParsedInput::Cancel(
                    signal.id,
                    signal
                        .reason
                        .unwrap_or_else(|| "cancelled by the user".to_string()),
                ))
            }
        }
        other => Err(format!("unknown signal {other:?}")),
    }
}

fn remember_id(mem: &mut Memory, id: String) {
    mem.seen.push(id);
    if mem.seen.len() > SEEN_WINDOW {
        let excess = mem.seen.len() - SEEN_WINDOW;
        mem.seen.drain(..excess);
    }
}

/// Takes the next input that means something now. Stale or invalid inputs are dropped with
/// a warning in the log (the API checks state first, so they are rare).
fn next_decision(ctx: &Ctx, phase: Phase) -> Option<Decision> {
    ctx.state_mut(|s| {
        while let Some(item) = s.inbox.pop_front() {
            let parsed = match parse(&item) {
                Ok(parsed) => parsed,
                Err(reason) => {
                    tracing::warn!(signal = %item.signal, %reason, "ignored an invalid task input");
                    continue;
                }
            };
            let id = match &parsed {
                ParsedInput::Answers(id, _)
                | ParsedInput::PlanReview(id, _)
                | ParsedInput::Retry(id)
                | ParsedInput::Cancel(id, _) => id.clone(),
            };
            if s.mem.seen.contains(&id) {
                continue;
            }
            remember_id(&mut s.mem, id);
            let decision = match (parsed, phase) {
                (ParsedInput::Cancel(_, reason), _) => Decision::Cancel(reason),
                (ParsedInput::Answers(_, answers), Phase::Questions) => Decision::Answers(
                    answers
                        .into_iter()
                        .map(|a| Answer {
                            question: s
                                .mem
                                .questions
                                .iter()
                                .find(|q| q.id == a.question_id)
                                .map(|q| q.question.clone())
                                .unwrap_or_default(),
                            question_id: a.question_id,
                            answer: a.answer,
                        })
                        .collect(),
                ),
                (ParsedInput::PlanReview(_, review), Phase::PlanReview) => {
                    match review.action.as_str() {
                        "approve" => Decision::Approve,
                        "cancel" => Decision::Cancel("plan cancelled by the user".to_string()),
                        _ => Decision::Revise(review.text.unwrap_or_default()),
                    }
                }
                (ParsedInput::Retry(_), _) => Decision::Retry,
                (_, phase) => {
                    tracing::warn!(signal = %item.signal, ?phase, "ignored a stale task input");
                    continue;
                }
            };
            return Some(decision);
        }
        None
    })
}

fn task_ref(ctx: &Ctx) -> TaskRef {
    ctx.state(|s| TaskRef {
        user: s.user.clone(),
        task_id: s.task_id.clone(),
    })
}

/// Writes the task's status (and an inbox item) to the store, the search attributes and the
/// Web UI's details.
async fn record(ctx: &Ctx, status: TaskStatus, detail: &str, raise: Option<NewInboxItem>) {
    record_with_note(ctx, status, detail, raise, None).await;
}

/// [`record`], adding `note` to the user's thread in the same local activity.
async fn record_with_note(
    ctx: &Ctx,
    status: TaskStatus,
    detail: &str,
    raise: Option<NewInboxItem>,
    note: Option<NoteLine>,
) {
    let projection = ctx.state_mut(|s| {
        s.mem.status = Some(status);
        s.mem.detail = detail.to_string();
        TaskProjection {
            status: Some(status),
            detail: detail.to_string(),
            error: s.mem.failure.as_ref().map(|f| f.error.clone()),
            failed_phase: s
                .mem
                .failure
                .as_ref()
                .map(|f| format!("{:?}", f.phase).to_lowercase()),
            issue_number: s
                .mem
                .issue
                .as_ref()
                .and_then(|i| i64::try_from(i.number).ok()),
            issue_url: s.mem.issue.as_ref().map(|i| i.url.clone()),
            branch: s.mem.branch.clone(),
            pr_number: s.mem.pr.as_ref().and_then(|p| i64::try_from(p.number).ok()),
            pr_url: s.mem.pr.as_ref().map(|p| p.url.clone()),
            questions: if status == TaskStatus::WaitingQuestions {
                s.mem.questions.clone()
            } else {
                Vec::new()
            },
            ci_fixes: i64::from(s.mem.ci_fixes),
            ci_attempts: i64::from(s.mem.ci_attempts),
            budget: s.mem.budget.unwrap_or_default(),
        }
    });
    let current = ctx.search_attributes().get(&SEARCH_ATTRIBUTE_TASK_STATUS);
    if current.as_deref() != Some(status.as_str()) {
        ctx.upsert_search_attributes([
            SEARCH_ATTRIBUTE_TASK_STATUS.value_set(status.as_str().to_string())
        ]);
    }
    ctx.set_current_details(format!("{}: {detail}", status.as_str()));
    let result = ctx
        .execute_local_activity(
            TaskActivities::record,
            RecordInput {
                task: task_ref(ctx),
                projection,
                raise,
                note,
            },
            local(),
        )
        .await;
    if let Err(error) = result {
        // The projection is rebuilt whole by the next record; the workflow goes on.
        tracing::error!(%error, "could not record the task's status");
    }
}

/// The key of a task's line in the thread: said once per task and `key`.
fn note_key(ctx: &Ctx, key: &str) -> String {
    ctx.state(|s| format!("{}/{key}", s.task_id))
}

/// Tells the main thread, which says it in the chat once per `key` (runs below behaviour
/// level 2; later ones write the line with their status).
async fn note(ctx: &Ctx, key: &str, text: String) {
    let (user, task_id) = ctx.state(|s| (s.user.clone(), s.task_id.clone()));
    let payload = serde_json::json!({
        "id": note_key(ctx, key),
        "task_id": task_id,
        "text": text,
    });
    let sent = ctx
        .external_workflow(main_thread_id(&user), None)
        .signal(
            MainThreadWorkflow::task_event,
            json_payload(&payload),
            SignalWorkflowOptions::default(),
        )
        .await;
    if let Err(error) = sent {
        // The store and inbox already hold the news; the chat line is a courtesy.
        tracing::warn!(?error, "could not tell the main thread");
    }
}

/// Something the user should hear of: an inbox item and a line in the chat, each raised once
/// per `key`.
struct News {
    key: String,
    kind: InboxKind,
    title: String,
    url: Option<String>,
    note: String,
}

/// Records `status` and tells the user `news`.
async fn announce(ctx: &Ctx, status: TaskStatus, detail: &str, news: News) {
    let task_id = ctx.state(|s| s.task_id.clone());
    let item = NewInboxItem {
        id: format!("{task_id}/{}", news.key),
        kind: news.kind,
        title: news.title,
        body: String::new(),
        url: news.url,
        resolved: news.kind == InboxKind::Done,
    };
    // A signal per line cost the task a command and a workflow task to learn it was
    // delivered, and the main thread a workflow task each: a thousand tasks reporting at
    // once kept the thread from starting a new task for a minute (the fault suite's
    // `parked`). The store takes the line directly, keyed as the thread keyed it.
    if at_level(ctx, 2) {
        let line = NoteLine {
            key: note_key(ctx, &news.key),
            text: news.note,
        };
        record_with_note(ctx, status, detail, Some(item), Some(line)).await;
    } else {
        record(ctx, status, detail, Some(item)).await;
        note(ctx, &news.key, news.note).await;
    }
}

fn github_options(config: &TaskConfig) -> ActivityOptions {
    activity_options(&ActivityTiming {
        start_to_close_ms: config.github_timeout_ms,
        heartbeat_ms: 0,
        retry_initial_ms: config.github_retry_initial_ms,
        retry_max_ms: config.github_retry_max_ms,
        retry_attempts: config.github_attempts,
    })
}

/// Whether this run takes every change of behaviour `level` without asking `patched()`: it
/// started on a worker at that level or later (`TaskConfig::behaviour`, recorded with the
/// run's config, so a replay sees the level the run started with). Runs recorded before
/// levels existed are at 0 and ask, as they always did. Level 1 holds the five patches below
/// and GitHub calls that go together made in one activity; level 2, task news written with
/// the status instead of signalled to the main thread.
fn at_level(ctx: &Ctx, level: u32) -> bool {
    ctx.state(|s| s.behaviour >= level)
}

/// Marks histories whose jobs run on the job queue; older ones keep theirs on the task queue.
const JOB_QUEUE_PATCH: &str = "jobs-on-their-own-queue";

/// Marks histories that record `implementing` as soon as the plan is approved, before the
/// issue is updated; older ones record it when the implement phase starts.
const IMPLEMENTING_AT_APPROVAL_PATCH: &str = "implementing-recorded-at-approval";

/// Marks histories in which a wait for GitHub that starts with a nudge not yet acted on
/// (one that came while the task was looking, or busy elsewhere) looks at once; older ones
/// waited for the next poll.
const NUDGED_BEFORE_THE_WAIT_PATCH: &str = "nudged-before-the-wait";

/// Marks histories in which a wait for a person that ends before its poll timer (an answer
/// from the app, a nudge) cancels that timer; older ones left it to fire later.
const HUMAN_WAIT_TIMER_CANCELLED_PATCH: &str = "human-wait-timer-cancelled";

/// What the task says while its implement job runs.
const IMPLEMENTING: &str = "implementing the plan";

/// A job may run `job_timeout_ms`; the activity gets a tenth more, so the runner's own
/// timeout (which kills the job) fires first.
fn job_options(config: &TaskConfig) -> ActivityOptions {
    activity_options(&ActivityTiming {
        start_to_close_ms: config
            .job_timeout_ms
            .saturating_add(config.job_timeout_ms / 10),
        heartbeat_ms: config.job_heartbeat_ms.max(1),
        retry_initial_ms: config.github_retry_initial_ms,
        retry_max_ms: config.github_retry_max_ms,
        retry_attempts: config.job_activity_attempts,
    })
}

fn local() -> LocalActivityOptions {
    local_options(Duration::from_secs(30))
}

/// Runs `future` unless the task is cancelled first; then the future is cancelled (an
/// activity's cancellation reaches it through its heartbeat) and `None` returned.
async fn unless_cancelled<F>(ctx: &Ctx, future: F) -> Option<F::Output>
where
    F: CancellableFuture,
{
    let mut future = pin!(future);
    select! {
        output = future.as_mut() => return Some(output),
        _ = ctx.wait_condition(|s| s.mem.cancel.is_some()).fuse() => {}
    }
    future.cancel();
    // Resolves at once: activities are cancelled with TryCancel.
    let _cancelled = future.await;
    None
}

/// How a wait between two looks at GitHub ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    Elapsed,
    /// A webhook said something happened: look now.
    Nudged,
    Cancelled,
}

/// Waits `interval_ms` before the next look at GitHub, less if a webhook nudges the task.
async fn pause(ctx: &Ctx, interval_ms: u64) -> Pause {
    let pause = if nudged_before_the_wait(ctx) {
        Pause::Nudged
    } else {
        let seen = ctx.state(|s| s.nudges);
        let mut timer = pin!(ctx.timer(Duration::from_millis(interval_ms)));
        let pause = select! {
            _ = timer.as_mut() => Pause::Elapsed,
            _ = ctx.wait_condition(|s| s.mem.cancel.is_some()).fuse() => Pause::Cancelled,
            _ = ctx.wait_condition(move |s| s.nudges != seen).fuse() => Pause::Nudged,
        };
        if pause != Pause::Elapsed {
            timer.cancel();
            let _cancelled = timer.await;
        }
        pause
    };
    going_to_look(ctx);
    pause
}

/// Whether a nudge came since the task last looked at GitHub, while no cancel waits: then
/// there is no point waiting before the next look. Without this, a webhook delivered while
/// the task was between two waits (CI that finished while the PR was being opened, a merge
/// while the summary was being written) was acted on only at the next poll, minutes later
/// at the default intervals. Asked only when that is the case, so that histories recorded
/// before the patch replay as they ran.
fn nudged_before_the_wait(ctx: &Ctx) -> bool {
    ctx.state(|s| s.nudges != s.nudges_looked && s.mem.cancel.is_none())
        && (at_level(ctx, 1) || ctx.patched(NUDGED_BEFORE_THE_WAIT_PATCH))
}

/// The task is about to read GitHub: every nudge so far will be answered by that read.
fn going_to_look(ctx: &Ctx) {
    ctx.state_mut(|s| s.nudges_looked = s.nudges);
}

/// A GitHub activity, or the step outcome when it fails or the task is cancelled.
macro_rules! github {
    ($ctx:expr, $config:expr, $activity:expr, $input:expr, $what:expr) => {
        match on_github(
            $ctx,
            $ctx.execute_activity($activity, $input, github_options($config)),
            $what,
        )
        .await
        {
            Ok(output) => output,
            Err(step) => return step,
        }
    };
}

/// A GitHub activity's output, or the step outcome when it fails (`what` failed) or the task
/// is cancelled meanwhile.
async fn on_github<F, T>(ctx: &Ctx, activity: F, what: &str) -> Result<T, Step>
where
    F: CancellableFuture<Output = Result<T, ActivityExecutionError>>,
{
    match unless_cancelled(ctx, activity).await {
        None => Err(Step::Cancel(cancel_reason(ctx))),
        Some(Ok(output)) => Ok(output),
        Some(Err(error)) => Err(Step::Fail(failed(what, &error))),
    }
}

fn cancel_reason(ctx: &Ctx) -> String {
    ctx.state(|s| s.mem.cancel.clone())
        .unwrap_or_else(|| "cancelled by the user".to_string())
}

fn failed(what: &str, error: &ActivityExecutionError) -> String {
    let (_, detail) = describe_activity_error(error);
    format!("{what}: {detail}")
}

/// The part of a job's name that says which run of the task started it.
///
/// A retried activity of the same run finds its job again (the job outlives a worker crash),
/// while a run made by `temporal workflow reset` must do the work anew instead of reading the
/// result of a job the old run started. Run ids are UUIDv7 on current servers: their leading
/// characters are a timestamp that only moves every 65 s, so the whole id is hashed (FNV-1a,
/// stable across builds and platforms, unlike `std`'s hasher).
fn run_tag(run_id: &str) -> String {
    let hash = run_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{:08x}", hash >> 32)
}

/// Runs a job of `mode`, again on retryable failures up to `job_attempts` times in all.
async fn job(
    ctx: &Ctx,
    config: &TaskConfig,
    mode: Mode,
    context_key: Option<String>,
) -> Result<JobOutput, Step> {
    let mut last_error = String::new();
    let run = run_tag(ctx.run_id());
    for _ in 0..config.job_attempts.max(1) {
        budget::within(ctx, false).await?;
        let input = ctx.state_mut(|s| {
            s.mem.jobs += 1;
            let id8: String = s
                .task_id
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(12)
                .collect();
            JobInput {
                task: TaskRef {
                    user: s.user.clone(),
                    task_id: s.task_id.clone(),
                },
                name: format!(
                    "t-{}-{run}-{:02}-{}",
                    id8.to_lowercase(),
                    s.mem.jobs,
                    mode.as_str()
                ),
                mode,
                repo: s.mem.repo.clone().unwrap_or(RepoInfo {
                    default_branch: "main".to_string(),
                    clone_url: String::new(),
                }),
                branch: s.mem.branch.clone(),
                issue: s.mem.issue.as_ref().map(|i| i.number),
                pr: s.mem.pr.as_ref().map(|p| p.number),
                answers: s.mem.answers.clone(),
                revision: s.mem.revision.clone(),
                context_key: context_key.clone(),
                timeout_ms: config.job_timeout_ms,
            }
        });
        let name = input.name.clone();
        let mut options = job_options(config);
        // Jobs waiting for a free job slot used to hold the worker's activity slots while they
        // waited, so a backlog of jobs starved chat turns and new tasks of their activities.
        // On their own queue they wait in Temporal instead (see `job_task_queue`).
        if at_level(ctx, 1) || ctx.patched(JOB_QUEUE_PATCH) {
            options.task_queue = Some(crate::job_task_queue(settled_queue(ctx, config)));
        }
        let result = unless_cancelled(
            ctx,
            ctx.execute_activity(TaskActivities::run_job, input, options),
        )
        .await;
        match result {
            None => {
                stop_job(ctx, config, &name).await;
                return Err(Step::Cancel(cancel_reason(ctx)));
            }
            Some(Ok(output)) => {
                if let Some(spent) = output.spent {
                    ctx.state_mut(|s| {
                        s.mem.spent.tokens = s.mem.spent.tokens.saturating_add(spent.tokens);
                        s.mem.spent.cost_usd += spent.cost_usd;
                    });
                }
                match &output.outcome {
                    JobOutcome::Failed { error, retryable } => {
                        last_error = error.clone();
                        if !retryable {
                            break;
                        }
                    }
                    // A job that spent past a limit pauses the task right after it, before
                    // anything builds on its work.
                    _ => {
                        budget::within(ctx, false).await?;
                        return Ok(output);
                    }
                }
            }
            Some(Err(error)) => {
                return Err(Step::Fail(failed(
                    &format!("the {} job failed", mode.as_str()),
                    &error,
                )));
            }
        }
    }
    Err(Step::Fail(format!(
        "the {} job failed: {last_error}",
        mode.as_str()
    )))
}

async fn stop_job(ctx: &Ctx, config: &TaskConfig, name: &str) {
    let stopped = ctx
        .execute_activity(
            TaskActivities::cancel_job,
            StopJobInput {
                task: task_ref(ctx),
                name: name.to_string(),
            },
            github_options(config),
        )
        .await;
    if let Err(error) = stopped {
        tracing::warn!(?error, "could not stop a job");
    }
}

async fn comment(
    ctx: &Ctx,
    config: &TaskConfig,
    number: u64,
    key: &str,
    body: CommentBody,
) -> Result<CommentInfo, Step> {
    let input = CommentInput {
        task: task_ref(ctx),
        number,
        key: key.to_string(),
        body,
    };
    on_github(
        ctx,
        ctx.execute_activity(TaskActivities::comment, input, github_options(config)),
        "commenting on GitHub failed",
    )
    .await
}

/// Rewrites the issue's body, then writes a comment on it: one activity from level 1, two
/// before.
async fn update_issue_and_comment(
    ctx: &Ctx,
    config: &TaskConfig,
    issue: IssueBodyInput,
    key: &str,
    body: CommentBody,
) -> Result<CommentInfo, Step> {
    let number = issue.issue;
    if !at_level(ctx, 1) {
        on_github(
            ctx,
            ctx.execute_activity(TaskActivities::update_issue, issue, github_options(config)),
            "updating the issue failed",
        )
        .await?;
        return comment(ctx, config, number, key, body).await;
    }
    let input = IssueAndCommentInput {
        issue,
        comment: CommentInput {
            task: task_ref(ctx),
            number,
            key: key.to_string(),
            body,
        },
    };
    on_github(
        ctx,
        ctx.execute_activity(
            TaskActivities::update_issue_and_comment,
            input,
            github_options(config),
        ),
        "writing to the issue failed",
    )
    .await
}

macro_rules! tryit {
    ($e:expr) => {
        match $e {
            Ok(value) => value,
            Err(step) => return step,
        }
    };
}

async fn start(ctx: &Ctx, config: &TaskConfig) -> Step {
    record(ctx, TaskStatus::Pending, "checking the repository", None).await;
    if at_level(ctx, 1) {
        let open_issue = !ctx.state(|s| s.skip_planning);
        let started = github!(
            ctx,
            config,
            TaskActivities::start,
            StartInput {
                task: task_ref(ctx),
                open_issue,
            },
            "starting on GitHub failed"
        );
        ctx.state_mut(|s| {
            s.mem.repo = Some(started.repo);
            s.mem.issue = started.issue;
        });
        return if open_issue {
            Step::Next(Phase::Plan)
        } else {
            Step::Next(Phase::Implement)
        };
    }
    let repo = github!(
        ctx,
        config,
        TaskActivities::prepare,
        task_ref(ctx),
        "the repository cannot be used"
    );
    ctx.state_mut(|s| s.mem.repo = Some(repo));
    if ctx.state(|s| s.skip_planning) {
        return Step::Next(Phase::Implement);
    }
    let issue = github!(
        ctx,
        config,
        TaskActivities::ensure_issue,
        task_ref(ctx),
        "opening the issue failed"
    );
    ctx.state_mut(|s| s.mem.issue = Some(issue));
    Step::Next(Phase::Plan)
}

async fn plan(ctx: &Ctx, config: &TaskConfig) -> Step {
    let version = ctx.state(|s| s.mem.plan_version + 1);
    let detail = if version > 1 {
        "revising the plan"
    } else {
        "exploring the code and planning"
    };
    record(ctx, TaskStatus::Planning, detail, None).await;
    let output = tryit!(job(ctx, config, Mode::Plan, None).await);
    let JobOutcome::Plan { questions } = output.outcome else {
        return Step::Fail("the plan job returned no plan".to_string());
    };
    let issue = ctx.state(|s| s.mem.issue.clone());
    let Some(issue) = issue else {
        return Step::Fail("the task has no issue".to_string());
    };
    if !questions.is_empty() {
        let round = ctx.state(|s| s.mem.plan_version + 1);
        let posted = tryit!(
            comment(
                ctx,
                config,
                issue.number,
                &format!("questions-{round}"),
                CommentBody::Questions {
                    questions: questions.clone(),
                }
            )
            .await
        );
        ctx.state_mut(|s| {
            s.mem.questions = questions;
            s.mem.asked_comment = Some(posted.id);
            s.mem.asked_at = Some(posted.created_at);
        });
        return Step::Next(Phase::Questions);
    }
    ctx.state_mut(|s| {
        s.mem.plan_version = version;
        s.mem.revision = None;
        s.mem.questions.clear();
    });
    let answers = ctx.state(|s| s.mem.answers.clone());
    let posted = tryit!(
        update_issue_and_comment(
            ctx,
            config,
            IssueBodyInput {
                task: task_ref(ctx),
                issue: issue.number,
                status: "Plan ready for review".to_string(),
                answers,
                with_plan: true,
                labels: None,
                close: false,
            },
            &format!("plan-{version}"),
            CommentBody::Plan { version },
        )
        .await
    );
    ctx.state_mut(|s| {
        s.mem.asked_at = Some(posted.created_at.clone());
        s.mem.asked_comment = Some(posted.id);
        s.mem.plan_comment = Some(posted);
    });
    Step::Next(Phase::PlanReview)
}

/// Waits for a decision from the app (signals) or GitHub (polled with backoff).
async fn wait_for_human(
    ctx: &Ctx,
    config: &TaskConfig,
    phase: Phase,
    wait: HumanWait,
) -> Result<Decision, Step> {
    let mut interval = config.human_poll_initial_ms.max(1);
    loop {
        if let Some(decision) = next_decision(ctx, phase) {
            return Ok(decision);
        }
        if let Some(reason) = ctx.state(|s| s.mem.cancel.clone()) {
            return Ok(Decision::Cancel(reason));
        }
        // None: input from the app (or a cancel) to decide on first.
        let woken = if nudged_before_the_wait(ctx) {
            Some(Pause::Nudged)
        } else {
            let seen = ctx.state(|s| s.nudges);
            let mut timer = pin!(ctx.timer(Duration::from_millis(interval)));
            let woken = select! {
                _ = ctx.wait_condition(|s| !s.inbox.is_empty() || s.mem.cancel.is_some()).fuse() => None,
                _ = ctx.wait_condition(move |s| s.nudges != seen).fuse() => Some(Pause::Nudged),
                _ = timer.as_mut() => Some(Pause::Elapsed),
            };
            // A timer that is merely dropped still fires later: a workflow task, four history
            // events and a wake-up for nothing, once per answer from the app. Asked only when
            // the timer is still running, so that histories recorded before replay as they ran.
            if woken != Some(Pause::Elapsed)
                && (at_level(ctx, 1) || ctx.patched(HUMAN_WAIT_TIMER_CANCELLED_PATCH))
            {
                timer.cancel();
                let _cancelled = timer.await;
            }
            woken
        };
        match woken {
            None => continue,
            // A reply on GitHub, most likely: read it now.
            Some(Pause::Nudged) => interval = config.human_poll_initial_ms.max(1),
            Some(_) => {
                interval = (interval.saturating_mul(3) / 2).min(config.human_poll_max_ms.max(1));
            }
        }
        // Also when there is no issue to read: a nudge about nothing is then spent.
        going_to_look(ctx);
        let (issue, since, asked_comment) = ctx.state(|s| {
            (
                s.mem.issue.as_ref().map(|i| i.number),
                s.mem.asked_at.clone(),
                s.mem.asked_comment,
            )
        });
        let Some(issue) = issue else { continue };
        let polled = ctx
            .execute_activity(
                TaskActivities::poll_human,
                PollHumanInput {
                    task: task_ref(ctx),
                    issue,
                    wait: wait.clone(),
                    since: since.unwrap_or_default(),
                    asked_comment,
                },
                github_options(config),
            )
            .await;
        match polled {
            Ok(Some(GitHubReply::Answers { answers, .. })) => {
                return Ok(Decision::Answers(answers));
            }
            Ok(Some(GitHubReply::Approve { .. })) => return Ok(Decision::Approve),
            Ok(Some(GitHubReply::Revise { text, .. })) => return Ok(Decision::Revise(text)),
            Ok(None) => {}
            // GitHub being unreachable for a while must not fail a task that waits for a
            // person; the app's answers still arrive.
            Err(error) => tracing::warn!(?error, "could not read GitHub replies"),
        }
        if ctx.continue_as_new_suggested() || ctx.history_length() > config.history_limit {
            return Err(Step::Next(phase));
        }
    }
}

/// "1 question", "2 questions".
fn count_of(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

async fn questions(ctx: &Ctx, config: &TaskConfig) -> Step {
    let (questions, issue) = ctx.state(|s| (s.mem.questions.clone(), s.mem.issue.clone()));
    let url = issue.as_ref().map(|i| i.url.clone());
    let round = ctx.state(|s| s.mem.plan_version + 1);
    announce(
        ctx,
        TaskStatus::WaitingQuestions,
        &format!("{} to answer", count_of(questions.len(), "question")),
        News {
            key: format!("questions-{round}"),
            kind: InboxKind::Questions,
            title: format!("{} before planning", count_of(questions.len(), "question")),
            url,
            note: format!(
                "{} before I can plan **{}**.",
                count_of(questions.len(), "question"),
                ctx.state(|s| s.title.clone())
            ),
        },
    )
    .await;
    let decision = tryit!(
        wait_for_human(
            ctx,
            config,
            Phase::Questions,
            HumanWait::Answers { questions }
        )
        .await
    );
    match decision {
        Decision::Answers(answers) => {
            ctx.state_mut(|s| {
                for answer in answers {
                    s.mem
                        .answers
                        .retain(|a| a.question_id != answer.question_id);
                    s.mem.answers.push(answer);
                }
            });
            if let Some(issue) = issue {
                let answers = ctx.state(|s| s.mem.answers.clone());
                tryit!(
                    update_issue_and_comment(
                        ctx,
                        config,
                        IssueBodyInput {
                            task: task_ref(ctx),
                            issue: issue.number,
                            status: "Planning".to_string(),
                            answers,
                            with_plan: false,
                            labels: None,
                            close: false,
                        },
                        &format!("answers-{round}"),
                        CommentBody::Text {
                            text: "✅ Got the answers. Writing the implementation plan…"
                                .to_string(),
                        },
                    )
                    .await
                );
            }
            Step::Next(Phase::Plan)
        }
        Decision::Cancel(reason) => Step::Cancel(reason),
        _ => Step::Next(Phase::Questions),
    }
}

async fn plan_review(ctx: &Ctx, config: &TaskConfig) -> Step {
    let (issue, version, comment_id) = ctx.state(|s| {
        (
            s.mem.issue.clone(),
            s.mem.plan_version,
            s.mem.plan_comment.as_ref().map(|c| c.id).unwrap_or(0),
        )
    });
    let Some(issue) = issue else {
        return Step::Fail("the task has no issue".to_string());
    };
    announce(
        ctx,
        TaskStatus::WaitingPlanReview,
        "plan ready for review",
        News {
            key: format!("plan-{version}"),
            kind: InboxKind::PlanReview,
            title: format!("Plan ready for #{}", issue.number),
            url: Some(issue.url.clone()),
            note: format!(
                "Plan ready for #{}: {}",
                issue.number,
                ctx.state(|s| s.title.clone())
            ),
        },
    )
    .await;
    let decision = tryit!(
        wait_for_human(
            ctx,
            config,
            Phase::PlanReview,
            HumanWait::PlanReview {
                plan_comment: comment_id
            }
        )
        .await
    );
    match decision {
        Decision::Approve => {
            let branch = task_text::branch_name(
                Some(issue.number),
                &ctx.state(|s| s.title.clone()),
                &ctx.state(|s| s.task_id.clone()),
            );
            ctx.state_mut(|s| s.mem.branch = Some(branch.clone()));
            // The person who approved sees the task move at once; the issue's update and
            // comment are two calls to GitHub they need not wait for.
            if at_level(ctx, 1) || ctx.patched(IMPLEMENTING_AT_APPROVAL_PATCH) {
                record(ctx, TaskStatus::Implementing, IMPLEMENTING, None).await;
            }
            tryit!(
                update_issue_and_comment(
                    ctx,
                    config,
                    IssueBodyInput {
                        task: task_ref(ctx),
                        issue: issue.number,
                        status: "Plan approved; implementing".to_string(),
                        answers: ctx.state(|s| s.mem.answers.clone()),
                        with_plan: true,
                        labels: Some(vec!["mainloop".to_string(), "approved".to_string()]),
                        close: false,
                    },
                    &format!("approved-{version}"),
                    CommentBody::Text {
                        text: format!("✅ **Plan approved.** Implementing on `{branch}`…"),
                    },
                )
                .await
            );
            Step::Next(Phase::Implement)
        }
        Decision::Revise(text) => {
            tryit!(
                comment(
                    ctx,
                    config,
                    issue.number,
                    &format!("revise-{version}"),
                    CommentBody::Text {
                        text: format!(
                            "📝 **Revision requested:**\n> {}\n\nRewriting the plan…",
                            text.replace('\n', "\n> ")
                        ),
                    }
                )
                .await
            );
            ctx.state_mut(|s| s.mem.revision = Some(text));
            Step::Next(Phase::Plan)
        }
        Decision::Cancel(reason) => Step::Cancel(reason),
        _ => Step::Next(Phase::PlanReview),
    }
}

async fn implement(ctx: &Ctx, config: &TaskConfig) -> Step {
    if ctx.state(|s| s.mem.branch.is_none()) {
        let branch = ctx.state(|s| {
            task_text::branch_name(s.mem.issue.as_ref().map(|i| i.number), &s.title, &s.task_id)
        });
        ctx.state_mut(|s| s.mem.branch = Some(branch));
    }
    // A retried implement phase whose PR exists goes on from the PR.
    if ctx.state(|s| s.mem.pr.is_none()) {
        // Recorded at the approval already, unless the phase is retried or skipped planning.
        let recorded = ctx.state(|s| s.mem.status == Some(TaskStatus::Implementing));
        if !(recorded && (at_level(ctx, 1) || ctx.patched(IMPLEMENTING_AT_APPROVAL_PATCH))) {
            record(ctx, TaskStatus::Implementing, IMPLEMENTING, None).await;
        }
        let output = tryit!(job(ctx, config, Mode::Implement, None).await);
        let JobOutcome::Pushed { commit, .. } = output.outcome else {
            return Step::Fail("the implement job pushed nothing".to_string());
        };
        ctx.state_mut(|s| {
            s.mem.summary = output.summary.clone();
            s.mem.ledger.push(LedgerEntry {
                step: "implement".to_string(),
                commit,
                ci: "…".to_string(),
            });
        });
        let (branch, base, issue) = ctx.state(|s| {
            (
                s.mem.branch.clone().unwrap_or_default(),
                s.mem
                    .repo
                    .as_ref()
                    .map(|r| r.default_branch.clone())
                    .unwrap_or_else(|| "main".to_string()),
                s.mem.issue.as_ref().map(|i| i.number),
            )
        });
        let pr = github!(
            ctx,
            config,
            TaskActivities::ensure_pull,
            PullInput {
                task: task_ref(ctx),
                branch,
                base,
                issue
            },
            "opening the draft PR failed"
        );
        ctx.state_mut(|s| s.mem.pr = Some(pr));
    }
    ctx.state_mut(|s| s.mem.ci_fixes = 0);
    Step::Next(Phase::Ci)
}

/// "2/5": fix jobs run of those allowed. A CI-attempts budget counts over the whole task; a
/// task without one counts `phase_fixes` of this CI phase's `max_ci_fixes`.
fn fix_progress(ctx: &Ctx, config: &TaskConfig, phase_fixes: u32) -> String {
    match ctx.state(|s| s.mem.budget.and_then(|b| b.max_ci_attempts)) {
        Some(limit) => format!("{}/{limit}", ctx.state(|s| s.mem.ci_attempts)),
        None => format!("{phase_fixes}/{}", config.max_ci_fixes),
    }
}

/// The CI loop: wait for a verdict; on failure run a fix job, until the task's CI-attempts
/// budget pauses it or, for a task without one, at most `max_ci_fixes` times per phase.
async fn ci(ctx: &Ctx, config: &TaskConfig) -> Step {
    let Some(pr) = ctx.state(|s| s.mem.pr.clone()) else {
        return Step::Fail("the task has no PR".to_string());
    };
    loop {
        let fixes = ctx.state(|s| s.mem.ci_fixes);
        let detail = if fixes == 0 {
            format!("waiting for CI on #{}", pr.number)
        } else {
            format!(
                "waiting for CI after fix {}",
                fix_progress(ctx, config, fixes)
            )
        };
        record(ctx, TaskStatus::Ci, &detail, None).await;
        let logs_key = ctx.state(|s| format!("ci-logs/{}", s.mem.jobs + 1));
        let mut interval = config.ci_poll_initial_ms.max(1);
        let mut waited: u64 = 0;
        let report = loop {
            match pause(ctx, interval).await {
                Pause::Cancelled => return Step::Cancel(cancel_reason(ctx)),
                // CI reported: the next look may well be the last.
                Pause::Nudged => interval = config.ci_poll_initial_ms.max(1),
                Pause::Elapsed => {
                    waited = waited.saturating_add(interval);
                    interval = interval.saturating_mul(2).min(config.ci_poll_max_ms.max(1));
                }
            }
            let report = github!(
                ctx,
                config,
                TaskActivities::check_status,
                CheckInput {
                    task: task_ref(ctx),
                    pr: pr.number,
                    logs_key: Some(logs_key.clone())
                },
                "reading CI status failed"
            );
            if report.pr_state != PrState::Open {
                return Step::Finish(if report.pr_state == PrState::Merged {
                    TaskStatus::Merged
                } else {
                    TaskStatus::Closed
                });
            }
            if report.verdict != CiVerdict::Pending {
                break report;
            }
            if waited >= config.ci_pending_timeout_ms {
                return Step::Fail(format!(
                    "CI on #{} stayed pending for {} s",
                    pr.number,
                    waited / 1000
                ));
            }
        };
        ctx.state_mut(|s| {
            let verdict = if report.verdict == CiVerdict::Passed {
                "passed".to_string()
            } else {
                format!("failed: {}", report.failed.join(", "))
            };
            match s.mem.ledger.last_mut() {
                Some(entry) if entry.commit == report.head_sha || entry.ci == "…" => {
                    entry.commit = report.head_sha.clone();
                    entry.ci = verdict;
                }
                _ => s.mem.ledger.push(LedgerEntry {
                    step: "push".to_string(),
                    commit: report.head_sha.clone(),
                    ci: verdict,
                }),
            }
        });
        if report.verdict == CiVerdict::Passed {
            return Step::Next(Phase::Ready);
        }
        // A task with a CI-attempts budget pauses and asks when it runs out (`budget::within`
        // below), so the per-phase limit is only the guard of a task without one. Before the
        // patch the phase limit failed every task, which, at the default of five of each,
        // meant a hopeless CI phase always failed before its budget could pause it.
        if fixes >= config.max_ci_fixes
            && !(budget::limits_ci_attempts(ctx) && ctx.patched(budget::CI_BUDGET_GOVERNS_PATCH))
        {
            return Step::Fail(format!(
                "CI still fails after {fixes} fix attempts ({})",
                report.failed.join(", ")
            ));
        }
        tryit!(budget::within(ctx, true).await);
        ctx.state_mut(|s| {
            s.mem.ci_fixes += 1;
            s.mem.ci_attempts += 1;
        });
        let attempt = fixes + 1;
        record(
            ctx,
            TaskStatus::Ci,
            &format!(
                "fixing CI {}: {}",
                fix_progress(ctx, config, attempt),
                report.failed.join(", ")
            ),
            None,
        )
        .await;
        let output = tryit!(job(ctx, config, Mode::Fix, Some(logs_key)).await);
        if let JobOutcome::Pushed { commit, .. } = output.outcome {
            ctx.state_mut(|s| {
                s.mem.ledger.push(LedgerEntry {
                    step: format!("fix {attempt}"),
                    commit,
                    ci: "…".to_string(),
                })
            });
        }
    }
}

async fn ready(ctx: &Ctx, config: &TaskConfig) -> Step {
    let Some(pr) = ctx.state(|s| s.mem.pr.clone()) else {
        return Step::Fail("the task has no PR".to_string());
    };
    let ready = ReadyInput {
        task: task_ref(ctx),
        pr: pr.number,
        node_id: pr.node_id.clone(),
    };
    let (ledger, summary, round) = ctx.state(|s| {
        (
            s.mem.ledger.clone(),
            s.mem.summary.clone(),
            s.mem.feedback_rounds,
        )
    });
    let summary_key = format!("summary-{round}");
    if at_level(ctx, 1) {
        github!(
            ctx,
            config,
            TaskActivities::mark_ready_and_comment,
            ReadyAndCommentInput {
                ready,
                comment: CommentInput {
                    task: task_ref(ctx),
                    number: pr.number,
                    key: summary_key,
                    body: CommentBody::Summary { ledger, summary },
                },
            },
            "writing to the PR failed"
        );
    } else {
        github!(
            ctx,
            config,
            TaskActivities::mark_ready,
            ready,
            "marking the PR ready failed"
        );
        tryit!(
            comment(
                ctx,
                config,
                pr.number,
                &summary_key,
                CommentBody::Summary { ledger, summary }
            )
            .await
        );
    }
    ctx.state_mut(|s| {
        if s.mem.review_since.is_none() {
            s.mem.review_since = s.mem.asked_at.clone();
        }
    });
    announce(
        ctx,
        TaskStatus::ReadyForReview,
        &format!("PR #{} ready for review", pr.number),
        News {
            key: format!("ready-{round}"),
            kind: InboxKind::ReadyForReview,
            title: format!("PR #{} ready for review", pr.number),
            url: Some(pr.url.clone()),
            note: format!("PR #{} ready for review: {}", pr.number, pr.url),
        },
    )
    .await;
    Step::Next(Phase::Review)
}

async fn review(ctx: &Ctx, config: &TaskConfig) -> Step {
    let Some(pr) = ctx.state(|s| s.mem.pr.clone()) else {
        return Step::Fail("the task has no PR".to_string());
    };
    let mut interval = config.review_poll_initial_ms.max(1);
    loop {
        match pause(ctx, interval).await {
            Pause::Cancelled => return Step::Cancel(cancel_reason(ctx)),
            Pause::Nudged => interval = config.review_poll_initial_ms.max(1),
            Pause::Elapsed => {
                interval = (interval.saturating_mul(3) / 2).min(config.review_poll_max_ms.max(1));
            }
        }
        let (since, round) = ctx.state(|s| {
            (
                s.mem.review_since.clone().unwrap_or_default(),
                s.mem.feedback_rounds + 1,
            )
        });
        let polled = github!(
            ctx,
            config,
            TaskActivities::poll_review,
            ReviewPollInput {
                task: task_ref(ctx),
                pr: pr.number,
                since,
                feedback_key: format!("feedback/{round}")
            },
            "reading the PR failed"
        );
        match polled.pr_state {
            PrState::Merged => return Step::Finish(TaskStatus::Merged),
            PrState::Closed => return Step::Finish(TaskStatus::Closed),
            PrState::Open => {}
        }
        if polled.feedback {
            ctx.state_mut(|s| {
                s.mem.review_since = Some(polled.since.clone());
                s.mem.feedback_rounds = round;
            });
            return Step::Next(Phase::Feedback);
        }
        if ctx.continue_as_new_suggested() || ctx.history_length() > config.history_limit {
            return Step::Next(Phase::Review);
        }
    }
}

async fn feedback(ctx: &Ctx, config: &TaskConfig) -> Step {
    let round = ctx.state(|s| s.mem.feedback_rounds);
    record(
        ctx,
        TaskStatus::AddressingFeedback,
        &format!("addressing review feedback (round {round})"),
        None,
    )
    .await;
    let output = tryit!(
        job(
            ctx,
            config,
            Mode::Feedback,
            Some(format!("feedback/{round}"))
        )
        .await
    );
    if let JobOutcome::Pushed { commit, .. } = output.outcome {
        ctx.state_mut(|s| {
            s.mem.summary = output.summary.clone();
            s.mem.ledger.push(LedgerEntry {
                step: format!("feedback {round}"),
                commit,
                ci: "…".to_string(),
            });
        });
    }
    ctx.state_mut(|s| s.mem.ci_fixes = 0);
    Step::Next(Phase::Ci)
}

/// Parks the task as failed until `retry` (true: run the phase again) or `cancel` (false).
async fn park(ctx: &Ctx, phase: Phase, error: String) -> bool {
    let jobs = ctx.state_mut(|s| {
        s.mem.failure = Some(Failure {
            phase,
            error: error.clone(),
        });
        s.mem.jobs
    });
    let key = format!("failed-{jobs}-{}", format!("{phase:?}").to_lowercase());
    let url = ctx.state(|s| {
        s.mem
            .pr
            .as_ref()
            .map(|p| p.url.clone())
            .or_else(|| s.mem.issue.as_ref().map(|i| i.url.clone()))
    });
    announce(
        ctx,
        TaskStatus::Failed,
        &error,
        News {
            key: key.clone(),
            kind: InboxKind::Failed,
            title: format!("Failed: {error}"),
            url,
            note: format!("**{}** failed: {error}", ctx.state(|s| s.title.clone())),
        },
    )
    .await;
    loop {
        if let Some(decision) = next_decision(ctx, Phase::Done) {
            match decision {
                Decision::Retry => {
                    ctx.state_mut(|s| {
                        s.mem.failure = None;
                        if phase == Phase::Ci {
                            // A retried CI phase gets a fresh budget of fixes: the user asked
                            // for more, so the task's CI attempts start over too.
                            s.mem.ci_fixes = 0;
                            s.mem.ci_attempts = 0;
                        }
                    });
                    return true;
                }
                Decision::Cancel(reason) => {
                    ctx.state_mut(|s| s.mem.cancel = Some(reason));
                    return false;
                }
                _ => continue,
            }
        }
        if ctx.state(|s| s.mem.cancel.is_some()) {
            return false;
        }
        if ctx
            .wait_condition(|s| !s.inbox.is_empty() || s.mem.cancel.is_some())
            .await
            .is_err()
        {
            return false;
        }
    }
}

/// Stops everything, says so on GitHub, and ends the task as cancelled.
async fn cancel(ctx: &Ctx, config: &TaskConfig, reason: &str) {
    let (issue, pr) = ctx.state(|s| {
        (
            s.mem.issue.as_ref().map(|i| i.number),
            s.mem.pr.as_ref().map(|p| p.number),
        )
    });
    if issue.is_some() || pr.is_some() {
        let closed = ctx
            .execute_activity(
                TaskActivities::close,
                CloseInput {
                    task: task_ref(ctx),
                    issue,
                    pr,
                    comment: format!("❌ Task cancelled: {reason}."),
                },
                github_options(config),
            )
            .await;
        if let Err(error) = closed {
            tracing::warn!(?error, "could not close the issue and PR");
        }
    }
    cleanup(ctx, config).await;
    ctx.state_mut(|s| s.mem.failure = None);
    announce(
        ctx,
        TaskStatus::Cancelled,
        reason,
        News {
            key: "cancelled".to_string(),
            kind: InboxKind::Done,
            title: format!("Cancelled: {reason}"),
            url: None,
            note: format!("**{}** was cancelled.", ctx.state(|s| s.title.clone())),
        },
    )
    .await;
}

async fn finish(ctx: &Ctx, config: &TaskConfig, outcome: TaskStatus) {
    cleanup(ctx, config).await;
    let pr = ctx.state(|s| s.mem.pr.clone());
    let (title, detail) = match (&pr, outcome) {
        (Some(pr), TaskStatus::Merged) => {
            (format!("PR #{} merged", pr.number), "merged".to_string())
        }
        (Some(pr), _) => (
            format!("PR #{} closed without merging", pr.number),
            "closed".to_string(),
        ),
        (None, _) => ("Done".to_string(), "done".to_string()),
    };
    announce(
        ctx,
        outcome,
        &detail,
        News {
            key: "done".to_string(),
            kind: InboxKind::Done,
            title: title.clone(),
            url: pr.as_ref().map(|p| p.url.clone()),
            note: format!("{title}: **{}**", ctx.state(|s| s.title.clone())),
        },
    )
    .await;
}

async fn cleanup(ctx: &Ctx, config: &TaskConfig) {
    let cleaned = ctx
        .execute_activity(
            TaskActivities::cleanup,
            task_ref(ctx),
            github_options(config),
        )
        .await;
    if let Err(error) = cleaned {
        tracing::warn!(?error, "could not clean up the task's jobs");
    }
}

/// The task queue the task belongs on once it has started: see `leaving_intake`.
fn settled_queue<'a>(ctx: &'a Ctx, config: &'a TaskConfig) -> &'a str {
    config.task_queue.as_deref().unwrap_or(ctx.task_queue())
}

/// Where the task moves before it runs `phase`, if anywhere. A task starts on the intake queue
/// and moves to the worker's task queue when it first waits, for a person or for CI: after a
/// worker restart, tasks that were all answered at once replay there, while new tasks start on
/// the intake queue with nothing in front of them. A task started before the intake queue
/// existed is not `on_intake` and stays where it is.
fn leaving_intake(ctx: &Ctx, config: &TaskConfig, phase: Phase) -> Option<String> {
    let waits = matches!(
        phase,
        Phase::Questions | Phase::PlanReview | Phase::Ci | Phase::Review
    );
    let settled = config.task_queue.clone()?;
    (waits && ctx.state(|s| s.on_intake)).then_some(settled)
}

/// Continues as new with the task's state, on `task_queue` if given (leaving the intake queue)
/// or where it is.
fn continue_as_new(ctx: &Ctx, task_queue: Option<String>) -> WorkflowResult<()> {
    let input = ctx.state(|s| TaskInput {
        on_intake: s.on_intake && task_queue.is_none(),
        task_id: s.task_id.clone(),
        user: s.user.clone(),
        title: s.title.clone(),
        repo: s.repo_name.clone(),
        skip_planning: s.skip_planning,
        budget: s.budget_override,
        resume: Some(Memory {
            pending: s.inbox.iter().cloned().collect(),
            nudged: s.nudges != s.nudges_looked,
            ..s.mem.clone()
        }),
    });
    let options = ContinueAsNewOptions::builder()
        .maybe_task_queue(task_queue)
        .build();
    ctx.continue_as_new(input, options)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::run_tag;

    #[test]
    fn runs_started_in_the_same_minute_name_their_jobs_apart() {
        // Two UUIDv7 run ids from one second, as a reset right after a start gives them.
        let first = run_tag("019aa8f2-4c1e-7d3a-9b2f-2f6e1c0d4a11");
        let reset = run_tag("019aa8f2-4d80-7e01-8a77-90b3c5e2f6d2");
        assert_ne!(first, reset);
        assert_eq!(first, run_tag("019aa8f2-4c1e-7d3a-9b2f-2f6e1c0d4a11"));
        assert_eq!(first.len(), 8);
        assert!(
            first
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
