//! More recorded paths for the replay corpus, each taking what the coverage gate
//! (`workflows/tests/coverage`) found no history for: a main thread started without its
//! search attribute, a task approved on GitHub, nudged by a webhook, continued as new and
//! closed without merging, a task cancelled while a job runs, a task whose CI runs out of fix
//! attempts at the default limits, task news queued behind a turn written at once, and a task
//! nudged by a webhook while it was busy between two waits.

use anyhow::{Context, Result};
use base64::Engine as _;
use mainloop_store::{InboxKind, TaskStatus};
use mainloop_testkit::github::CiScript;
use serde_json::json;

use crate::harness::{Stack, USER, WAIT, main_thread};
use crate::histories::{
    histories, keep, keep_workflow, queue_task_events_behind_a_slow_turn, settle, wait_closed,
    wait_for_timer,
};
use crate::tasks::{REPO, TASK_WAIT, TaskStack, comment_reads};

/// A thread started by hand (as before the API set its search attribute at start) sets it
/// itself.
#[tokio::test(flavor = "multi_thread")]
async fn main_thread_started_bare() -> Result<()> {
    let stack = Stack::start().await?;
    stack
        .temporal
        .cli(&[
            "workflow",
            "start",
            "--type",
            "MainThreadWorkflow",
            "--task-queue",
            mainloop_workflows::DEFAULT_TASK_QUEUE,
            "--workflow-id",
            &main_thread(),
            "--input",
            &json!({ "user": USER }).to_string(),
        ])
        .await?;
    stack.post("hello", "k1").await?;
    stack.wait_for_replies(1, WAIT).await?;
    settle(&stack, 1).await?;
    keep(&stack, "started_bare").await
}

/// The plan approved by a collaborator's comment on the issue (read by polling GitHub), a
/// webhook nudge while the PR waits for review, and the PR closed unmerged; the history limit
/// is so low that the task continues as new along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_on_github_closed_unmerged() -> Result<()> {
    let ts = TaskStack::start_with(&[
        ("MAINLOOP_TASK_HISTORY_LIMIT", "40"),
        // Only the nudge ends the wait for a review in time.
        ("MAINLOOP_REVIEW_POLL", "10m"),
        ("MAINLOOP_REVIEW_POLL_MAX", "10m"),
    ])
    .await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let (id, issue) = ts.plan_under_review("maria").await?;
    // Reply once the task is polling the issue, so the approval is read by a poll.
    let reads = |v: &mainloop_testkit::github::GitHubView<'_>| comment_reads(v, issue);
    let seen = ts.github.view(reads);
    ts.github.wait_until(TASK_WAIT, |v| reads(v) > seen).await?;
    ts.github
        .comment_as("maria", REPO, issue, "LGTM, ship it")?;
    let ready = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    let pr = ready.pr_number.context("PR")? as u64;
    ts.github.close_pr(REPO, pr)?;
    let workflow = format!("task/{id}");
    wait_for_timer(&ts.stack, &workflow).await?;
    ts.stack
        .temporal
        .cli(&[
            "workflow", "signal", "-w", &workflow, "--name", "github", "--input", "{}",
        ])
        .await?;
    ts.wait_status(&id, TaskStatus::Closed).await?;
    wait_closed(&ts.stack, &workflow).await?;
    keep_workflow(&ts.stack, &workflow, "task", "on_github_closed_unmerged").await
}

/// A cancel while the implement job runs: the job's activity is cancelled and the job
/// stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_cancelled_mid_job() -> Result<()> {
    let ts = TaskStack::start().await?;
    let marker = ts.implement_runs_until_killed("history-gate");
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    ts.wait_status(&id, TaskStatus::Implementing).await?;
    ts.wait_for_log(&id, &marker).await?;
    let (status, body) = ts
        .task_input(&id, "cancel", json!({"reason": "changed my mind"}))
        .await?;
    anyhow::ensure!(status == 202, "cancel answered {status}: {body}");
    ts.wait_status(&id, TaskStatus::Cancelled).await?;
    let workflow = format!("task/{id}");
    wait_closed(&ts.stack, &workflow).await?;
    keep_workflow(&ts.stack, &workflow, "task", "cancelled_mid_job").await
}

/// CI that never passes, at the default limits (five fix jobs a CI phase, five a task): the
/// task pauses on its CI-attempts budget and asks, instead of failing at the phase limit (the
/// `ci-budget-governs` patch); a raise of one runs one more fix, and it goes on to a merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_out_of_ci_attempts_pauses_at_the_default_limits() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.github.set_ci(REPO, CiScript::NeverPass)?;
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    let paused = ts.wait_status(&id, TaskStatus::WaitingBudget).await?;
    assert_eq!(ts.runs(&id, "fix").await?, 5);
    assert_eq!(paused.ci_attempts, 5);
    assert!(
        paused.detail.contains("5 CI fix attempts used of 5"),
        "{}",
        paused.detail
    );
    let inbox = ts.stack.store.list_inbox(USER, 50).await?;
    assert!(
        inbox
            .iter()
            .any(|i| i.kind == InboxKind::Budget && !i.resolved)
            && !inbox.iter().any(|i| i.kind == InboxKind::Failed),
        "{inbox:?}"
    );
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let (status, body) = ts
        .task_input(&id, "budget", json!({"raise_ci_attempts": 1}))
        .await?;
    assert_eq!(status, 202, "{body}");
    let ready = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    assert_eq!(ready.pr_number, paused.pr_number);
    assert_eq!(ts.runs(&id, "fix").await?, 6);
    ts.github
        .merge_pr(REPO, ready.pr_number.context("PR")? as u64)
        .await?;
    ts.wait_status(&id, TaskStatus::Merged).await?;
    let workflow = format!("task/{id}");
    wait_closed(&ts.stack, &workflow).await?;
    keep_workflow(
        &ts.stack,
        &workflow,
        "task",
        "out_of_ci_attempts_paused_and_raised",
    )
    .await
}

/// How many local activities of type `name` the main thread's runs recorded.
async fn local_activities(stack: &Stack, name: &str) -> Result<usize> {
    let mut count = 0;
    for run in histories(stack, &main_thread()).await? {
        let history: serde_json::Value = serde_json::from_slice(&run)?;
        for event in history["events"].as_array().context("events")? {
            let marker = &event["attributes"]["MarkerRecordedEventAttributes"];
            if marker["marker_name"] != "core_local_activity" {
                continue;
            }
            let data = marker["details"]["data"]["payloads"][0]["data"]
                .as_str()
                .context("marker data")?;
            let data: serde_json::Value =
                serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(data)?)?;
            if data["activity_type"] == name {
                count += 1;
            }
        }
    }
    Ok(count)
}

/// Task news queued behind a slow turn is written to the thread by one `thread.notes` (the
/// `task-notes-batched` patch), in the order it came, after the reply.
#[tokio::test(flavor = "multi_thread")]
async fn task_events_queued_behind_a_turn_are_noted_together() -> Result<()> {
    let stack = Stack::start().await?;
    queue_task_events_behind_a_slow_turn(&stack).await?;
    stack.wait_for_replies(1, WAIT).await?;
    settle(&stack, 1).await?;
    let thread = stack.thread().await?;
    let order: Vec<&str> = thread.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        order,
        [
            "first",
            "slowly",
            "Plan 1 ready",
            "Plan 2 ready",
            "Plan 3 ready"
        ]
    );
    assert_eq!(local_activities(&stack, "thread.notes").await?, 1);
    assert_eq!(local_activities(&stack, "thread.note").await?, 0);
    keep(&stack, "task_events_noted_together").await
}

/// How many `github` signals (webhook nudges) the runs of `workflow_id` have taken.
pub(crate) async fn github_signals(stack: &Stack, workflow_id: &str) -> Result<usize> {
    let mut count = 0;
    for run in histories(stack, workflow_id).await? {
        let history: serde_json::Value = serde_json::from_slice(&run)?;
        count += history["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|event| {
                event["attributes"]["WorkflowExecutionSignaledEventAttributes"]["signal_name"]
                    == "github"
            })
            .count();
    }
    Ok(count)
}

/// A webhook delivered while the implement job runs, so the task's wait for CI starts with a
/// nudge it has not acted on: it looks at once (the `nudged-before-the-wait` patch). CI and
/// review polls of ten minutes leave nothing else that could move it in time; before the
/// patch, that nudge was lost and the task sat in `ci` until the next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_nudged_before_its_wait() -> Result<()> {
    let ts = TaskStack::start_with(&[
        ("GITHUB_WEBHOOK_SECRET", crate::webhooks::SECRET),
        ("MAINLOOP_CI_POLL", "10m"),
        ("MAINLOOP_CI_POLL_MAX", "10m"),
        ("MAINLOOP_REVIEW_POLL", "10m"),
        ("MAINLOOP_REVIEW_POLL_MAX", "10m"),
    ])
    .await?;
    let job = crate::task_recovery::HeldJob::start(&ts).await?;
    let id = job.task.clone();
    let workflow = format!("task/{id}");
    let issue = ts.task(&id).await?.issue_number.context("issue")?;
    // Someone comments on the issue while the job runs.
    let comment = json!({
        "action": "created",
        "repository": {"full_name": REPO},
        "issue": {"number": issue},
    });
    let (status, body) = crate::webhooks::deliver(
        &ts,
        crate::webhooks::SECRET,
        "issue_comment",
        "busy-1",
        &comment,
    )
    .await?;
    assert_eq!((status, body), (202, json!({"accepted": true, "tasks": 1})));
    let deadline = tokio::time::Instant::now() + WAIT;
    while github_signals(&ts.stack, &workflow).await? == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the nudge never reached {workflow}"
        );
        // The signal's arrival is only observable in the history.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    job.release()?;

    let ready = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    let pr = ready.pr_number.context("PR")?;
    ts.github.merge_pr(REPO, pr as u64).await?;
    wait_for_timer(&ts.stack, &workflow).await?;
    let merged = json!({
        "action": "closed",
        "repository": {"full_name": REPO},
        "pull_request": {"number": pr, "merged": true},
    });
    let (status, body) = crate::webhooks::deliver(
        &ts,
        crate::webhooks::SECRET,
        "pull_request",
        "merged-1",
        &merged,
    )
    .await?;
    assert_eq!((status, body), (202, json!({"accepted": true, "tasks": 1})));
    ts.wait_status(&id, TaskStatus::Merged).await?;
    wait_closed(&ts.stack, &workflow).await?;
    keep_workflow(&ts.stack, &workflow, "task", "nudged_before_its_wait").await
}
