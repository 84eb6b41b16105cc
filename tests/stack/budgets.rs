//! Task budgets end to end: a task that reaches a limit on tokens or CI fix attempts pauses in
//! `waiting_budget` with an inbox item (nothing is killed), goes on from the same step with the
//! same issue and PR once the limit is raised, and can be cancelled while it waits.

use std::time::Instant;

use anyhow::{Context, Result};
use mainloop_store::{InboxItem, InboxKind, TaskStatus};
use mainloop_testkit::github::{CiScript, IssueState};
use serde_json::json;

use crate::fault_suite::figures;
use crate::harness::USER;
use crate::tasks::{REPO, TaskStack, approve_plan};

/// Waits until the task has left `waiting_budget`; returns how long that took in ms.
async fn resumed(ts: &TaskStack, id: &str, since: Instant) -> Result<u128> {
    ts.wait_for(|| async {
        Ok((ts.task(id).await?.status != TaskStatus::WaitingBudget).then_some(()))
    })
    .await?;
    Ok(since.elapsed().as_millis())
}

async fn budget_items(ts: &TaskStack, id: &str) -> Result<Vec<InboxItem>> {
    Ok(ts
        .stack
        .store
        .list_inbox(USER, 100)
        .await?
        .into_iter()
        .filter(|i| i.kind == InboxKind::Budget && i.task_id.as_deref() == Some(id))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tiny_token_budget_pauses_after_the_plan_job_and_a_raise_goes_on_to_ready() -> Result<()>
{
    let ts = TaskStack::start_with(&[("MAINLOOP_TASK_MAX_TOKENS", "100")]).await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let id = ts.confirmed_task(json!({})).await?;
    let paused = ts.wait_status(&id, TaskStatus::WaitingBudget).await?;
    assert_eq!(paused.budget.max_tokens, Some(100));
    assert_eq!(paused.budget.max_ci_attempts, Some(5), "the default");
    let spent = paused.cost.input_tokens + paused.cost.output_tokens + paused.cost.cache_tokens;
    assert!(spent >= 100, "paused at {spent} tokens");
    assert!(paused.detail.contains("tokens"), "{}", paused.detail);
    // Paused right after the plan job, which finished: nothing was killed, nothing built on it.
    let runs = ts.stack.store.task_runs(USER, &id).await?;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].mode, "plan");
    assert_eq!(runs[0].status, "succeeded");
    assert!(paused.plan.is_some());
    let issue = paused.issue_number.context("issue")?;
    let items = budget_items(&ts, &id).await?;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(!items[0].resolved);
    assert!(items[0].title.contains("100"), "{}", items[0].title);

    // A raise that leaves no room is refused at once; so is one of a limit the task lacks.
    let (status, body) = ts
        .task_input(&id, "budget", json!({"raise_tokens": 1}))
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_budget");
    let (status, body) = ts
        .task_input(&id, "budget", json!({"raise_cost_usd": 1.0}))
        .await?;
    assert_eq!(status, 422, "{body}");
    let raised = Instant::now();
    let (status, body) = ts
        .task_input(&id, "budget", json!({"max_tokens": 10_000_000}))
        .await?;
    assert_eq!(status, 202, "{body}");
    let resume_ms = resumed(&ts, &id, raised).await?;

    approve_plan(&ts, &id).await?;
    let ready = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    assert_eq!(ready.issue_number, Some(issue));
    assert_eq!(ready.budget.max_tokens, Some(10_000_000));
    assert_eq!(ts.github.pulls(REPO).len(), 1);
    assert_eq!(ts.runs(&id, "plan").await?, 1);
    assert_eq!(ts.runs(&id, "implement").await?, 1);
    assert!(budget_items(&ts, &id).await?.iter().all(|i| i.resolved));
    // Not waiting on its budget any more.
    let (status, _) = ts
        .task_input(&id, "budget", json!({"raise_tokens": 1000}))
        .await?;
    assert_eq!(status, 409);
    figures::record(
        "budget_tokens_pause_and_raise",
        "paused after the plan job at the token limit, 0 jobs killed, resumed on raise with the same issue",
        1,
        json!({
            "token_limit": 100,
            "tokens_spent_at_pause": spent,
            "jobs_killed": runs.iter().filter(|r| r.status != "succeeded").count(),
            "raise_to_resumed_ms": resume_ms,
            "issues": 1,
            "prs": ts.github.pulls(REPO).len(),
        }),
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ci_attempts_limit_pauses_instead_of_failing_and_a_raise_fixes_again() -> Result<()> {
    let ts = TaskStack::start_with(&[("MAINLOOP_TASK_MAX_CI_ATTEMPTS", "1")]).await?;
    ts.github.set_ci(REPO, CiScript::FailTimes(2))?;
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    let paused = ts.wait_status(&id, TaskStatus::WaitingBudget).await?;
    assert_eq!(paused.ci_attempts, 1);
    assert_eq!(paused.budget.max_ci_attempts, Some(1));
    assert!(
        paused.detail.contains("CI fix attempts"),
        "{}",
        paused.detail
    );
    assert_eq!(ts.runs(&id, "fix").await?, 1);
    let pr = paused.pr_number.context("PR")?;

    let raised = Instant::now();
    let (status, body) = ts
        .task_input(&id, "budget", json!({"raise_ci_attempts": 1}))
        .await?;
    assert_eq!(status, 202, "{body}");
    let resume_ms = resumed(&ts, &id, raised).await?;
    let ready = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    assert_eq!(ready.pr_number, Some(pr));
    assert_eq!(ready.ci_attempts, 2);
    assert_eq!(ts.runs(&id, "fix").await?, 2);
    assert_eq!(ts.runs(&id, "implement").await?, 1);
    assert_eq!(ts.github.pulls(REPO).len(), 1);
    figures::record(
        "budget_ci_attempts_pause_and_raise",
        "CI failing past the attempts limit pauses (not failed); a raise of 1 fixes once more on the same PR",
        1,
        json!({
            "ci_attempts_limit": 1,
            "fix_jobs_at_pause": 1,
            "fix_jobs_total": 2,
            "raise_to_resumed_ms": resume_ms,
            "prs": 1,
        }),
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_waiting_on_its_own_budget_can_be_cancelled() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    // The task's own limit, set when confirming it, instead of the default (none).
    let id = ts
        .confirmed_task(json!({ "budget": {"max_tokens": 1} }))
        .await?;
    let paused = ts.wait_status(&id, TaskStatus::WaitingBudget).await?;
    assert_eq!(paused.budget.max_tokens, Some(1));
    assert_eq!(ts.runs(&id, "plan").await?, 1);

    let cancelled = Instant::now();
    let (status, body) = ts
        .task_input(&id, "cancel", json!({"reason": "too expensive"}))
        .await?;
    assert_eq!(status, 202, "{body}");
    let task = ts.wait_status(&id, TaskStatus::Cancelled).await?;
    let cancel_ms = cancelled.elapsed().as_millis();
    let runs = ts.stack.store.task_runs(USER, &id).await?;
    assert!(runs.iter().all(|r| r.status != "running"), "{runs:?}");
    let issue = task.issue_number.context("issue")? as u64;
    assert_eq!(
        ts.github.issue(REPO, issue).context("issue")?.state,
        IssueState::Closed
    );
    assert!(budget_items(&ts, &id).await?.iter().all(|i| i.resolved));
    let (status, _) = ts
        .task_input(&id, "budget", json!({"max_tokens": 1000}))
        .await?;
    assert_eq!(status, 409);
    figures::record(
        "budget_cancel_while_paused",
        "a task paused on its own budget cancels: issue closed, no job left running",
        1,
        json!({ "cancel_to_cancelled_ms": cancel_ms, "running_jobs_after": 0 }),
    )?;
    Ok(())
}
