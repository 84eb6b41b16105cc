//! Worker tasks as the store sees them: the projection of each `task/{id}` workflow (kept
//! current by its local activities), the human input it receives, its jobs' logs, runs and
//! costs, the inbox items it raises, and the projects (repositories) tasks run on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::events::insert_events;
use crate::messages::insert_note;
use crate::model::{NewEvent, Proposal, ProposalStatus, event_kind};
use crate::outbox::insert_outbox;
use crate::proposals::{SIGNAL_PROPOSAL_DECISION, pending_proposal};
use crate::{Result, Store, StoreError, begin_write, db, now};

/// Where a task is in its life (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Planning,
    WaitingQuestions,
    WaitingPlanReview,
    Implementing,
    Ci,
    ReadyForReview,
    AddressingFeedback,
    Merged,
    Closed,
    Failed,
    Cancelled,
    /// Paused: a budget limit (tokens, cost, CI fix attempts) was reached; waits for the
    /// user to raise it or cancel.
    WaitingBudget,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 13] = [
        TaskStatus::Pending,
        TaskStatus::Planning,
        TaskStatus::WaitingQuestions,
        TaskStatus::WaitingPlanReview,
        TaskStatus::Implementing,
        TaskStatus::Ci,
        TaskStatus::ReadyForReview,
        TaskStatus::AddressingFeedback,
        TaskStatus::Merged,
        TaskStatus::Closed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::WaitingBudget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Planning => "planning",
            TaskStatus::WaitingQuestions => "waiting_questions",
            TaskStatus::WaitingPlanReview => "waiting_plan_review",
            TaskStatus::Implementing => "implementing",
            TaskStatus::Ci => "ci",
            TaskStatus::ReadyForReview => "ready_for_review",
            TaskStatus::AddressingFeedback => "addressing_feedback",
            TaskStatus::Merged => "merged",
            TaskStatus::Closed => "closed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::WaitingBudget => "waiting_budget",
        }
    }

    pub fn parse(text: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// No further change will happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Merged | TaskStatus::Closed | TaskStatus::Cancelled
        )
    }
}

/// A question a plan job asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskQuestion {
    pub id: String,
    pub header: String,
    pub question: String,
    #[serde(default)]
    pub options: Vec<TaskQuestionOption>,
    #[serde(default)]
    pub multi_select: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskQuestionOption {
    pub label: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// What one task may spend before it pauses and asks; `None`: no limit. Tokens count input,
/// output and cache tokens together, as `Cost` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskBudget {
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// CI fix jobs over the whole task.
    #[serde(default)]
    pub max_ci_attempts: Option<i64>,
}

/// Tokens and money a task or a turn consumed, as the model reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Cost {
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Cache reads and writes.
    pub cache_tokens: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub proposal_id: String,
    pub title: String,
    pub description: String,
    /// `owner/name`.
    pub repo: String,
    pub model: Option<String>,
    pub skip_planning: bool,
    pub status: TaskStatus,
    /// What happens now, in a few words.
    pub detail: String,
    pub error: Option<String>,
    /// The phase a retry resumes (only while `failed`).
    pub failed_phase: Option<String>,
    pub issue_number: Option<i64>,
    pub issue_url: Option<String>,
    pub branch: Option<String>,
    pub pr_number: Option<i64>,
    pub pr_url: Option<String>,
    /// The current plan (markdown).
    pub plan: Option<String>,
    /// Questions waiting for answers (only while `waiting_questions`).
    pub questions: Vec<TaskQuestion>,
    /// CI fix jobs run in the current CI phase.
    pub ci_fixes: i64,
    /// CI fix jobs run over the task since it started or its failed CI phase was retried
    /// (what `budget.max_ci_attempts` limits).
    pub ci_attempts: i64,
    pub cost: Cost,
    /// The task's limits, as its workflow enforces them.
    pub budget: TaskBudget,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// The part of a task the workflow owns; each record replaces it whole, so a repeated record
/// is harmless.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskProjection {
    pub status: Option<TaskStatus>,
    pub detail: String,
    pub error: Option<String>,
    pub failed_phase: Option<String>,
    pub issue_number: Option<i64>,
    pub issue_url: Option<String>,
    pub branch: Option<String>,
    pub pr_number: Option<i64>,
    pub pr_url: Option<String>,
    pub questions: Vec<TaskQuestion>,
    pub ci_fixes: i64,
    #[serde(default)]
    pub ci_attempts: i64,
    #[serde(default)]
    pub budget: TaskBudget,
}

/// What kind of inbox item: the first four need the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InboxKind {
    Questions,
    PlanReview,
    Failed,
    ReadyForReview,
    Done,
    /// A budget limit was reached: raise it or cancel the task.
    Budget,
}

impl InboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InboxKind::Questions => "questions",
            InboxKind::PlanReview => "plan_review",
            InboxKind::Failed => "failed",
            InboxKind::ReadyForReview => "ready_for_review",
            InboxKind::Done => "done",
            InboxKind::Budget => "budget",
        }
    }

    fn parse(text: &str) -> Option<InboxKind> {
        [
            InboxKind::Questions,
            InboxKind::PlanReview,
            InboxKind::Failed,
            InboxKind::ReadyForReview,
            InboxKind::Done,
            InboxKind::Budget,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InboxItem {
    pub id: String,
    pub task_id: Option<String>,
    pub kind: InboxKind,
    pub title: String,
    pub body: String,
    pub url: Option<String>,
    pub unread: bool,
    /// Handled: answered, approved, retried, or superseded by the task moving on.
    pub resolved: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// An inbox item to raise. Its id is deterministic (task and occasion), so raising it twice
/// keeps one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewInboxItem {
    pub id: String,
    pub kind: InboxKind,
    pub title: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub url: Option<String>,
    /// Raised already resolved: news, not a request (e.g. "merged").
    #[serde(default)]
    pub resolved: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    /// `owner/name`.
    pub repo: String,
    pub task_count: i64,
    pub last_used_at: DateTime<Utc>,
}

/// A line of a job's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskLogLine {
    pub job: String,
    pub line: i64,
    /// `agent` or `claude`.
    pub source: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// Changes the user may make to a proposal when confirming it.
#[derive(Debug, Clone, Default)]
pub struct ConfirmOverrides {
    pub repo: Option<String>,
    pub model: Option<String>,
    pub skip_planning: Option<bool>,
    /// Limits of this task instead of the worker's defaults (per limit).
    pub budget: TaskBudget,
}

/// Human input for a task, accepted by the API.
/// Input the user gave a task (as it was sent to the workflow), for showing it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskInputRecord {
    pub id: String,
    /// `answers`, `plan_review`, `retry` or `cancel`.
    pub kind: String,
    /// The signal's payload, e.g. `{"answers": [{"question_id", "answer"}]}` or
    /// `{"action", "text"}`.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewTaskInput {
    /// Unique; the workflow de-duplicates by it.
    pub id: String,
    /// The signal name: `answers`, `plan_review`, `retry` or `cancel`.
    pub kind: &'static str,
    /// The signal's payload, without the id (added here).
    pub payload: serde_json::Value,
}

/// A job's run, as its activity records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskRun {
    pub job: String,
    pub mode: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub summary: String,
    pub cost: Cost,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The workflow id of a task.
pub fn task_workflow_id(task_id: &str) -> String {
    format!("task/{task_id}")
}

/// A task as [`Store::record_task`] left it, and whether that changed anything but its
/// `updated_at`.
#[derive(sqlx::FromRow)]
struct RecordedTaskRow {
    #[sqlx(flatten)]
    task: TaskRow,
    changed: bool,
}

/// [`Store::record_task`]'s update on PostgreSQL, one statement: the row as it was (`b`, read
/// under the row's lock) gives the status when the projection has none, keeps the first
/// `completed_at`, clears the pending input when the status moves (the task acted on it, or
/// moved past it), and says whether anything changed.
static RECORD_TASK_PG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let columns = |alias: &str, with_updated_at: bool| {
        TASK_COLUMNS
            .split(',')
            .map(str::trim)
            .filter(|column| with_updated_at || *column != "updated_at")
            .map(|column| format!("{alias}.{column}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let terminal = TaskStatus::ALL
        .into_iter()
        .filter(|status| status.is_terminal())
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE tasks t SET status = COALESCE($1, b.status), detail = $2, error = $3, \
         failed_phase = $4, issue_number = $5, issue_url = $6, branch = $7, pr_number = $8, \
         pr_url = $9, questions = $10, ci_fixes = $11, updated_at = $12, \
         completed_at = CASE WHEN COALESCE($1, b.status) IN ({terminal}) \
           THEN COALESCE(b.completed_at, $12) END, \
         pending_input = CASE WHEN COALESCE($1, b.status) = b.status \
           THEN t.pending_input END, \
         ci_attempts = $15, max_tokens = $16, max_cost_usd = $17, max_ci_attempts = $18 \
         FROM (SELECT {TASK_COLUMNS} FROM tasks WHERE id = $13 AND user_id = $14 FOR UPDATE) b \
         WHERE t.id = b.id \
         RETURNING {}, ROW({}) IS DISTINCT FROM ROW({}) AS changed",
        columns("t", true),
        columns("b", false),
        columns("t", false),
    )
});

/// [`RECORD_TASK_PG`] for SQLite, whose `RETURNING` cannot name another table: the caller
/// reads the row first and passes the status, the first `completed_at` ($19) and whether the
/// status moved ($20); `changed` is worked out from the row read.
static RECORD_TASK_SQLITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE tasks SET status = $1, detail = $2, error = $3, failed_phase = $4, \
         issue_number = $5, issue_url = $6, branch = $7, pr_number = $8, pr_url = $9, \
         questions = $10, ci_fixes = $11, updated_at = $12, completed_at = $19, \
         pending_input = CASE WHEN $20 THEN NULL ELSE pending_input END, \
         ci_attempts = $15, max_tokens = $16, max_cost_usd = $17, max_ci_attempts = $18 \
         WHERE id = $13 AND user_id = $14 RETURNING {TASK_COLUMNS}, FALSE AS changed"
    )
});

/// Stores a task's input once per id; a row comes back only if it is new. Parameters: id,
/// task, user, kind, payload, time.
const INSERT_TASK_INPUT: &str = "INSERT INTO task_inputs \
     (id, task_id, user_id, kind, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (id) DO NOTHING RETURNING 1";

/// [`INSERT_TASK_INPUT`] on PostgreSQL, with what follows a new input in the same statement:
/// the task's pending input and the outbox item for `$7`, the task's workflow. Data-modifying
/// `WITH` parts always run to completion; each acts only if the input row was inserted.
static ADD_TASK_INPUT_PG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH input AS ({INSERT_TASK_INPUT}), \
         pending AS ( \
           UPDATE tasks SET pending_input = $4 WHERE id = $2 AND user_id = $3 \
           AND EXISTS (SELECT 1 FROM input)), \
         queued AS ( \
           INSERT INTO outbox (user_id, workflow_id, signal, payload, available_at, created_at) \
           SELECT $3, $7, $4, $5, $6, $6 FROM input) \
         SELECT 1 FROM input"
    )
});

/// A task read under its row lock, with the input it has not acted on yet.
#[derive(sqlx::FromRow)]
struct LockedTaskRow {
    #[sqlx(flatten)]
    task: TaskRow,
    pending_input: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: String,
    proposal_id: String,
    title: String,
    description: String,
    repo: String,
    model: Option<String>,
    skip_planning: bool,
    status: String,
    detail: String,
    error: Option<String>,
    failed_phase: Option<String>,
    issue_number: Option<i64>,
    issue_url: Option<String>,
    branch: Option<String>,
    pr_number: Option<i64>,
    pr_url: Option<String>,
    plan: Option<String>,
    questions: Option<String>,
    ci_fixes: i64,
    ci_attempts: i64,
    max_tokens: Option<i64>,
    max_cost_usd: Option<f64>,
    max_ci_attempts: Option<i64>,
    input_tokens: i64,
    output_tokens: i64,
    cache_tokens: i64,
    cost_usd: f64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

const TASK_COLUMNS: &str = "id, proposal_id, title, description, repo, model, skip_planning, \
     status, detail, error, failed_phase, issue_number, issue_url, branch, pr_number, pr_url, \
     plan, questions, ci_fixes, ci_attempts, max_tokens, max_cost_usd, max_ci_attempts, \
     input_tokens, output_tokens, cache_tokens, cost_usd, created_at, updated_at, completed_at";

impl TaskRow {
    fn into_task(self) -> Result<Task> {
        let status = TaskStatus::parse(&self.status)
            .ok_or_else(|| StoreError::Corrupt(format!("task status {:?}", self.status)))?;
        let questions = match self.questions.as_deref() {
            None | Some("") => Vec::new(),
            Some(text) => serde_json::from_str(text)
                .map_err(|e| StoreError::Corrupt(format!("task questions: {e}")))?,
        };
        Ok(Task {
            id: self.id,
            proposal_id: self.proposal_id,
            title: self.title,
            description: self.description,
            repo: self.repo,
            model: self.model,
            skip_planning: self.skip_planning,
            status,
            detail: self.detail,
            error: self.error,
            failed_phase: self.failed_phase,
            issue_number: self.issue_number,
            issue_url: self.issue_url,
            branch: self.branch,
            pr_number: self.pr_number,
            pr_url: self.pr_url,
            plan: self.plan,
            questions,
            ci_fixes: self.ci_fixes,
            ci_attempts: self.ci_attempts,
            budget: TaskBudget {
                max_tokens: self.max_tokens,
                max_cost_usd: self.max_cost_usd,
                max_ci_attempts: self.max_ci_attempts,
            },
            cost: Cost {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cache_tokens: self.cache_tokens,
                cost_usd: self.cost_usd,
            },
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct InboxRow {
    id: String,
    task_id: Option<String>,
    kind: String,
    title: String,
    body: String,
    url: Option<String>,
    unread: bool,
    resolved: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

const INBOX_COLUMNS: &str =
    "id, task_id, kind, title, body, url, unread, resolved, created_at, updated_at, resolved_at";

impl InboxRow {
    fn into_item(self) -> Result<InboxItem> {
        Ok(InboxItem {
            kind: InboxKind::parse(&self.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("inbox kind {:?}", self.kind)))?,
            id: self.id,
            task_id: self.task_id,
            title: self.title,
            body: self.body,
            url: self.url,
            unread: self.unread,
            resolved: self.resolved,
            created_at: self.created_at,
            updated_at: self.updated_at,
            resolved_at: self.resolved_at,
        })
    }
}

/// Loads a task inside an open transaction or from a pool.
macro_rules! select_task {
    ($executor:expr, $user:expr, $id:expr) => {{
        let row: Option<TaskRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2"
        )))
        .bind($id)
        .bind($user)
        .fetch_optional($executor)
        .await?;
        row.ok_or(StoreError::NotFound)?.into_task()?
    }};
}

/// Loads an inbox item inside an open transaction or from a pool.
macro_rules! select_inbox {
    ($executor:expr, $user:expr, $id:expr) => {{
        let row: Option<InboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {INBOX_COLUMNS} FROM inbox_items WHERE id = $1 AND user_id = $2"
        )))
        .bind($id)
        .bind($user)
        .fetch_optional($executor)
        .await?;
        row.ok_or(StoreError::NotFound)?.into_item()?
    }};
}

impl Store {
    /// Confirms a pending proposal: records the decision (with the user's changes), creates
    /// the task (its id is the proposal's), touches the project and queues the signal that
    /// makes the main thread start the task, all in one transaction.
    pub async fn confirm_proposal(
        &self,
        user: &str,
        id: &str,
        overrides: &ConfirmOverrides,
        workflow_id: &str,
    ) -> Result<(Proposal, Task)> {
        let result = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let at = now();
            let current = pending_proposal!(tx, pg, user, id);
            let proposal = Proposal {
                repo: overrides.repo.clone().unwrap_or(current.repo.clone()),
                model: overrides.model.clone().or(current.model.clone()),
                skip_planning: overrides.skip_planning.unwrap_or(current.skip_planning),
                status: ProposalStatus::Confirmed,
                decided_at: Some(at),
                ..current
            };
            sqlx::query(
                "UPDATE proposals SET status = 'confirmed', decided_at = $1, repo = $2, \
                 model = $3, skip_planning = $4 WHERE id = $5 AND user_id = $6",
            )
            .bind(at)
            .bind(&proposal.repo)
            .bind(&proposal.model)
            .bind(proposal.skip_planning)
            .bind(id)
            .bind(user)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO tasks (id, user_id, proposal_id, title, description, repo, model, \
                 skip_planning, status, detail, created_at, updated_at) \
                 VALUES ($1, $2, $1, $3, $4, $5, $6, $7, 'pending', 'starting', $8, $8)",
            )
            .bind(id)
            .bind(user)
            .bind(&proposal.title)
            .bind(&proposal.description)
            .bind(&proposal.repo)
            .bind(&proposal.model)
            .bind(proposal.skip_planning)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO projects (user_id, repo, task_count, last_used_at) \
                 VALUES ($1, $2, 1, $3) ON CONFLICT (user_id, repo) \
                 DO UPDATE SET task_count = projects.task_count + 1, last_used_at = $3",
            )
            .bind(user)
            .bind(&proposal.repo)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            let task = select_task!(&mut *tx, user, id);
            let mut decision = json!({
                "proposal_id": id,
                "decision": "confirmed",
                "title": proposal.title,
                "repo": proposal.repo,
                "skip_planning": proposal.skip_planning,
            });
            // Only when set: a worker that predates budgets refuses unknown fields.
            if overrides.budget != TaskBudget::default() {
                decision["budget"] = json!(overrides.budget);
            }
            insert_outbox!(
                tx,
                user,
                workflow_id,
                SIGNAL_PROPOSAL_DECISION,
                &decision.to_string(),
                at
            );
            insert_events!(
                tx,
                pg,
                user,
                &[
                    NewEvent::new(event_kind::PROPOSAL_UPDATED, &proposal),
                    NewEvent::new(event_kind::TASK_UPDATED, &task),
                ]
            );
            tx.commit().await?;
            (proposal, task)
        });
        self.wake_events();
        self.wake_outbox();
        Ok(result)
    }

    pub async fn get_task(&self, user: &str, id: &str) -> Result<Task> {
        Ok(db!(self, |pool, pg| select_task!(pool, user, id)))
    }

    /// The user's tasks, newest first; `status` filters.
    pub async fn list_tasks(
        &self,
        user: &str,
        status: Option<TaskStatus>,
        limit: i64,
    ) -> Result<Vec<Task>> {
        let rows: Vec<TaskRow> = db!(self, |pool, pg| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE user_id = $1 \
                 AND ($2 IS NULL OR status = $2) ORDER BY created_at DESC, id DESC LIMIT $3"
            )))
            .bind(user)
            .bind(status.map(|s| s.as_str()))
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(TaskRow::into_task).collect()
    }

    /// How many tasks, of every user, are in each status (every status, zero included), for
    /// the metrics. One pass over the table: cheap at the sizes a self-hosted install reaches.
    pub async fn count_tasks_by_status(&self) -> Result<Vec<(TaskStatus, i64)>> {
        let rows: Vec<(String, i64)> = db!(self, |pool, pg| {
            sqlx::query_as("SELECT status, COUNT(*) FROM tasks GROUP BY status")
                .fetch_all(pool)
                .await?
        });
        Ok(TaskStatus::ALL
            .into_iter()
            .map(|status| {
                let count = rows
                    .iter()
                    .filter(|(name, _)| name == status.as_str())
                    .map(|(_, count)| *count)
                    .sum();
                (status, count)
            })
            .collect())
    }

    /// Replaces the workflow-owned part of a task, resolves the task's open inbox items and
    /// raises `raise` (if any), announcing each change. Idempotent.
    pub async fn record_task(
        &self,
        user: &str,
        id: &str,
        projection: &TaskProjection,
        raise: Option<&NewInboxItem>,
    ) -> Result<Task> {
        self.record_task_with_note(user, id, projection, raise, None)
            .await
    }

    /// [`Store::record_task`], adding `note` (`(key, text)`, once per key, as
    /// [`Store::add_note`] does) to the user's thread in the same transaction: a task's news
    /// lands with the status it belongs to.
    pub async fn record_task_with_note(
        &self,
        user: &str,
        id: &str,
        projection: &TaskProjection,
        raise: Option<&NewInboxItem>,
        note: Option<(&str, &str)>,
    ) -> Result<Task> {
        let task = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let at = now();
            let questions = if projection.questions.is_empty() {
                None
            } else {
                Some(
                    serde_json::to_string(&projection.questions)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                )
            };
            // Each statement is a round trip inside the write transaction, and a task records
            // on every status: the rows changed come back with RETURNING instead of being read
            // again. On PostgreSQL the row as it was is read by the same statement, under its
            // lock; SQLite's RETURNING cannot name another table, so it reads the row first
            // (its round trips are calls within the process).
            let before = if pg {
                None
            } else {
                Some(select_task!(&mut *tx, user, id))
            };
            let status = match &before {
                Some(before) => Some(projection.status.unwrap_or(before.status)),
                None => projection.status,
            };
            let query = sqlx::query_as(sqlx::AssertSqlSafe(if pg {
                RECORD_TASK_PG.as_str()
            } else {
                RECORD_TASK_SQLITE.as_str()
            }))
            .bind(status.map(TaskStatus::as_str))
            .bind(&projection.detail)
            .bind(&projection.error)
            .bind(&projection.failed_phase)
            .bind(projection.issue_number)
            .bind(&projection.issue_url)
            .bind(&projection.branch)
            .bind(projection.pr_number)
            .bind(&projection.pr_url)
            .bind(&questions)
            .bind(projection.ci_fixes)
            .bind(at)
            .bind(id)
            .bind(user)
            .bind(projection.ci_attempts)
            .bind(projection.budget.max_tokens)
            .bind(projection.budget.max_cost_usd)
            .bind(projection.budget.max_ci_attempts);
            // SQLite's two more: the first `completed_at`, and whether the status moved (the
            // task acted on, or moved past, the input it was given).
            let query = match &before {
                None => query,
                Some(before) => query
                    .bind(
                        status
                            .is_some_and(TaskStatus::is_terminal)
                            .then(|| before.completed_at.unwrap_or(at)),
                    )
                    .bind(status != Some(before.status)),
            };
            let row: Option<RecordedTaskRow> = query.fetch_optional(&mut *tx).await?;
            let RecordedTaskRow { task, changed } = row.ok_or(StoreError::NotFound)?;
            let task = task.into_task()?;
            let changed = match &before {
                Some(before) => task_changed(before, &task),
                None => changed,
            };
            let mut events = Vec::new();
            if changed {
                events.push(NewEvent::new(event_kind::TASK_UPDATED, &task));
            }
            // Everything the task asked of the user before is settled by its moving on.
            let mut settled: Vec<InboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE inbox_items SET resolved = TRUE, unread = FALSE, resolved_at = $1, \
                 updated_at = $1 WHERE user_id = $2 AND task_id = $3 AND resolved = FALSE \
                 AND ($4 IS NULL OR id <> $4) RETURNING {INBOX_COLUMNS}"
            )))
            .bind(at)
            .bind(user)
            .bind(id)
            .bind(raise.map(|item| item.id.as_str()))
            .fetch_all(&mut *tx)
            .await?;
            // RETURNING promises no order; the events go out in the items' order, as before.
            settled.sort_by(|a, b| a.id.cmp(&b.id));
            for row in settled {
                events.push(NewEvent::new(event_kind::INBOX_UPDATED, &row.into_item()?));
            }
            if let Some(item) = raise {
                let inserted: Option<InboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO inbox_items (id, user_id, task_id, kind, title, body, url, \
                     unread, resolved, created_at, updated_at, resolved_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, TRUE, $8, $9, $9, $10) \
                     ON CONFLICT (id) DO NOTHING RETURNING {INBOX_COLUMNS}"
                )))
                .bind(&item.id)
                .bind(user)
                .bind(id)
                .bind(item.kind.as_str())
                .bind(&item.title)
                .bind(&item.body)
                .bind(&item.url)
                .bind(item.resolved)
                .bind(at)
                .bind(item.resolved.then_some(at))
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = inserted {
                    events.push(NewEvent::new(event_kind::INBOX_UPDATED, &row.into_item()?));
                }
            }
            if let Some((key, text)) = note {
                let (message, added) = insert_note!(tx, user, key, text);
                if added {
                    events.push(NewEvent::new(event_kind::MESSAGE_CREATED, &message));
                }
            }
            insert_events!(tx, pg, user, &events);
            tx.commit().await?;
            task
        });
        self.wake_events();
        Ok(task)
    }

    /// Stores the task's current plan (written by the plan job's activity).
    pub async fn set_task_plan(&self, user: &str, id: &str, plan: &str) -> Result<Task> {
        let task = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let done = sqlx::query(
                "UPDATE tasks SET plan = $1, updated_at = $2 WHERE id = $3 AND user_id = $4",
            )
            .bind(plan)
            .bind(now())
            .bind(id)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                return Err(StoreError::NotFound);
            }
            let task = select_task!(&mut *tx, user, id);
            insert_events!(
                tx,
                pg,
                user,
                &[NewEvent::new(event_kind::TASK_UPDATED, &task)]
            );
            tx.commit().await?;
            task
        });
        self.wake_events();
        Ok(task)
    }

    /// Accepts human input for a task if the task is in one of `allowed` states: stores it,
    /// queues its signal to `task/{id}` and announces it. The same input id twice is accepted
    /// once. A task in another state is a conflict that names the state, and so is a second
    /// input for the same wait (two answers to one set of questions): the task acts on one
    /// input per status, so a later one would be accepted only to be dropped as stale. A
    /// cancel is taken on top of any other pending input, once.
    pub async fn add_task_input(
        &self,
        user: &str,
        task_id: &str,
        input: &NewTaskInput,
        allowed: &[TaskStatus],
    ) -> Result<Task> {
        let task = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let at = now();
            // Racing inputs for one task queue on its row lock until the first commits, and
            // then read what it left pending (SQLite's write transaction already serialises
            // them). Each statement is a round trip on the way to the answer's `202`, so the
            // task comes with the lock.
            let row: Option<LockedTaskRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS}, pending_input FROM tasks WHERE id = $1 AND user_id = $2{}",
                if pg { " FOR UPDATE" } else { "" }
            )))
            .bind(task_id)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
            let LockedTaskRow {
                task,
                pending_input,
            } = row.ok_or(StoreError::NotFound)?;
            let task = task.into_task()?;
            if !allowed.contains(&task.status) {
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "the task is {}",
                    task.status.as_str().replace('_', " ")
                )));
            }
            if let Some(pending) = pending_input {
                // This very input again (accepted once), or a second one for the same wait.
                // Read after the lock, so a racer with the same id sees the first one's row.
                let known: Option<String> =
                    sqlx::query_scalar("SELECT id FROM task_inputs WHERE id = $1")
                        .bind(&input.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if known.is_some() {
                    tx.rollback().await?;
                    return Ok(task);
                }
                if pending == "cancel" {
                    tx.rollback().await?;
                    return Err(StoreError::Conflict("the task is being cancelled".into()));
                }
                if input.kind != "cancel" {
                    tx.rollback().await?;
                    return Err(StoreError::Conflict(format!(
                        "the task has {} input it has not acted on yet",
                        pending.replace('_', " ")
                    )));
                }
            }
            let mut payload = input.payload.clone();
            if let Some(object) = payload.as_object_mut() {
                object.insert("id".into(), json!(input.id));
            }
            let payload = payload.to_string();
            let workflow_id = task_workflow_id(task_id);
            // The input is stored once per id; only a new one becomes the task's pending input
            // and queues its signal: on PostgreSQL in the same statement, on SQLite after it.
            let query = sqlx::query_scalar(sqlx::AssertSqlSafe(if pg {
                ADD_TASK_INPUT_PG.as_str()
            } else {
                INSERT_TASK_INPUT
            }))
            .bind(&input.id)
            .bind(task_id)
            .bind(user)
            .bind(input.kind)
            .bind(&payload)
            .bind(at);
            let query = if pg { query.bind(&workflow_id) } else { query };
            let inserted: Option<i32> = query.fetch_optional(&mut *tx).await?;
            let inserted = inserted.is_some();
            if inserted && !pg {
                sqlx::query("UPDATE tasks SET pending_input = $1 WHERE id = $2 AND user_id = $3")
                    .bind(input.kind)
                    .bind(task_id)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                insert_outbox!(tx, user, &workflow_id, input.kind, &payload, at);
            }
            if inserted {
                insert_events!(
                    tx,
                    pg,
                    user,
                    &[NewEvent::new(
                        event_kind::TASK_INPUT,
                        json!({ "task_id": task_id, "kind": input.kind, "id": input.id }),
                    )]
                );
            }
            tx.commit().await?;
            task
        });
        self.wake_events();
        self.wake_outbox();
        Ok(task)
    }

    /// What the user told a task, oldest first.
    pub async fn task_inputs(&self, user: &str, task_id: &str) -> Result<Vec<TaskInputRecord>> {
        let rows: Vec<(String, String, String, DateTime<Utc>)> = db!(self, |pool, pg| {
            sqlx::query_as(
                "SELECT id, kind, payload, created_at FROM task_inputs \
                 WHERE user_id = $1 AND task_id = $2 ORDER BY created_at, id",
            )
            .bind(user)
            .bind(task_id)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(id, kind, payload, created_at)| {
                let payload = serde_json::from_str(&payload)
                    .map_err(|e| StoreError::Corrupt(format!("task input {id}: {e}")))?;
                Ok(TaskInputRecord {
                    id,
                    kind,
                    payload,
                    created_at,
                })
            })
            .collect()
    }

    /// Appends job output lines; lines already stored (a re-attached job replays its output)
    /// are skipped. Announces the new ones as `task.log`.
    pub async fn append_task_logs(
        &self,
        user: &str,
        task_id: &str,
        job: &str,
        lines: &[(i64, String, String)],
    ) -> Result<usize> {
        if lines.is_empty() {
            return Ok(0);
        }
        let added = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let at = now();
            let mut events = Vec::new();
            for (line, source, text) in lines {
                let inserted = sqlx::query(
                    "INSERT INTO task_logs (task_id, job, line, source, text, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(task_id)
                .bind(job)
                .bind(line)
                .bind(source)
                .bind(text)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted > 0 {
                    events.push(NewEvent::new(
                        event_kind::TASK_LOG,
                        json!({ "task_id": task_id, "job": job, "line": line,
                                "source": source, "text": text }),
                    ));
                }
            }
            insert_events!(tx, pg, user, &events);
            tx.commit().await?;
            events.len()
        });
        if added > 0 {
            self.wake_events();
        }
        Ok(added)
    }

    /// The last `limit` log lines of a task, oldest first.
    pub async fn task_logs(
        &self,
        user: &str,
        task_id: &str,
        limit: i64,
    ) -> Result<Vec<TaskLogLine>> {
        // Ownership first: logs of someone else's task are "not found".
        self.get_task(user, task_id).await?;
        let mut rows: Vec<(String, i64, String, String, DateTime<Utc>)> = db!(self, |pool, pg| {
            sqlx::query_as(
                "SELECT job, line, source, text, created_at FROM task_logs WHERE task_id = $1 \
                 ORDER BY created_at DESC, job DESC, line DESC LIMIT $2",
            )
            .bind(task_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.reverse();
        Ok(rows
            .into_iter()
            .map(|(job, line, source, text, created_at)| TaskLogLine {
                job,
                line,
                source,
                text,
                created_at,
            })
            .collect())
    }

    /// Records that a job started (once per job name).
    pub async fn start_task_run(
        &self,
        user: &str,
        task_id: &str,
        job: &str,
        mode: &str,
    ) -> Result<()> {
        db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            // Ownership check: a run is only recorded for the user's own task.
            select_task!(&mut *tx, user, task_id);
            sqlx::query(
                "INSERT INTO task_runs (task_id, job, mode, status, started_at) \
                 VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (task_id, job) DO NOTHING",
            )
            .bind(task_id)
            .bind(job)
            .bind(mode)
            .bind(now())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records how a job ended and adds its cost to the task's, once per job.
    pub async fn finish_task_run(
        &self,
        user: &str,
        task_id: &str,
        job: &str,
        succeeded: bool,
        summary: &str,
        cost: Cost,
    ) -> Result<Task> {
        let task = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let at = now();
            let finished = sqlx::query(
                "UPDATE task_runs SET status = $1, summary = $2, input_tokens = $3, \
                 output_tokens = $4, cache_tokens = $5, cost_usd = $6, finished_at = $7 \
                 WHERE task_id = $8 AND job = $9 AND finished_at IS NULL",
            )
            .bind(if succeeded { "succeeded" } else { "failed" })
            .bind(summary)
            .bind(cost.input_tokens)
            .bind(cost.output_tokens)
            .bind(cost.cache_tokens)
            .bind(cost.cost_usd)
            .bind(at)
            .bind(task_id)
            .bind(job)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if finished > 0 {
                sqlx::query(
                    "UPDATE tasks SET input_tokens = input_tokens + $1, \
                     output_tokens = output_tokens + $2, cache_tokens = cache_tokens + $3, \
                     cost_usd = cost_usd + $4, updated_at = $5 WHERE id = $6 AND user_id = $7",
                )
                .bind(cost.input_tokens)
                .bind(cost.output_tokens)
                .bind(cost.cache_tokens)
                .bind(cost.cost_usd)
                .bind(at)
                .bind(task_id)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            }
            let task = select_task!(&mut *tx, user, task_id);
            if finished > 0 {
                insert_events!(
                    tx,
                    pg,
                    user,
                    &[NewEvent::new(event_kind::TASK_UPDATED, &task)]
                );
            }
            tx.commit().await?;
            task
        });
        self.wake_events();
        Ok(task)
    }

    /// The task's job runs, oldest first.
    pub async fn task_runs(&self, user: &str, task_id: &str) -> Result<Vec<TaskRun>> {
        self.get_task(user, task_id).await?;
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            String,
            String,
            String,
            String,
            i64,
            i64,
            i64,
            f64,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
        )> = db!(self, |pool, pg| {
            sqlx::query_as(
                "SELECT job, mode, status, summary, input_tokens, output_tokens, cache_tokens, \
                 cost_usd, started_at, finished_at FROM task_runs WHERE task_id = $1 \
                 ORDER BY started_at, job",
            )
            .bind(task_id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(
                    job,
                    mode,
                    status,
                    summary,
                    input,
                    output,
                    cache,
                    cost_usd,
                    started,
                    finished,
                )| {
                    TaskRun {
                        job,
                        mode,
                        status,
                        summary,
                        cost: Cost {
                            input_tokens: input,
                            output_tokens: output,
                            cache_tokens: cache,
                            cost_usd,
                        },
                        started_at: started,
                        finished_at: finished,
                    }
                },
            )
            .collect())
    }

    /// Stores a text a later step needs (CI logs, review feedback). Writing the same key
    /// again replaces it: the latest fetch wins.
    pub async fn put_artifact(&self, task_id: &str, key: &str, content: &str) -> Result<()> {
        db!(self, |pool, pg| {
            sqlx::query(
                "INSERT INTO task_artifacts (task_id, key, content, created_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (task_id, key) DO UPDATE SET content = $3, created_at = $4",
            )
            .bind(task_id)
            .bind(key)
            .bind(content)
            .bind(now())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn artifact(&self, task_id: &str, key: &str) -> Result<Option<String>> {
        Ok(db!(self, |pool, pg| {
            sqlx::query_scalar("SELECT content FROM task_artifacts WHERE task_id = $1 AND key = $2")
                .bind(task_id)
                .bind(key)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// The inbox: open items first (newest first), then up to `limit` resolved ones.
    pub async fn list_inbox(&self, user: &str, limit: i64) -> Result<Vec<InboxItem>> {
        let rows: Vec<InboxRow> = db!(self, |pool, pg| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {INBOX_COLUMNS} FROM inbox_items WHERE user_id = $1 \
                 ORDER BY resolved, created_at DESC, id LIMIT $2"
            )))
            .bind(user)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(InboxRow::into_item).collect()
    }

    pub async fn unread_count(&self, user: &str) -> Result<i64> {
        Ok(db!(self, |pool, pg| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM inbox_items WHERE user_id = $1 AND unread = TRUE",
            )
            .bind(user)
            .fetch_one(pool)
            .await?
        }))
    }

    /// Marks one item read (`Some(id)`) or all of them.
    pub async fn mark_inbox_read(&self, user: &str, id: Option<&str>) -> Result<Vec<InboxItem>> {
        let items = db!(self, |pool, pg| {
            let mut tx = begin_write!(pool, pg)?;
            let at = now();
            if let Some(id) = id {
                // Existence check: an unknown item is "not found", not a silent no-op.
                select_inbox!(&mut *tx, user, id);
            }
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM inbox_items WHERE user_id = $1 AND unread = TRUE \
                 AND ($2 IS NULL OR id = $2)",
            )
            .bind(user)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            let mut items = Vec::new();
            for item_id in &ids {
                sqlx::query(
                    "UPDATE inbox_items SET unread = FALSE, updated_at = $1 \
                     WHERE id = $2 AND user_id = $3",
                )
                .bind(at)
                .bind(item_id)
                .bind(user)
                .execute(&mut *tx)
                .await?;
                items.push(select_inbox!(&mut *tx, user, item_id));
            }
            let events: Vec<NewEvent> = items
                .iter()
                .map(|item| NewEvent::new(event_kind::INBOX_UPDATED, item))
                .collect();
            insert_events!(tx, pg, user, &events);
            tx.commit().await?;
            items
        });
        self.wake_events();
        Ok(items)
    }

    /// The user's repositories, most recently used first.
    pub async fn list_projects(&self, user: &str, limit: i64) -> Result<Vec<Project>> {
        let rows: Vec<(String, i64, DateTime<Utc>)> = db!(self, |pool, pg| {
            sqlx::query_as(
                "SELECT repo, task_count, last_used_at FROM projects WHERE user_id = $1 \
                 ORDER BY last_used_at DESC, repo LIMIT $2",
            )
            .bind(user)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(repo, task_count, last_used_at)| Project {
                repo,
                task_count,
                last_used_at,
            })
            .collect())
    }
}

fn task_changed(before: &Task, after: &Task) -> bool {
    Task {
        updated_at: before.updated_at,
        ..after.clone()
    } != *before
}
