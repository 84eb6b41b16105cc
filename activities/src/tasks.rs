//! The worker task's activities: its store writes (local activities), its GitHub side
//! (issue, comments, draft PR, CI status and logs, mark-ready, reading replies and reviews),
//! and its jobs. The workflow decides; these do.
//!
//! Every activity may run more than once for the same input and is written so a repeat has the
//! effect of one run: issues and PRs are found by marker or branch before they are created,
//! comments carry a marker and are updated instead of duplicated, jobs have deterministic
//! names and re-attach, logs and costs are stored once per job line and job.
//!
//! Large texts (plans, CI logs, review feedback) stay in the store; workflow payloads carry
//! only keys, numbers and short strings, so histories stay small.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mainloop_agent::protocol::{AgentSpec, Answer, LogSource, Mode, Outcome};
use mainloop_store::{
    Cost, NewInboxItem, Store, StoreError, Task, TaskBudget, TaskProjection, TaskQuestion,
    TaskQuestionOption,
};
use serde::{Deserialize, Serialize};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio::sync::{Semaphore, mpsc};

use crate::chat::NoteLine;
use crate::errors::{permanent, retryable, store_error};
use crate::github::{CiState, CommentKind, GitHub, GitHubError, IssueUpdate, PullState};
use crate::governor::{Governor, GovernorSettings, MODEL_SCOPE, says_rate_limited};
use crate::heartbeat::Heartbeat;
use crate::jobs::{JobError, JobLine, JobRequest, JobRunner};
use crate::metrics::{ActivityMetrics, JobOutcomeLabel, JobTimer, Source, Spent};
use crate::task_text::{self, LedgerEntry, PlanReply};

/// Failure type names the workflow tells apart.
pub mod failure_type {
    /// The repository is missing or we cannot push to it.
    pub const REPO_UNUSABLE: &str = "RepoUnusable";
    /// GitHub refused the request for good (validation, permissions).
    pub const GITHUB_REJECTED: &str = "GitHubRejected";
    pub const JOB_REJECTED: &str = "JobRejected";
}

/// The worker task workflow's settings, handed to it by `task.config` (a wire type).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskConfig {
    /// First wait before asking CI again; doubles up to `ci_poll_max_ms`.
    pub ci_poll_initial_ms: u64,
    pub ci_poll_max_ms: u64,
    /// Longest CI may stay pending before the task fails (retryable).
    pub ci_pending_timeout_ms: u64,
    /// Most fix jobs per CI phase.
    pub max_ci_fixes: u32,
    /// How often GitHub is read for replies while waiting for a human: first wait, growing
    /// ×1.5 up to the maximum. Answers through the app arrive at once regardless.
    pub human_poll_initial_ms: u64,
    pub human_poll_max_ms: u64,
    /// How often a PR ready for review is checked for reviews, merge and close.
    pub review_poll_initial_ms: u64,
    pub review_poll_max_ms: u64,
    /// Longest one job may run.
    pub job_timeout_ms: u64,
    /// Jobs that end with a retryable failure are run again this many times in all.
    pub job_attempts: u32,
    /// GitHub calls: timeouts and retries.
    pub github_timeout_ms: u64,
    pub github_retry_initial_ms: u64,
    pub github_retry_max_ms: u64,
    pub github_attempts: u32,
    /// How often a job activity heartbeats (and so how soon a lost worker is noticed).
    pub job_heartbeat_ms: u64,
    /// Activity retries of a job whose worker died or whose runner failed.
    pub job_activity_attempts: u32,
    /// Events after which a waiting task continues as new.
    pub history_limit: u32,
    /// Limits of a task that names none of its own (resolved once, when the task starts).
    #[serde(default)]
    pub budget: TaskBudget,
    /// The task queue a task settles on when it first waits (leaving the intake queue it
    /// started on), and whose job queue its jobs go to; none: the task's own queue.
    #[serde(default)]
    pub task_queue: Option<String>,
    /// The task workflow's behaviour level a run takes (see [`TASK_BEHAVIOUR`]). Recorded
    /// with the rest of this config at the start of every run, so a run replays at the level
    /// it started with. 0 (the default, and what histories recorded before levels existed
    /// read): the run asks `patched()` for each change, as such runs always did.
    #[serde(default)]
    pub behaviour: u32,
}

/// The task workflow behaviour level this worker starts new runs at: every change up to it is
/// taken without asking `patched()`. A patch marker and the `TemporalChangeVersion` upsert
/// that comes with it are two history events per patch per run, for workflows that never ran
/// the old code; once a change is part of a level, only runs that started before the level
/// existed still ask. Level 1: the five task patches up to `human-wait-timer-cancelled`, and
/// GitHub calls that go together made in one activity (`github.start`,
/// `github.update_issue_and_comment`, `github.mark_ready_and_comment`). Level 2: the task
/// writes its news to the user's thread with its status (`task.record`) instead of
/// signalling the main thread.
pub const TASK_BEHAVIOUR: u32 = 2;

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            ci_poll_initial_ms: 15_000,
            ci_poll_max_ms: 120_000,
            ci_pending_timeout_ms: 2 * 3600 * 1000,
            max_ci_fixes: 5,
            human_poll_initial_ms: 10_000,
            human_poll_max_ms: 300_000,
            review_poll_initial_ms: 30_000,
            review_poll_max_ms: 600_000,
            job_timeout_ms: 3600 * 1000,
            job_attempts: 3,
            github_timeout_ms: 60_000,
            github_retry_initial_ms: 1_000,
            github_retry_max_ms: 60_000,
            github_attempts: 10,
            job_heartbeat_ms: 30_000,
            job_activity_attempts: 5,
            history_limit: 8_000,
            budget: TaskBudget {
                max_tokens: None,
                max_cost_usd: None,
                max_ci_attempts: Some(5),
            },
            task_queue: None,
            behaviour: 0,
        }
    }
}

/// How the task activities behave; from the worker's configuration.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// Model of the worker agents unless a task names one.
    pub worker_model: String,
    pub git_author_name: String,
    pub git_author_email: String,
    /// Most jobs running at once in this worker; tasks waiting for a human hold none.
    pub max_running_jobs: usize,
    /// The app's public URL, linked from GitHub comments.
    pub app_url: Option<String>,
    /// Comments mentioning this (e.g. `@mainloop`) on the PR are feedback for the agent.
    pub mention: String,
    /// Most bytes of CI failure logs handed to a fix job.
    pub failure_log_bytes: usize,
    pub config: TaskConfig,
}

pub struct TaskActivities {
    store: Store,
    github: GitHub,
    runner: Arc<dyn JobRunner>,
    settings: TaskSettings,
    slots: Arc<Semaphore>,
    metrics: Option<Arc<ActivityMetrics>>,
    governor: Governor,
}

impl TaskActivities {
    pub fn new(
        store: Store,
        github: GitHub,
        runner: Arc<dyn JobRunner>,
        settings: TaskSettings,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_running_jobs.max(1)));
        TaskActivities {
            governor: Governor::new(store.clone(), GovernorSettings::default()),
            store,
            github,
            runner,
            settings,
            slots,
            metrics: None,
        }
    }

    /// Waits out rate limits as `settings` say.
    pub fn with_governor(mut self, settings: GovernorSettings) -> Self {
        self.governor = Governor::new(self.store.clone(), settings);
        self
    }

    /// Records jobs, fix attempts and their spending in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ActivityMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn task(&self, user: &str, task_id: &str) -> Result<Task, ActivityError> {
        match self.store.get_task(user, task_id).await {
            Ok(task) => Ok(task),
            Err(StoreError::NotFound) => Err(permanent(
                "TaskNotFound",
                format!("no task {task_id} for this user"),
            )),
            Err(error) => Err(store_error(error)),
        }
    }
}

/// A task's identity in every activity input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskRef {
    pub user: String,
    pub task_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordInput {
    pub task: TaskRef,
    pub projection: TaskProjection,
    #[serde(default)]
    pub raise: Option<NewInboxItem>,
    /// A line for the user's thread, written with the status in one transaction (behaviour
    /// level 2): keyed, so a retried record adds it once.
    #[serde(default)]
    pub note: Option<NoteLine>,
}

/// The repository as the task uses it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoInfo {
    pub default_branch: String,
    pub clone_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssueInfo {
    pub number: u64,
    pub url: String,
}

/// Which issue body to write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IssueBodyInput {
    pub task: TaskRef,
    pub issue: u64,
    /// Shown in the body's status line.
    pub status: String,
    #[serde(default)]
    pub answers: Vec<Answer>,
    /// Include the stored plan.
    #[serde(default)]
    pub with_plan: bool,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default)]
    pub close: bool,
}

/// A comment to write, rendered by the activity from what the store holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommentBody {
    Text {
        text: String,
    },
    Questions {
        questions: Vec<TaskQuestion>,
    },
    Plan {
        version: u32,
    },
    Summary {
        ledger: Vec<LedgerEntry>,
        summary: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommentInput {
    pub task: TaskRef,
    /// Issue or PR number.
    pub number: u64,
    /// Unique per task and occasion: a retry updates the same comment.
    pub key: String,
    pub body: CommentBody,
}

/// `github.update_issue_and_comment`'s input: the issue body to write, then the comment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IssueAndCommentInput {
    pub issue: IssueBodyInput,
    pub comment: CommentInput,
}

/// `github.start`'s input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartInput {
    pub task: TaskRef,
    /// Find or open the task's issue too (not for a task that skips planning).
    pub open_issue: bool,
}

/// What `github.start` found or made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    pub repo: RepoInfo,
    pub issue: Option<IssueInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommentInfo {
    pub id: u64,
    pub created_at: String,
}

/// What the workflow waits for on GitHub while a human decides.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HumanWait {
    Answers { questions: Vec<TaskQuestion> },
    PlanReview { plan_comment: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PollHumanInput {
    pub task: TaskRef,
    pub issue: u64,
    pub wait: HumanWait,
    /// Only comments after this time count (RFC 3339).
    pub since: String,
    /// The comment that asked (questions or plan). GitHub's times have whole seconds, so a
    /// reply within the same second as it counts if its id is larger (ids only grow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_comment: Option<u64>,
}

/// A decision a human wrote on GitHub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GitHubReply {
    Answers {
        answers: Vec<Answer>,
        author: String,
    },
    Approve {
        author: String,
    },
    Revise {
        text: String,
        author: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PullInput {
    pub task: TaskRef,
    pub branch: String,
    pub base: String,
    #[serde(default)]
    pub issue: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PullInfo {
    pub number: u64,
    pub url: String,
    pub node_id: String,
    pub head_sha: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckInput {
    pub task: TaskRef,
    pub pr: u64,
    /// Where to store the failure logs if CI failed.
    #[serde(default)]
    pub logs_key: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CiVerdict {
    Pending,
    Passed,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CiReport {
    pub verdict: CiVerdict,
    pub head_sha: String,
    /// Names of the failed checks.
    #[serde(default)]
    pub failed: Vec<String>,
    /// The PR was merged or closed meanwhile.
    #[serde(default)]
    pub pr_state: PrState,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PrState {
    #[default]
    Open,
    Merged,
    Closed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadyInput {
    pub task: TaskRef,
    pub pr: u64,
    pub node_id: String,
}

/// `github.mark_ready_and_comment`'s input: the PR to mark ready, then the comment on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadyAndCommentInput {
    pub ready: ReadyInput,
    pub comment: CommentInput,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReviewPollInput {
    pub task: TaskRef,
    pub pr: u64,
    /// Only feedback after this time counts (RFC 3339).
    pub since: String,
    /// Where to store feedback found.
    pub feedback_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReviewPoll {
    pub pr_state: PrState,
    /// Feedback was found and stored under the input's key.
    pub feedback: bool,
    /// Who gave it.
    #[serde(default)]
    pub reviewers: Vec<String>,
    /// The newest feedback's time: the next poll's `since`.
    pub since: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CloseInput {
    pub task: TaskRef,
    #[serde(default)]
    pub issue: Option<u64>,
    #[serde(default)]
    pub pr: Option<u64>,
    pub comment: String,
}

/// One job to run for a task. Long texts are referenced by key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobInput {
    pub task: TaskRef,
    /// Deterministic job name.
    pub name: String,
    pub mode: Mode,
    pub repo: RepoInfo,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub issue: Option<u64>,
    #[serde(default)]
    pub pr: Option<u64>,
    #[serde(default)]
    pub answers: Vec<Answer>,
    /// `plan`: what to change in the stored plan.
    #[serde(default)]
    pub revision: Option<String>,
    /// Artifact holding CI failure logs (`fix`) or review feedback (`feedback`).
    #[serde(default)]
    pub context_key: Option<String>,
    pub timeout_ms: u64,
}

/// A job's result, small enough for history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobOutcome {
    /// The plan is in the store; `questions` (if any) must be answered first.
    Plan {
        questions: Vec<TaskQuestion>,
    },
    Pushed {
        commit: String,
        changed: bool,
    },
    Failed {
        error: String,
        retryable: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobOutput {
    pub outcome: JobOutcome,
    /// First lines of the agent's summary.
    pub summary: String,
    /// What the job spent, for the task's budget (absent in results of older workers).
    #[serde(default)]
    pub spent: Option<JobSpent>,
}

/// Tokens (input, output and cache together) and dollars one job spent.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct JobSpent {
    pub tokens: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopJobInput {
    pub task: TaskRef,
    pub name: String,
}

/// A task event the main thread says in the chat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskNote {
    pub task_id: String,
    /// Unique per occasion: the main thread says it once.
    pub id: String,
    pub text: String,
}

#[activities]
impl TaskActivities {
    /// The workflow's settings.
    #[activity(name = "task.config")]
    pub async fn config(
        self: Arc<Self>,
        _ctx: ActivityContext,
        _input: (),
    ) -> Result<TaskConfig, ActivityError> {
        Ok(TaskConfig {
            behaviour: TASK_BEHAVIOUR,
            ..self.settings.config.clone()
        })
    }

    /// Updates the task's projection and inbox (a local activity).
    #[activity(name = "task.record")]
    pub async fn record(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RecordInput,
    ) -> Result<(), ActivityError> {
        self.store
            .record_task_with_note(
                &input.task.user,
                &input.task.task_id,
                &input.projection,
                input.raise.as_ref(),
                input
                    .note
                    .as_ref()
                    .map(|note| (note.key.as_str(), note.text.as_str())),
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Checks the repository exists and can be pushed to; returns how to clone it.
    #[activity(name = "github.prepare")]
    pub async fn prepare(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: TaskRef,
    ) -> Result<RepoInfo, ActivityError> {
        let task = self.task(&input.user, &input.task_id).await?;
        self.prepare_repo(&task).await
    }

    /// `github.prepare`, then (unless the task skips planning) `github.ensure_issue`: one
    /// activity, two fewer workflow tasks. Both halves are idempotent, so a retry redoes
    /// whatever the failed attempt did not finish.
    #[activity(name = "github.start")]
    pub async fn start(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: StartInput,
    ) -> Result<Started, ActivityError> {
        let task = self.task(&input.task.user, &input.task.task_id).await?;
        let repo = self.prepare_repo(&task).await?;
        let issue = if input.open_issue {
            let issue = self
                .open_issue(&task)
                .await
                .map_err(|e| github_error_in("opening the issue", e))?;
            Some(issue)
        } else {
            None
        };
        Ok(Started { repo, issue })
    }

    /// Finds the task's issue by its marker, or opens it.
    #[activity(name = "github.ensure_issue")]
    pub async fn ensure_issue(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: TaskRef,
    ) -> Result<IssueInfo, ActivityError> {
        let task = self.task(&input.user, &input.task_id).await?;
        self.open_issue(&task).await.map_err(github_error)
    }

    /// Rewrites the issue body (request, requirements, plan, status), labels and state.
    #[activity(name = "github.update_issue")]
    pub async fn update_issue(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: IssueBodyInput,
    ) -> Result<(), ActivityError> {
        let task = self.task(&input.task.user, &input.task.task_id).await?;
        self.write_issue(&task, &input).await.map_err(github_error)
    }

    /// Writes a comment once per key (a retry updates it).
    #[activity(name = "github.comment")]
    pub async fn comment(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: CommentInput,
    ) -> Result<CommentInfo, ActivityError> {
        let task = self.task(&input.task.user, &input.task.task_id).await?;
        self.write_comment(&task, &input)
            .await
            .map_err(github_error)
    }

    /// `github.update_issue`, then `github.comment` on it: one activity, two fewer workflow
    /// tasks. A retry rewrites the same body and finds the comment by its key.
    #[activity(name = "github.update_issue_and_comment")]
    pub async fn update_issue_and_comment(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: IssueAndCommentInput,
    ) -> Result<CommentInfo, ActivityError> {
        let task = self
            .task(&input.issue.task.user, &input.issue.task.task_id)
            .await?;
        self.write_issue(&task, &input.issue)
            .await
            .map_err(|e| github_error_in("updating the issue", e))?;
        self.write_comment(&task, &input.comment)
            .await
            .map_err(|e| github_error_in("commenting", e))
    }

    /// Marks the draft PR ready for review (GraphQL `markPullRequestReadyForReview`).
    #[activity(name = "github.mark_ready")]
    pub async fn mark_ready(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: ReadyInput,
    ) -> Result<(), ActivityError> {
        self.github
            .mark_ready_for_review(&input.node_id)
            .await
            .map_err(github_error)
    }

    /// `github.mark_ready`, then the summary `github.comment` on the PR: one activity, two
    /// fewer workflow tasks. Marking a PR that is ready already succeeds, and the comment is
    /// found again by its key, so a retry is safe.
    #[activity(name = "github.mark_ready_and_comment")]
    pub async fn mark_ready_and_comment(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: ReadyAndCommentInput,
    ) -> Result<CommentInfo, ActivityError> {
        self.github
            .mark_ready_for_review(&input.ready.node_id)
            .await
            .map_err(|e| github_error_in("marking the PR ready", e))?;
        let task = self
            .task(&input.comment.task.user, &input.comment.task.task_id)
            .await?;
        self.write_comment(&task, &input.comment)
            .await
            .map_err(|e| github_error_in("commenting", e))
    }
    /// Reads replies on the issue from people who may write to the repository: answers to
    /// the questions, or an approval (comment or reaction) or change request for the plan.
    #[activity(name = "github.poll_human")]
    pub async fn poll_human(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: PollHumanInput,
    ) -> Result<Option<GitHubReply>, ActivityError> {
        let task = self.task(&input.task.user, &input.task.task_id).await?;
        let since = parse_time(&input.since);
        let mut comments = self
            .github
            .comments_since(&task.repo, input.issue, since)
            .await
            .map_err(github_error)?;
        comments.retain(|c| {
            let later = since.is_none_or(|s| {
                c.created_at > s
                    || (c.created_at == s && input.asked_comment.is_some_and(|asked| c.id > asked))
            });
            later && !task_text::is_own_comment(&c.body)
        });
        // Newest first: the latest word counts.
        comments.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        if let HumanWait::PlanReview { plan_comment } = &input.wait {
            let reactions = self
                .github
                .reactions(&task.repo, *plan_comment)
                .await
                .map_err(github_error)?;
            for reaction in reactions {
                if task_text::is_approving_reaction(&reaction.content)
                    && self.can_write(&task.repo, &reaction.author).await?
                {
                    return Ok(Some(GitHubReply::Approve {
                        author: reaction.author,
                    }));
                }
            }
        }
        for comment in comments {
            let reply = match &input.wait {
                HumanWait::Answers { questions } => {
                    let found = task_text::parse_answers(&comment.body, questions);
                    if found.is_empty() {
                        continue;
                    }
                    GitHubReply::Answers {
                        answers: found
                            .into_iter()
                            .map(|(question_id, answer)| Answer {
                                question: questions
                                    .iter()
                                    .find(|q| q.id == question_id)
                                    .map(|q| q.question.clone())
                                    .unwrap_or_default(),
                                question_id,
                                answer,
                            })
                            .collect(),
                        author: comment.author.clone(),
                    }
                }
                HumanWait::PlanReview { .. } => match task_text::parse_plan_reply(&comment.body) {
                    Some(PlanReply::Approve) => GitHubReply::Approve {
                        author: comment.author.clone(),
                    },
                    Some(PlanReply::Revise(text)) => GitHubReply::Revise {
                        text,
                        author: comment.author.clone(),
                    },
                    None => continue,
                },
            };
            // Anyone may comment on a public repository; only collaborators decide.
            if self.can_write(&task.repo, &comment.author).await? {
                return Ok(Some(reply));
            }
            tracing::info!(author = %comment.author, task = %task.id,
                "ignoring a reply from a user without write access");
        }
        Ok(None)
    }

    /// Finds the task's PR by branch, or opens it as a draft that closes the issue.
    #[activity(name = "github.ensure_pull")]
    pub async fn ensure_pull(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: PullInput,
    ) -> Result<PullInfo, ActivityError> {
        let task = self.task(&input.task.user, &input.task.task_id).await?;
        let mut body = String::new();
        if let Some(issue) = input.issue {
            body.push_str(&format!("Closes #{issue}\n\n"));
        }
        body.push_str(&task.description);
        body.push_str(&format!(
            "\n\n---\n_Opened by mainloop as a draft; it is marked ready for review once CI \
             passes._\n{}",
            task_text::comment_marker(&task.id, "pull")
        ));
        let pull = self
            .github
            .find_or_create_pull(
                &task.repo,
                &input.branch,
                &input.base,
                &task_text::issue_title(&task.title),
                &body,
                true,
            )
            .await
            .map_err(github_error)?;
        Ok(PullInfo {
            number: pull.number,
            url: pull.url,
            node_id: pull.node_id,
            head_sha: pull.head_sha,
        })
    }

    /// CI's verdict on the PR's head: check runs and commit statuses combined. On failure the
    /// failed checks' logs are stored under `logs_key`.
    #[activity(name = "github.check_status")]
    pub async fn check_status(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: CheckInput,
    ) -> Result<CiReport, ActivityError> {
        let task = self.task(&input.task.user, &input.task.task_id).await?;
        let pull = self
            .github
            .pull(&task.repo, input.pr)
            .await
            .map_err(github_error)?;
        let pr_state = pr_state(&pull);
        let status = self
            .github
            .ci_status(&task.repo, &pull.head_sha)
            .await
            .map_err(github_error)?;
        let verdict = match status.state {
            CiState::Pending => CiVerdict::Pending,
            CiState::Success => CiVerdict::Passed,
            CiState::Failure => CiVerdict::Failed,
        };
        let failed: Vec<String> = status
            .checks
            .iter()
            .filter(|c| c.is_failure())
            .map(|c| c.name.clone())
            .collect();
        if verdict == CiVerdict::Failed
            && let Some(key) = &input.logs_key
        {
            let logs = self
                .github
                .failure_logs(&task.repo, &status, self.settings.failure_log_bytes)
                .await
                .map_err(github_error)?;
            self.store
                .put_artifact(&task.id, key, &logs)
                .await
                .map_err(store_error)?;
        }
        Ok(CiReport {
            verdict,
            head_sha: pull.head_sha,
            failed,
            pr_state,
        })
    }

    /// Looks at a PR under review: merged, closed, or new feedback from collaborators (review
    /// comments, "changes requested" reviews, comments that mention mainloop). Feedback found
    /// is stored and acknowledged with 👀.
    #[activity(name = "github.poll_review")]
    pub async fn poll_review(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: ReviewPollInput,
    ) -> Result<ReviewPoll, ActivityError> {
        let task = self.task(&input.task.user, &input.task.task_id).await?;
        let repo = task.repo.as_str();
        let pull = self
            .github
            .pull(repo, input.pr)
            .await
            .map_err(github_error)?;
        let since = parse_time(&input.since);
        let state = pr_state(&pull);
        if state != PrState::Open {
            return Ok(ReviewPoll {
                pr_state: state,
                feedback: false,
                reviewers: Vec::new(),
                since: input.since,
            });
        }
        let newer = |at: &DateTime<Utc>| since.is_none_or(|s| *at > s);
        let mut parts: Vec<(DateTime<Utc>, String, String)> = Vec::new();
        let mut acknowledge: Vec<(CommentKind, u64)> = Vec::new();
        for review in self
            .github
            .reviews(repo, input.pr)
            .await
            .map_err(github_error)?
        {
            let Some(at) = review.submitted_at.filter(|at| newer(at)) else {
                continue;
            };
            let mentions = review.body.to_lowercase().contains(&self.settings.mention);
            if (review.state == "CHANGES_REQUESTED" || mentions)
                && self.can_write(repo, &review.author).await?
            {
                parts.push((
                    at,
                    review.author.clone(),
                    format!(
                        "## Review from @{} ({})\n{}",
                        review.author,
                        review.state.to_lowercase().replace('_', " "),
                        review.body
                    ),
                ));
            }
        }
        for comment in self
            .github
            .review_comments(repo, input.pr)
            .await
            .map_err(github_error)?
        {
            if newer(&comment.created_at)
                && !task_text::is_own_comment(&comment.body)
                && self.can_write(repo, &comment.author).await?
            {
                let location = match (&comment.path, comment.line) {
                    (Some(path), Some(line)) => format!(" on `{path}` line {line}"),
                    (Some(path), None) => format!(" on `{path}`"),
                    _ => String::new(),
                };
                parts.push((
                    comment.created_at,
                    comment.author.clone(),
                    format!(
                        "## Code comment from @{}{location}\n{}",
                        comment.author, comment.body
                    ),
                ));
                acknowledge.push((CommentKind::Review, comment.id));
            }
        }
        for comment in self
            .github
            .comments_since(repo, input.pr, since)
            .await
            .map_err(github_error)?
        {
            let lower = comment.body.to_lowercase();
            let revise = lower.trim_start().starts_with("/revise");
            if newer(&comment.created_at)
                && !task_text::is_own_comment(&comment.body)
                && (lower.contains(&self.settings.mention) || revise)
                && self.can_write(repo, &comment.author).await?
            {
                parts.push((
                    comment.created_at,
                    comment.author.clone(),
                    format!("## Comment from @{}\n{}", comment.author, comment.body),
                ));
                acknowledge.push((CommentKind::Issue, comment.id));
            }
        }
        if parts.is_empty() {
            return Ok(ReviewPoll {
                pr_state: state,
                feedback: false,
                reviewers: Vec::new(),
                since: input.since,
            });
        }
        parts.sort_by_key(|p| p.0);
        let newest = parts
            .last()
            .map(|p| p.0.to_rfc3339())
            .unwrap_or(input.since);
        let mut reviewers: Vec<String> = parts.iter().map(|p| p.1.clone()).collect();
        reviewers.dedup();
        let feedback = parts
            .into_iter()
            .map(|p| p.2)
            .collect::<Vec<_>>()
            .join("\n\n---\n\n");
        self.store
            .put_artifact(&task.id, &input.feedback_key, &feedback)
            .await
            .map_err(store_error)?;
        for (kind, id) in acknowledge {
            self.github
                .add_reaction(repo, kind, id, "eyes")
                .await
                .map_err(github_error)?;
        }
        Ok(ReviewPoll {
            pr_state: state,
            feedback: true,
            reviewers,
            since: newest,
        })
    }

    /// Comments on and closes the task's issue and PR (cancellation).
    #[activity(name = "github.close")]
    pub async fn close(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: CloseInput,
    ) -> Result<(), ActivityError> {
        let task = self.task(&input.task.user, &input.task.task_id).await?;
        for (number, is_pr) in [(input.issue, false), (input.pr, true)] {
            let Some(number) = number else { continue };
            let marker = task_text::comment_marker(&task.id, &format!("closed-{number}"));
            self.github
                .upsert_comment(
                    &task.repo,
                    number,
                    &marker,
                    &format!("{}\n{marker}", input.comment),
                )
                .await
                .map_err(github_error)?;
            if is_pr {
                self.github
                    .close_pull(&task.repo, number)
                    .await
                    .map_err(github_error)?;
            } else {
                self.github
                    .close_issue(&task.repo, number)
                    .await
                    .map_err(github_error)?;
            }
        }
        Ok(())
    }

    /// Runs one job to its end: waits for a free slot, starts (or re-attaches to) the job,
    /// forwards its output to the task's log, heartbeats, and records its result and cost.
    /// Cancelling the activity kills the job.
    #[activity(name = "jobs.run")]
    pub async fn run_job(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: JobInput,
    ) -> Result<JobOutput, ActivityError> {
        let user = input.task.user.clone();
        let task = self.task(&user, &input.task.task_id).await?;
        let spec = self.spec(&task, &input).await?;
        let heartbeat_every =
            Duration::from_millis(self.settings.config.job_heartbeat_ms.max(10) / 3);
        let _heartbeat = Heartbeat::start(ctx.clone(), heartbeat_every);
        // A job would only meet the same 429: it starts once the limit has reset, without
        // holding a slot meanwhile. The wait is a line of the task's log.
        self.governor
            .wait(&ctx, MODEL_SCOPE, |limit| {
                let line = (
                    // One line per block: a retried attempt waiting for the same one adds none.
                    -limit.until.timestamp_millis(),
                    "mainloop".to_string(),
                    format!(
                        "Waiting for the model's rate limit to reset: the job starts at {} UTC \
                         ({})",
                        limit.until.format("%H:%M:%S"),
                        limit.reason
                    ),
                );
                let (store, user, task_id, job) = (
                    self.store.clone(),
                    user.clone(),
                    task.id.clone(),
                    input.name.clone(),
                );
                async move {
                    store
                        .append_task_logs(&user, &task_id, &job, &[line])
                        .await
                        .map(drop)
                        .map_err(store_error)
                }
            })
            .await?;
        // Tasks only hold a slot while a job runs, never while they wait for a person.
        let slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot
                .map_err(|_| retryable("the worker is shutting down", None))?,
            _ = ctx.cancelled() => {
                return Err(ActivityError::cancelled());
            }
        };
        self.store
            .start_task_run(&user, &task.id, &input.name, input.mode.as_str())
            .await
            .map_err(store_error)?;
        // Timed from here, with a slot held: waiting for a slot is not part of the job.
        let mut timer: Option<JobTimer> = self
            .metrics
            .as_ref()
            .map(|metrics| metrics.job_started(input.mode.as_str()));
        let mut ended = |outcome| {
            if let Some(timer) = timer.as_mut() {
                timer.outcome(outcome);
            }
        };
        let request = JobRequest {
            name: input.name.clone(),
            task_id: task.id.clone(),
            spec,
            timeout: Duration::from_millis(input.timeout_ms.max(1)),
        };
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        let forwarder = tokio::spawn(forward_lines(
            self.store.clone(),
            user.clone(),
            task.id.clone(),
            input.name.clone(),
            lines_rx,
        ));
        let result = tokio::select! {
            result = self.runner.run(&request, lines_tx) => Some(result),
            _ = ctx.cancelled() => None,
        };
        drop(slot);
        let Some(result) = result else {
            ended(JobOutcomeLabel::Cancelled);
            forwarder.abort();
            // The job goes on. The SDK cancels this attempt both when the workflow cancels the
            // job and when Temporal gave up on the attempt (a heartbeat it missed or, after a
            // server restart, never persisted) and scheduled the next, and cannot tell which.
            // The next attempt re-attaches to the job by its name; a workflow's cancel stops it
            // and closes its run in `jobs.cancel`. Stopping it here made its agent write a
            // retryable failure, which the next attempt read, and the task ran it again.
            tracing::info!(job = %input.name, "job attempt cancelled; the job itself goes on");
            return Err(ActivityError::cancelled());
        };
        // The runner has dropped its sender: the forwarder drains what is left and ends.
        match forwarder.await {
            Ok(Err(error)) => return Err(store_error(error)),
            Ok(Ok(())) => {}
            Err(error) => tracing::warn!(%error, "log forwarder stopped"),
        }
        let result = match result {
            Ok(result) => result,
            Err(JobError::Retryable(message)) => return Err(retryable(message, None)),
            Err(JobError::Permanent(message)) => {
                ended(JobOutcomeLabel::Failed);
                return Err(permanent(failure_type::JOB_REJECTED, message));
            }
        };
        let cost = Cost {
            input_tokens: i64::try_from(result.usage.input_tokens).unwrap_or(i64::MAX),
            output_tokens: i64::try_from(result.usage.output_tokens).unwrap_or(i64::MAX),
            cache_tokens: i64::try_from(
                result.usage.cache_creation_input_tokens + result.usage.cache_read_input_tokens,
            )
            .unwrap_or(i64::MAX),
            cost_usd: result.usage.cost_usd,
        };
        if let Outcome::Failed {
            error,
            retryable: true,
        } = &result.outcome
            && says_rate_limited(error)
        {
            // Claude Code gave up retrying the 429 itself: the next job (of this task or any
            // other, on any worker) waits for the limit to reset.
            self.governor.rate_limited(MODEL_SCOPE, None, error).await?;
        }
        let succeeded = !matches!(result.outcome, Outcome::Failed { .. });
        ended(if succeeded {
            JobOutcomeLabel::Succeeded
        } else {
            JobOutcomeLabel::Failed
        });
        if let Some(metrics) = &self.metrics {
            metrics.spent(
                Source::Job,
                Spent {
                    input_tokens: result.usage.input_tokens,
                    output_tokens: result.usage.output_tokens,
                    cache_tokens: result.usage.cache_creation_input_tokens
                        + result.usage.cache_read_input_tokens,
                    cost_usd: Some(result.usage.cost_usd),
                },
            );
        }
        let outcome = match result.outcome {
            Outcome::Plan { plan, questions } => {
                self.store
                    .set_task_plan(&user, &task.id, &plan)
                    .await
                    .map_err(store_error)?;
                JobOutcome::Plan {
                    questions: questions
                        .into_iter()
                        .map(|q| TaskQuestion {
                            id: q.id,
                            header: q.header,
                            question: q.question,
                            options: q
                                .options
                                .into_iter()
                                .map(|o| TaskQuestionOption {
                                    label: o.label,
                                    description: o.description,
                                })
                                .collect(),
                            multi_select: q.multi_select,
                        })
                        .collect(),
                }
            }
            Outcome::Pushed {
                commit, changed, ..
            } => JobOutcome::Pushed { commit, changed },
            Outcome::Failed { error, retryable } => JobOutcome::Failed { error, retryable },
        };
        self.store
            .finish_task_run(
                &user,
                &task.id,
                &input.name,
                succeeded,
                &result.summary,
                cost,
            )
            .await
            .map_err(store_error)?;
        Ok(JobOutput {
            outcome,
            summary: result.summary.chars().take(2_000).collect(),
            spent: Some(JobSpent {
                tokens: cost
                    .input_tokens
                    .saturating_add(cost.output_tokens)
                    .saturating_add(cost.cache_tokens),
                cost_usd: cost.cost_usd,
            }),
        })
    }

    /// Stops a job (idempotent).
    #[activity(name = "jobs.cancel")]
    pub async fn cancel_job(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: StopJobInput,
    ) -> Result<(), ActivityError> {
        self.runner
            .cancel(&input.task.task_id, &input.name)
            .await
            .map_err(job_error)?;
        // The job's own activity cannot say so: it ends as cancelled, and an attempt that is
        // cancelled for a timeout leaves the run open for the next attempt.
        self.store
            .finish_task_run(
                &input.task.user,
                &input.task.task_id,
                &input.name,
                false,
                "cancelled",
                Cost::default(),
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Removes what the task's jobs left behind (workspaces, the namespace).
    #[activity(name = "jobs.cleanup")]
    pub async fn cleanup(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: TaskRef,
    ) -> Result<(), ActivityError> {
        self.runner.cleanup(&input.task_id).await.map_err(job_error)
    }
}

impl TaskActivities {
    /// Checks the repository exists and can be pushed to; returns how to clone it.
    async fn prepare_repo(&self, task: &Task) -> Result<RepoInfo, ActivityError> {
        let access = self
            .github
            .repo_access(&task.repo)
            .await
            .map_err(|e| match e {
                GitHubError::NotFound => permanent(
                    failure_type::REPO_UNUSABLE,
                    format!(
                        "the repository {} does not exist or is not visible",
                        task.repo
                    ),
                ),
                other => github_error(other),
            })?;
        if !access.can_push {
            return Err(permanent(
                failure_type::REPO_UNUSABLE,
                format!("the GitHub token cannot push to {}", task.repo),
            ));
        }
        Ok(RepoInfo {
            default_branch: access.default_branch,
            clone_url: access.clone_url,
        })
    }

    /// Finds the task's issue by its marker, or opens it.
    async fn open_issue(&self, task: &Task) -> Result<IssueInfo, GitHubError> {
        let body = task_text::issue_body(&task.id, &task.description, &[], None, "Planning");
        let issue = self
            .github
            .find_or_create_issue(
                &task.repo,
                &task_text::issue_marker(&task.id),
                &task_text::issue_title(&task.title),
                &body,
                &["mainloop".to_string(), "planning".to_string()],
                Some(task.created_at),
            )
            .await?;
        Ok(IssueInfo {
            number: issue.number,
            url: issue.url,
        })
    }

    /// Rewrites the issue body (request, requirements, plan, status), labels and state.
    async fn write_issue(&self, task: &Task, input: &IssueBodyInput) -> Result<(), GitHubError> {
        let answers: Vec<(String, String)> = input
            .answers
            .iter()
            .map(|a| (a.question.clone(), a.answer.clone()))
            .collect();
        let plan = if input.with_plan {
            task.plan.as_deref()
        } else {
            None
        };
        let body =
            task_text::issue_body(&task.id, &task.description, &answers, plan, &input.status);
        self.github
            .update_issue(
                &task.repo,
                input.issue,
                IssueUpdate {
                    body: Some(body),
                    labels: input.labels.clone(),
                    state: input.close.then(|| "closed".to_string()),
                    ..IssueUpdate::default()
                },
            )
            .await?;
        Ok(())
    }

    /// Writes a comment once per key (a retry updates it).
    async fn write_comment(
        &self,
        task: &Task,
        input: &CommentInput,
    ) -> Result<CommentInfo, GitHubError> {
        let app_url = self.settings.app_url.as_deref();
        let text = match &input.body {
            CommentBody::Text { text } => text.clone(),
            CommentBody::Questions { questions } => {
                task_text::questions_comment(questions, app_url)
            }
            CommentBody::Plan { version } => task_text::plan_comment(
                task.plan.as_deref().unwrap_or("(the plan is empty)"),
                *version,
                app_url,
            ),
            CommentBody::Summary { ledger, summary } => task_text::summary_comment(
                &task.title,
                summary,
                ledger,
                task.cost.cost_usd,
                task.cost.input_tokens + task.cost.output_tokens + task.cost.cache_tokens,
            ),
        };
        let marker = task_text::comment_marker(&task.id, &input.key);
        let comment = self
            .github
            .upsert_comment(
                &task.repo,
                input.number,
                &marker,
                &format!("{text}\n{marker}"),
            )
            .await?;
        Ok(CommentInfo {
            id: comment.id,
            created_at: comment.created_at.to_rfc3339(),
        })
    }

    async fn can_write(&self, repo: &str, login: &str) -> Result<bool, ActivityError> {
        Ok(self
            .github
            .permission(repo, login)
            .await
            .map_err(github_error)?
            .can_write())
    }

    /// The agent's spec: the task and what this step needs from the store.
    async fn spec(&self, task: &Task, input: &JobInput) -> Result<AgentSpec, ActivityError> {
        let context = match &input.context_key {
            Some(key) => self
                .store
                .artifact(&task.id, key)
                .await
                .map_err(store_error)?,
            None => None,
        };
        let plan = match input.mode {
            // A first plan starts from nothing; a revision starts from the previous plan.
            Mode::Plan if input.revision.is_none() => None,
            Mode::Plan => task.plan.clone(),
            // A task that skipped planning is implemented from its description.
            _ => Some(task.plan.clone().unwrap_or_else(|| {
                format!(
                    "No separate plan was written: the user asked to skip planning. Implement \
                     the task as described:\n\n{}",
                    task.description
                )
            })),
        };
        Ok(AgentSpec {
            task_id: task.id.clone(),
            mode: input.mode,
            repo: task.repo.clone(),
            clone_url: input.repo.clone_url.clone(),
            base_branch: input.repo.default_branch.clone(),
            branch: input.branch.clone(),
            title: task.title.clone(),
            description: task.description.clone(),
            issue_number: input.issue,
            pr_number: input.pr,
            plan,
            answers: input.answers.clone(),
            revision: input.revision.clone(),
            ci_failures: (input.mode == Mode::Fix).then(|| context.clone()).flatten(),
            review_feedback: (input.mode == Mode::Feedback).then_some(context).flatten(),
            model: task
                .model
                .clone()
                .unwrap_or_else(|| self.settings.worker_model.clone()),
            git_author_name: self.settings.git_author_name.clone(),
            git_author_email: self.settings.git_author_email.clone(),
        })
    }
}

fn pr_state(pull: &crate::github::Pull) -> PrState {
    if pull.merged {
        PrState::Merged
    } else if pull.state == PullState::Closed {
        PrState::Closed
    } else {
        PrState::Open
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Stores a job's output lines as they come, in small batches.
async fn forward_lines(
    store: Store,
    user: String,
    task_id: String,
    job: String,
    mut lines: mpsc::UnboundedReceiver<JobLine>,
) -> Result<(), StoreError> {
    let mut batch = Vec::new();
    while let Some(line) = lines.recv().await {
        batch.push(line);
        while let Ok(more) = lines.try_recv() {
            batch.push(more);
            if batch.len() >= 200 {
                break;
            }
        }
        let rows: Vec<(i64, String, String)> = batch
            .drain(..)
            .map(|line| {
                let source = match line.source {
                    LogSource::Agent => "agent",
                    LogSource::Claude => "claude",
                };
                (
                    i64::try_from(line.index).unwrap_or(i64::MAX),
                    source.to_string(),
                    line.text,
                )
            })
            .collect();
        store.append_task_logs(&user, &task_id, &job, &rows).await?;
    }
    Ok(())
}

fn github_error(error: GitHubError) -> ActivityError {
    github_failure(format!("GitHub: {error}"), &error)
}

/// A GitHub failure in one `step` of an activity that makes several calls, so the task's
/// error says which call failed.
fn github_error_in(step: &str, error: GitHubError) -> ActivityError {
    github_failure(format!("{step}: GitHub: {error}"), &error)
}

fn github_failure(message: String, error: &GitHubError) -> ActivityError {
    if error.is_retryable() {
        let delay = match error {
            GitHubError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        retryable(message, delay)
    } else {
        permanent(failure_type::GITHUB_REJECTED, message)
    }
}

fn job_error(error: JobError) -> ActivityError {
    match error {
        JobError::Retryable(message) => retryable(message, None),
        JobError::Permanent(message) => permanent(failure_type::JOB_REJECTED, message),
    }
}
