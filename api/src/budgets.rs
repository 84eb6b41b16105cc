//! `POST /api/tasks/{id}/budget`: new limits for a task paused on its budget. The request is
//! checked against the task's spend here (a raise that leaves no room is refused at once, as
//! the task would only pause again), stored, and signalled with the limits whole.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mainloop_store::{NewTaskInput, Task, TaskBudget, TaskStatus};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::User;
use crate::error::{ApiError, ApiResult, ErrorBody, code};
use crate::extract::ApiJson;
use crate::tasks::{accept, new_input_id, not_now, task_or_404};

/// Largest limits accepted: far beyond any real task, small enough to stay exact.
const MOST_TOKENS: i64 = 1_000_000_000_000;
const MOST_COST_USD: f64 = 1_000_000.0;
const MOST_CI_ATTEMPTS: i64 = 1_000;

/// New limits, or raises of the current ones; per limit one or the other. Limits not named
/// stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    /// Tokens (input, output and cache) the task may spend in all.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// US dollars the task may spend in all.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// CI fix jobs the task may run in all.
    #[serde(default)]
    pub max_ci_attempts: Option<i64>,
    /// Add this many tokens to the current limit.
    #[serde(default)]
    pub raise_tokens: Option<i64>,
    /// Add this many dollars to the current limit.
    #[serde(default)]
    pub raise_cost_usd: Option<f64>,
    /// Add this many CI fix attempts to the current limit.
    #[serde(default)]
    pub raise_ci_attempts: Option<i64>,
}

#[utoipa::path(
    post, path = "/api/tasks/{id}/budget", tag = "tasks",
    params(("id" = String, Path, description = "Task id")), request_body = BudgetBody,
    responses(
        (status = 202, body = Task, description = "Accepted; the task goes on from where it paused"),
        (status = 404, body = ErrorBody, description = "not_found"),
        (status = 409, body = ErrorBody, description = "conflict: the task is not waiting on its budget"),
        (status = 422, body = ErrorBody, description = "invalid_budget: not a raise, out of range, or still no room for the task to go on"),
    )
)]
pub async fn raise(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BudgetBody>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task = task_or_404(&state, &user, &id).await?;
    if task.status != TaskStatus::WaitingBudget {
        return Err(not_now(&task, "waiting on its budget"));
    }
    let limits = new_limits(&task, &body).map_err(invalid)?;
    let input = NewTaskInput {
        id: new_input_id(),
        kind: "budget",
        payload: serde_json::json!({
            "max_tokens": limits.max_tokens,
            "max_cost_usd": limits.max_cost_usd,
            "max_ci_attempts": limits.max_ci_attempts,
        }),
    };
    accept(&state, &user, &id, input, &[TaskStatus::WaitingBudget]).await
}

fn invalid(message: String) -> ApiError {
    ApiError::unprocessable(code::INVALID_BUDGET, message)
}

/// The task's limits after `body`, or why it is refused.
fn new_limits(task: &Task, body: &BudgetBody) -> Result<TaskBudget, String> {
    let current = task.budget;
    let tokens = pick(
        "tokens",
        current.max_tokens,
        body.max_tokens,
        body.raise_tokens,
        MOST_TOKENS,
    )?;
    let ci = pick(
        "ci_attempts",
        current.max_ci_attempts,
        body.max_ci_attempts,
        body.raise_ci_attempts,
        MOST_CI_ATTEMPTS,
    )?;
    let cost = match (body.max_cost_usd, body.raise_cost_usd) {
        (Some(_), Some(_)) => {
            return Err("give `max_cost_usd` or `raise_cost_usd`, not both".to_string());
        }
        (Some(c), None) | (None, Some(c)) if !c.is_finite() || c <= 0.0 || c > MOST_COST_USD => {
            return Err(format!(
                "a cost limit must be more than 0 and at most {MOST_COST_USD}"
            ));
        }
        (Some(c), None) => Some(c),
        (None, Some(c)) => match current.max_cost_usd {
            Some(limit) => Some((limit + c).min(MOST_COST_USD)),
            None => return Err("the task has no cost limit to raise".to_string()),
        },
        (None, None) => current.max_cost_usd,
    };
    let limits = TaskBudget {
        max_tokens: tokens,
        max_cost_usd: cost,
        max_ci_attempts: ci,
    };
    if limits == current {
        return Err("name a limit to change".to_string());
    }
    let spent_tokens = task
        .cost
        .input_tokens
        .saturating_add(task.cost.output_tokens)
        .saturating_add(task.cost.cache_tokens);
    if let Some(limit) = limits.max_tokens
        && spent_tokens >= limit
    {
        return Err(format!(
            "the task has spent {spent_tokens} tokens already: a limit of {limit} leaves no room"
        ));
    }
    if let Some(limit) = limits.max_cost_usd
        && task.cost.cost_usd >= limit
    {
        return Err(format!(
            "the task has spent ${:.2} already: a limit of ${limit:.2} leaves no room",
            task.cost.cost_usd
        ));
    }
    // Only when named: a task paused on tokens may sit exactly at its CI limit, which pauses
    // nothing until a fix is due.
    if let Some(limit) = limits.max_ci_attempts
        && (body.max_ci_attempts.is_some() || body.raise_ci_attempts.is_some())
        && task.ci_attempts >= limit
    {
        return Err(format!(
            "the task has run {} CI fix attempts already: a limit of {limit} leaves no room",
            task.ci_attempts
        ));
    }
    Ok(limits)
}

/// A whole-number limit from its new value or raise.
fn pick(
    name: &str,
    current: Option<i64>,
    set: Option<i64>,
    raise: Option<i64>,
    most: i64,
) -> Result<Option<i64>, String> {
    match (set, raise) {
        (Some(_), Some(_)) => Err(format!("give `max_{name}` or `raise_{name}`, not both")),
        (Some(n), None) | (None, Some(n)) if n <= 0 || n > most => Err(format!(
            "a {} limit must be more than 0 and at most {most}",
            name.replace('_', " ")
        )),
        (Some(n), None) => Ok(Some(n)),
        (None, Some(n)) => match current {
            Some(limit) => Ok(Some(limit.saturating_add(n).min(most))),
            None => Err(format!(
                "the task has no {} limit to raise",
                name.replace('_', " ")
            )),
        },
        (None, None) => Ok(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paused(budget: TaskBudget, tokens: i64, cost: f64, ci_attempts: i64) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": "t", "proposal_id": "t", "title": "t", "description": "", "repo": "a/b",
            "model": null, "skip_planning": false, "status": "waiting_budget", "detail": "",
            "error": null, "failed_phase": null, "issue_number": null, "issue_url": null,
            "branch": null, "pr_number": null, "pr_url": null, "plan": null, "questions": [],
            "ci_fixes": 0, "ci_attempts": ci_attempts, "budget": budget,
            "cost": {"input_tokens": tokens, "output_tokens": 0, "cache_tokens": 0, "cost_usd": cost},
            "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
            "completed_at": null
        }))
        .expect("a task")
    }

    fn body(json: serde_json::Value) -> BudgetBody {
        serde_json::from_value(json).expect("a body")
    }

    const LIMITS: TaskBudget = TaskBudget {
        max_tokens: Some(1_000),
        max_cost_usd: Some(1.0),
        max_ci_attempts: Some(2),
    };

    #[test]
    fn raises_add_to_the_current_limits_and_new_values_replace_them() {
        let task = paused(LIMITS, 1_200, 0.5, 2);
        let raised = new_limits(
            &task,
            &body(serde_json::json!({"raise_tokens": 1_000, "max_ci_attempts": 4})),
        );
        assert_eq!(
            raised,
            Ok(TaskBudget {
                max_tokens: Some(2_000),
                max_cost_usd: Some(1.0),
                max_ci_attempts: Some(4),
            })
        );
    }

    #[test]
    fn limits_that_leave_no_room_or_make_no_sense_are_refused() {
        let task = paused(LIMITS, 1_200, 0.5, 2);
        for refused in [
            serde_json::json!({}),
            serde_json::json!({"raise_tokens": 100}),
            serde_json::json!({"max_tokens": 5_000, "raise_tokens": 1}),
            serde_json::json!({"max_tokens": 0}),
            serde_json::json!({"max_tokens": 5_000, "max_cost_usd": 0.4}),
            serde_json::json!({"max_tokens": 5_000, "max_ci_attempts": 2}),
            serde_json::json!({"max_tokens": 5_000, "raise_cost_usd": -1.0}),
        ] {
            assert!(
                new_limits(&task, &body(refused.clone())).is_err(),
                "{refused}"
            );
        }
        let unlimited = paused(TaskBudget::default(), 10, 0.0, 0);
        assert!(new_limits(&unlimited, &body(serde_json::json!({"raise_tokens": 5}))).is_err());
    }
}
