//! A task's budget: limits on the tokens and dollars its jobs spend and on its CI fix jobs.
//! Checked between jobs (a running job is never killed): when a limit is reached the task
//! pauses in `waiting_budget` with an inbox item saying what was spent, and goes on from the
//! very step it stopped at once the user raises the limit — or ends if they cancel.

use mainloop_store::{InboxKind, NewInboxItem, TaskBudget, TaskStatus};
use serde::{Deserialize, Serialize};

use super::{Ctx, Memory, Step, cancel_reason, note, record};
use crate::payload::Inbound;

/// Tasks started before budgets existed replay without them.
pub(super) const PATCH: &str = "task-budgets";

/// Tasks that failed at `max_ci_fixes` despite a CI-attempts budget replay as they ran.
pub(super) const CI_BUDGET_GOVERNS_PATCH: &str = "ci-budget-governs";

/// Whether the task's budget limits its CI fix attempts (then that limit, not the per-phase
/// one, ends a run of fixes: with a pause, not a failure).
pub(super) fn limits_ci_attempts(ctx: &Ctx) -> bool {
    ctx.state(|s| s.mem.budget.is_some_and(|b| b.max_ci_attempts.is_some()))
}

/// Payload of the `budget` signal: the task's new limits, whole (absent: no limit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetSignal {
    pub id: String,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    #[serde(default)]
    pub max_ci_attempts: Option<i64>,
}

/// The task's own limits where it set them, the worker's defaults elsewhere.
pub(super) fn resolve(own: Option<TaskBudget>, defaults: &TaskBudget) -> TaskBudget {
    let own = own.unwrap_or_default();
    TaskBudget {
        max_tokens: own.max_tokens.or(defaults.max_tokens),
        max_cost_usd: own.max_cost_usd.or(defaults.max_cost_usd),
        max_ci_attempts: own.max_ci_attempts.or(defaults.max_ci_attempts),
    }
}

pub(super) fn parse(inbound: &Inbound) -> Result<(String, TaskBudget), String> {
    let signal: BudgetSignal = serde_json::from_value(inbound.json()?).map_err(|e| {
        format!(
            "expected {{\"id\", \"max_tokens\"?, \"max_cost_usd\"?, \"max_ci_attempts\"?}} ({e})"
        )
    })?;
    if signal.id.trim().is_empty() || signal.id.len() > 200 {
        return Err("`id` must be a non-empty id".to_string());
    }
    if signal.max_tokens.is_some_and(|n| n < 0)
        || signal.max_ci_attempts.is_some_and(|n| n < 0)
        || signal
            .max_cost_usd
            .is_some_and(|c| !c.is_finite() || c < 0.0)
    {
        return Err("limits must be positive numbers".to_string());
    }
    Ok((
        signal.id,
        TaskBudget {
            max_tokens: signal.max_tokens,
            max_cost_usd: signal.max_cost_usd,
            max_ci_attempts: signal.max_ci_attempts,
        },
    ))
}

/// A limit the task has reached.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reached {
    Tokens { spent: i64, limit: i64 },
    Cost { spent: f64, limit: f64 },
    CiAttempts { used: u32, limit: i64 },
}

impl Reached {
    fn key(self) -> &'static str {
        match self {
            Reached::Tokens { .. } => "tokens",
            Reached::Cost { .. } => "cost",
            Reached::CiAttempts { .. } => "ci",
        }
    }

    /// "12345 tokens spent of 10000".
    fn describe(self) -> String {
        match self {
            Reached::Tokens { spent, limit } => format!("{spent} tokens spent of {limit}"),
            Reached::Cost { spent, limit } => format!("${spent:.2} spent of ${limit:.2}"),
            Reached::CiAttempts { used, limit } => {
                format!("{used} CI fix attempts used of {limit}")
            }
        }
    }
}

/// The first limit reached, if any. `before_fix`: a CI fix job would start next, so the CI
/// attempts count too.
fn reached(mem: &Memory, before_fix: bool) -> Option<Reached> {
    let budget = mem.budget?;
    if let Some(limit) = budget.max_tokens
        && mem.spent.tokens >= limit
    {
        return Some(Reached::Tokens {
            spent: mem.spent.tokens,
            limit,
        });
    }
    if let Some(limit) = budget.max_cost_usd
        && mem.spent.cost_usd >= limit
    {
        return Some(Reached::Cost {
            spent: mem.spent.cost_usd,
            limit,
        });
    }
    if before_fix
        && let Some(limit) = budget.max_ci_attempts
        && i64::from(mem.ci_attempts) >= limit
    {
        return Some(Reached::CiAttempts {
            used: mem.ci_attempts,
            limit,
        });
    }
    None
}

/// Returns at once while the task is within its budget. Otherwise pauses it (status, inbox
/// item, a line in the chat) until new limits leave room — then restores the status it had
/// and returns — or until it is cancelled.
pub(super) async fn within(ctx: &Ctx, before_fix: bool) -> Result<(), Step> {
    let mut paused_from: Option<(TaskStatus, String)> = None;
    loop {
        let Some(limit) = ctx.state(|s| reached(&s.mem, before_fix)) else {
            if let Some((status, detail)) = paused_from {
                // Resolves the budget item, as any later record would.
                record(ctx, status, &detail, None).await;
            }
            return Ok(());
        };
        if paused_from.is_none() {
            paused_from = Some(ctx.state(|s| {
                (
                    s.mem.status.unwrap_or(TaskStatus::Pending),
                    s.mem.detail.clone(),
                )
            }));
        }
        let (task_id, title, changes, cost, tokens, url) = ctx.state(|s| {
            (
                s.task_id.clone(),
                s.title.clone(),
                s.mem.budget_changes,
                s.mem.spent.cost_usd,
                s.mem.spent.tokens,
                s.mem
                    .pr
                    .as_ref()
                    .map(|p| p.url.clone())
                    .or_else(|| s.mem.issue.as_ref().map(|i| i.url.clone())),
            )
        });
        let key = format!("budget-{changes}-{}", limit.key());
        let item = NewInboxItem {
            id: format!("{task_id}/{key}"),
            kind: InboxKind::Budget,
            title: format!("Budget reached: {}", limit.describe()),
            body: format!(
                "The task has spent {tokens} tokens (${cost:.2}). It is paused, nothing was \
                 stopped: raise the limit to go on from where it stopped, or cancel it."
            ),
            url,
            resolved: false,
        };
        record(
            ctx,
            TaskStatus::WaitingBudget,
            &format!("budget reached: {}", limit.describe()),
            Some(item),
        )
        .await;
        note(
            ctx,
            &key,
            format!(
                "**{title}** is paused: its budget is reached ({}). Raise it or cancel the task.",
                limit.describe()
            ),
        )
        .await;
        let woken = ctx
            .wait_condition(move |s| s.mem.cancel.is_some() || s.mem.budget_changes != changes)
            .await;
        if woken.is_err() || ctx.state(|s| s.mem.cancel.is_some()) {
            return Err(Step::Cancel(cancel_reason(ctx)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_s_own_limits_win_over_the_defaults_limit_by_limit() {
        let defaults = TaskBudget {
            max_tokens: Some(1_000),
            max_cost_usd: None,
            max_ci_attempts: Some(5),
        };
        let own = TaskBudget {
            max_tokens: Some(50),
            max_cost_usd: Some(2.0),
            max_ci_attempts: None,
        };
        assert_eq!(
            resolve(Some(own), &defaults),
            TaskBudget {
                max_tokens: Some(50),
                max_cost_usd: Some(2.0),
                max_ci_attempts: Some(5),
            }
        );
        assert_eq!(resolve(None, &defaults), defaults);
    }

    #[test]
    fn ci_attempts_count_only_before_a_fix_and_budgets_off_never_pause() {
        let mut mem = Memory {
            budget: Some(TaskBudget {
                max_tokens: Some(100),
                max_cost_usd: None,
                max_ci_attempts: Some(1),
            }),
            ci_attempts: 1,
            ..Memory::default()
        };
        assert_eq!(reached(&mem, false), None);
        assert!(matches!(
            reached(&mem, true),
            Some(Reached::CiAttempts { used: 1, limit: 1 })
        ));
        mem.spent.tokens = 100;
        assert!(matches!(
            reached(&mem, false),
            Some(Reached::Tokens { spent: 100, .. })
        ));
        mem.budget = None;
        assert_eq!(reached(&mem, true), None);
    }

    #[test]
    fn invalid_budget_signals_are_refused() {
        let payload = |v: serde_json::Value| Inbound {
            signal: "budget".into(),
            payload: Some(v),
            error: None,
        };
        assert!(parse(&payload(serde_json::json!({"id": "a", "max_tokens": 5}))).is_ok());
        assert!(parse(&payload(serde_json::json!({"id": "", "max_tokens": 5}))).is_err());
        assert!(parse(&payload(serde_json::json!({"id": "a", "max_tokens": -1}))).is_err());
        assert!(parse(&payload(serde_json::json!({"id": "a", "extra": 1}))).is_err());
    }
}
