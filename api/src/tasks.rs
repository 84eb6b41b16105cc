//! Worker tasks, the inbox and projects: confirming a proposal (which starts a task), reading
//! tasks and their logs, and the human input a task waits for (answers, plan review, retry,
//! cancel). Input is checked against the task's current state here (409/422 at once), stored,
//! and signalled through the outbox; the workflow checks it again.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mainloop_activities::github::GitHubError;
use mainloop_activities::repo::parse_repo;
use mainloop_store::{
    ConfirmOverrides, InboxItem, NewTaskInput, Project, Proposal, StoreError, Task, TaskBudget,
    TaskInputRecord, TaskLogLine, TaskRun, TaskStatus,
};
use mainloop_workflows::main_thread_id;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::User;
use crate::error::{ApiError, ApiResult, ErrorBody, code};
use crate::extract::{ApiJson, ApiQuery, OptionalJson};

/// Changes to a proposal made when confirming it; all optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// `owner/name` (or a GitHub URL) to run the task on instead of the proposed one.
    #[serde(default)]
    pub repo: Option<String>,
    /// Model of the worker agents for this task.
    #[serde(default)]
    pub model: Option<String>,
    /// Go straight to implementation.
    #[serde(default)]
    pub skip_planning: Option<bool>,
    /// This task's limits instead of the worker's defaults (per limit; the rest keep the
    /// defaults). Reaching one pauses the task and asks in the inbox.
    #[serde(default)]
    pub budget: Option<TaskBudget>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Confirmed {
    pub proposal: Proposal,
    pub task: Task,
}

#[utoipa::path(
    post, path = "/api/proposals/{id}/confirm", tag = "tasks",
    params(("id" = String, Path, description = "Proposal id")),
    request_body(content = ConfirmBody, description = "Optional changes (an empty body keeps the proposal as is)"),
    responses(
        (status = 202, body = Confirmed, description = "Confirmed; the task starts"),
        (status = 404, body = ErrorBody, description = "not_found"),
        (status = 409, body = ErrorBody, description = "conflict: already decided"),
        (status = 422, body = ErrorBody, description = "invalid_repo: missing, not visible or not pushable; invalid_budget"),
    )
)]
pub async fn confirm(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<ConfirmBody>,
) -> ApiResult<(StatusCode, Json<Confirmed>)> {
    let proposal = match state.store.get_proposal(&user, &id).await {
        Ok(p) => p,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("proposal")),
        Err(error) => return Err(error.into()),
    };
    let repo_text = body.repo.as_deref().unwrap_or(&proposal.repo);
    let repo = parse_repo(repo_text)
        .map_err(|e| ApiError::unprocessable(code::INVALID_REPO, e.to_string()))?
        .to_string();
    // It becomes the value of the Claude Code CLI's `--model`: a name, never an option.
    if let Some(model) = &body.model
        && !model_name(model)
    {
        return Err(ApiError::unprocessable(
            code::INVALID_BODY,
            "`model` must be a model name",
        ));
    }
    // More than a URL check: the repository must exist and take our pushes.
    match state.github.repo_access(&repo).await {
        Ok(access) if access.can_push => {}
        Ok(_) => {
            return Err(ApiError::unprocessable(
                code::INVALID_REPO,
                format!("mainloop's GitHub token cannot push to {repo}"),
            ));
        }
        Err(GitHubError::NotFound) => {
            return Err(ApiError::unprocessable(
                code::INVALID_REPO,
                format!("the repository {repo} does not exist or is not visible to mainloop"),
            ));
        }
        Err(error) if error.is_retryable() => return Err(ApiError::unavailable(error)),
        Err(error) => {
            return Err(ApiError::unprocessable(
                code::INVALID_REPO,
                format!("GitHub refused to show {repo}: {error}"),
            ));
        }
    }
    let budget = body.budget.unwrap_or_default();
    if budget.max_tokens.is_some_and(|n| n <= 0)
        || budget
            .max_ci_attempts
            .is_some_and(|n| !(1..=1_000).contains(&n))
        || budget
            .max_cost_usd
            .is_some_and(|c| !c.is_finite() || c <= 0.0 || c > 1_000_000.0)
    {
        return Err(ApiError::unprocessable(
            code::INVALID_BUDGET,
            "budget limits must be positive (CI attempts at most 1000, cost at most 1000000)",
        ));
    }
    let overrides = ConfirmOverrides {
        repo: Some(repo),
        model: body.model,
        skip_planning: body.skip_planning,
        budget,
    };
    let (proposal, task) = match state
        .store
        .confirm_proposal(&user, &id, &overrides, &main_thread_id(&user))
        .await
    {
        Ok(done) => done,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("proposal")),
        Err(error) => return Err(error.into()),
    };
    Ok((StatusCode::ACCEPTED, Json(Confirmed { proposal, task })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    /// Only tasks with this status.
    #[serde(default)]
    #[param(value_type = Option<mainloop_store::TaskStatus>, nullable = false)]
    pub status: Option<String>,
    /// Most tasks returned, 1-500 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500, nullable = false)]
    pub limit: Option<i64>,
}

#[utoipa::path(
    get, path = "/api/tasks", tag = "tasks", params(TaskListQuery),
    responses((status = 200, body = Vec<Task>, description = "Newest first"))
)]
pub async fn list(
    State(state): State<AppState>,
    User(user): User,
    ApiQuery(query): ApiQuery<TaskListQuery>,
) -> ApiResult<Json<Vec<Task>>> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(TaskStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request(code::INVALID_QUERY, format!("unknown status {text:?}"))
        })?),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            code::INVALID_QUERY,
            "limit must be between 1 and 500",
        ));
    }
    Ok(Json(state.store.list_tasks(&user, status, limit).await?))
}

/// A task with its job runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: Task,
    pub runs: Vec<TaskRun>,
    /// What the user told the task (answers, plan reviews, retries, cancels), oldest first.
    pub inputs: Vec<TaskInputRecord>,
}

#[utoipa::path(
    get, path = "/api/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses((status = 200, body = TaskDetail), (status = 404, body = ErrorBody, description = "not_found"))
)]
pub async fn get(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskDetail>> {
    let task = task_or_404(&state, &user, &id).await?;
    let runs = state.store.task_runs(&user, &id).await?;
    let inputs = state.store.task_inputs(&user, &id).await?;
    Ok(Json(TaskDetail { task, runs, inputs }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Most recent lines returned, 1-5000 (default 200).
    #[serde(default)]
    #[param(minimum = 1, maximum = 5000, nullable = false)]
    pub tail: Option<i64>,
}

#[utoipa::path(
    get, path = "/api/tasks/{id}/logs", tag = "tasks",
    params(("id" = String, Path, description = "Task id"), LogQuery),
    responses((status = 200, body = Vec<TaskLogLine>, description = "Oldest first"), (status = 404, body = ErrorBody, description = "not_found"))
)]
pub async fn logs(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> ApiResult<Json<Vec<TaskLogLine>>> {
    let tail = query.tail.unwrap_or(200);
    if !(1..=5000).contains(&tail) {
        return Err(ApiError::bad_request(
            code::INVALID_QUERY,
            "tail must be between 1 and 5000",
        ));
    }
    match state.store.task_logs(&user, &id, tail).await {
        Ok(lines) => Ok(Json(lines)),
        Err(StoreError::NotFound) => Err(ApiError::not_found("task")),
        Err(error) => Err(error.into()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    /// One answer per question id; every waiting question must be answered.
    pub answers: std::collections::BTreeMap<String, String>,
}

#[utoipa::path(
    post, path = "/api/tasks/{id}/answer", tag = "tasks",
    params(("id" = String, Path, description = "Task id")), request_body = AnswerBody,
    responses(
        (status = 202, body = Task, description = "Accepted; planning resumes"),
        (status = 409, body = ErrorBody, description = "conflict: the task is not waiting for answers, or already has answers it has not acted on"),
        (status = 422, body = ErrorBody, description = "invalid_answers"),
    )
)]
pub async fn answer(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AnswerBody>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = task_or_404(&state, &user, &id).await?;
    if task.status != TaskStatus::WaitingQuestions {
        return Err(not_now(&task, "waiting for answers"));
    }
    let mut answers = Vec::new();
    for question in &task.questions {
        match body.answers.get(&question.id).map(|a| a.trim()) {
            Some(answer) if !answer.is_empty() && answer.len() <= 10_000 => {
                answers.push(serde_json::json!({ "question_id": question.id, "answer": answer }));
            }
            _ => {
                return Err(ApiError::unprocessable(
                    code::INVALID_ANSWERS,
                    format!("question {:?} needs an answer", question.id),
                ));
            }
        }
    }
    if let Some(unknown) = body
        .answers
        .keys()
        .find(|k| !task.questions.iter().any(|q| &&q.id == k))
    {
        return Err(ApiError::unprocessable(
            code::INVALID_ANSWERS,
            format!("no question {unknown:?} is waiting"),
        ));
    }
    let input = NewTaskInput {
        id: new_input_id(),
        kind: "answers",
        payload: serde_json::json!({ "answers": answers }),
    };
    accept(&state, &user, &id, input, &[TaskStatus::WaitingQuestions]).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// `approve`, `revise` (with `text`) or `cancel`.
    #[schema(pattern = "^(approve|revise|cancel)$")]
    pub action: String,
    /// What to change in the plan (`revise` only).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 20000)]
    pub text: Option<String>,
}

#[utoipa::path(
    post, path = "/api/tasks/{id}/review-plan", tag = "tasks",
    params(("id" = String, Path, description = "Task id")), request_body = ReviewBody,
    responses(
        (status = 202, body = Task, description = "Accepted"),
        (status = 409, body = ErrorBody, description = "conflict: no plan is waiting for review, or a review was already given"),
        (status = 422, body = ErrorBody, description = "invalid_body"),
    )
)]
pub async fn review_plan(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReviewBody>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    // The task's state first: a review of a task that has no plan waiting is a conflict,
    // whatever the body says.
    let task = task_or_404(&state, &user, &id).await?;
    if task.status != TaskStatus::WaitingPlanReview {
        return Err(not_now(&task, "waiting for a plan review"));
    }
    let text = body.text.as_deref().map(str::trim).unwrap_or("");
    let payload = match body.action.as_str() {
        "approve" | "cancel" => serde_json::json!({ "action": body.action }),
        "revise" if !text.is_empty() && text.len() <= 20_000 => {
            serde_json::json!({ "action": "revise", "text": text })
        }
        "revise" => {
            return Err(ApiError::unprocessable(
                code::INVALID_BODY,
                "a revision needs `text`: what to change in the plan",
            ));
        }
        other => {
            return Err(ApiError::unprocessable(
                code::INVALID_BODY,
                format!("`action` must be approve, revise or cancel, not {other:?}"),
            ));
        }
    };
    let input = NewTaskInput {
        id: new_input_id(),
        kind: "plan_review",
        payload,
    };
    accept(&state, &user, &id, input, &[TaskStatus::WaitingPlanReview]).await
}

#[utoipa::path(
    post, path = "/api/tasks/{id}/retry", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 202, body = Task, description = "Accepted; the failed phase runs again"),
        (status = 409, body = ErrorBody, description = "conflict: the task has not failed, or a retry was already asked for"),
    )
)]
pub async fn retry(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let input = NewTaskInput {
        id: new_input_id(),
        kind: "retry",
        payload: serde_json::json!({}),
    };
    accept(&state, &user, &id, input, &[TaskStatus::Failed]).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    #[serde(default)]
    pub reason: Option<String>,
}

#[utoipa::path(
    post, path = "/api/tasks/{id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 202, body = Task, description = "Accepted; running jobs are stopped"),
        (status = 409, body = ErrorBody, description = "conflict: the task is over, or already being cancelled"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let reason = body
        .reason
        .map(|r| r.trim().chars().take(500).collect::<String>())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "cancelled by the user".to_string());
    let input = NewTaskInput {
        id: new_input_id(),
        kind: "cancel",
        payload: serde_json::json!({ "reason": reason }),
    };
    let live: Vec<TaskStatus> = TaskStatus::ALL
        .into_iter()
        .filter(|s| !s.is_terminal())
        .collect();
    accept(&state, &user, &id, input, &live).await
}

#[utoipa::path(
    get, path = "/api/inbox", tag = "inbox",
    responses((status = 200, body = Vec<InboxItem>, description = "Open items first, newest first"))
)]
pub async fn inbox(
    State(state): State<AppState>,
    User(user): User,
) -> ApiResult<Json<Vec<InboxItem>>> {
    Ok(Json(state.store.list_inbox(&user, 200).await?))
}

#[utoipa::path(
    post, path = "/api/inbox/{id}/read", tag = "inbox",
    params(("id" = String, Path, description = "Inbox item id")),
    responses((status = 200, body = Vec<InboxItem>, description = "The items marked read"), (status = 404, body = ErrorBody, description = "not_found"))
)]
pub async fn read(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<InboxItem>>> {
    match state.store.mark_inbox_read(&user, Some(&id)).await {
        Ok(items) => Ok(Json(items)),
        Err(StoreError::NotFound) => Err(ApiError::not_found("inbox item")),
        Err(error) => Err(error.into()),
    }
}

#[utoipa::path(
    post, path = "/api/inbox/read-all", tag = "inbox",
    responses((status = 200, body = Vec<InboxItem>, description = "The items marked read"))
)]
pub async fn read_all(
    State(state): State<AppState>,
    User(user): User,
) -> ApiResult<Json<Vec<InboxItem>>> {
    Ok(Json(state.store.mark_inbox_read(&user, None).await?))
}

#[utoipa::path(
    get, path = "/api/projects", tag = "tasks",
    responses((status = 200, body = Vec<Project>, description = "Most recently used first"))
)]
pub async fn projects(
    State(state): State<AppState>,
    User(user): User,
) -> ApiResult<Json<Vec<Project>>> {
    Ok(Json(state.store.list_projects(&user, 50).await?))
}

pub(crate) async fn task_or_404(state: &AppState, user: &str, id: &str) -> ApiResult<Task> {
    match state.store.get_task(user, id).await {
        Ok(task) => Ok(task),
        Err(StoreError::NotFound) => Err(ApiError::not_found("task")),
        Err(error) => Err(error.into()),
    }
}

pub(crate) fn not_now(task: &Task, wanted: &str) -> ApiError {
    ApiError::conflict(format!(
        "the task is {}, not {wanted}",
        task.status.as_str().replace('_', " ")
    ))
}

pub(crate) async fn accept(
    state: &AppState,
    user: &str,
    id: &str,
    input: NewTaskInput,
    allowed: &[TaskStatus],
) -> ApiResult<(StatusCode, Json<Task>)> {
    match state.store.add_task_input(user, id, &input, allowed).await {
        Ok(task) => Ok((StatusCode::ACCEPTED, Json(task))),
        Err(StoreError::NotFound) => Err(ApiError::not_found("task")),
        Err(error) => Err(error.into()),
    }
}

pub(crate) fn new_input_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A model name or alias (`claude-sonnet-4-5`, `opus`, `us.anthropic.claude-…:0`,
/// `claude-sonnet-4-5[1m]`): at most 100 ASCII characters that cannot read as an option.
fn model_name(model: &str) -> bool {
    (1..=100).contains(&model.len())
        && !model.starts_with('-')
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:@/[]".contains(&b))
}
