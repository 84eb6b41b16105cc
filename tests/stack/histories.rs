//! Runs the paths of the main-thread and worker-task workflows for real and replays the
//! histories they produced against the same code (which catches nondeterminism such as
//! iterating a hash map). With `MAINLOOP_RECORD_HISTORIES=1` (`make histories`) it also writes them to
//! `workflows/tests/histories`, the corpus the determinism gate replays on every build.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_testkit::anthropic::Reply;
use serde_json::{Value, json};
use temporalio_client::{WorkflowExecutionInfo, WorkflowFetchHistoryOptions};

use crate::harness::{Stack, USER, WAIT, main_thread};
use crate::task_humans::asks_first;
use crate::tasks::{REPO, TaskStack, approve_plan};
use mainloop_store::TaskStatus;
use mainloop_testkit::github::{CiScript, Permission, ReviewState};

/// Waits until the thread has taken `turns` turns and has nothing in hand.
pub(crate) async fn settle(stack: &Stack, turns: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = stack.thread_state().await?;
        if state["turns_total"].as_u64() == Some(turns)
            && state["answering"].is_null()
            && state["pending"] == 0
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the thread did not settle: {state}");
        }
        // Settling is a state of the workflow, only observable by asking it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every run of workflow `workflow_id`, oldest first, as `temporal workflow list -o json`
/// describes it (`execution.runId`, `taskQueue`, `status`, …).
pub(crate) async fn runs_of(stack: &Stack, workflow_id: &str) -> Result<Vec<Value>> {
    let listed = stack
        .temporal
        .cli(&[
            "workflow",
            "list",
            "-q",
            &format!("WorkflowId = '{workflow_id}'"),
            "-o",
            "json",
        ])
        .await?;
    let mut runs: Vec<Value> = serde_json::from_str(&listed)?;
    runs.sort_by_key(|run| run["startTime"].as_str().unwrap_or_default().to_string());
    Ok(runs)
}

/// Every run of workflow `workflow_id`, oldest first, in the SDK's history JSON.
pub(crate) async fn histories(stack: &Stack, workflow_id: &str) -> Result<Vec<Vec<u8>>> {
    let runs: Vec<String> = runs_of(stack, workflow_id)
        .await?
        .iter()
        .map(|run| {
            run["execution"]["runId"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let client = mainloop_workflows::TemporalSettings::local(
        &stack.temporal.address(),
        stack.temporal.namespace(),
        "history-recorder",
    )?
    .connect()
    .await?;
    let mut out = Vec::new();
    for run in runs {
        let info = WorkflowExecutionInfo::builder()
            .namespace(stack.temporal.namespace())
            .workflow_id(workflow_id)
            .run_id(run)
            .build();
        let history = info
            .bind_untyped(client.clone())
            .fetch_history(WorkflowFetchHistoryOptions::default())
            .to_json()
            .await?;
        out.push(history);
    }
    Ok(out)
}

/// Replays what the main thread of `stack` recorded and, when asked to, commits it to the
/// corpus.
pub(crate) async fn keep(stack: &Stack, scenario: &str) -> Result<()> {
    keep_workflow(stack, &main_thread(), "main_thread", scenario).await
}

/// Replays every run of `workflow_id` and, when asked to, commits them to the corpus under
/// `kind`.
pub(crate) async fn keep_workflow(
    stack: &Stack,
    workflow_id: &str,
    kind: &str,
    scenario: &str,
) -> Result<()> {
    let runs = histories(stack, workflow_id).await?;
    let named: Vec<(String, Vec<u8>)> = runs
        .iter()
        .enumerate()
        .map(|(i, bytes)| (format!("{scenario}-run{}", i + 1), bytes.clone()))
        .collect();
    mainloop_workflows::replay::replay_all(named.clone()).await?;
    if std::env::var_os("MAINLOOP_RECORD_HISTORIES").is_some() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("workflows/tests/histories")
            .join(kind);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in named {
            let pretty: Value = serde_json::from_slice(&bytes)?;
            std::fs::write(
                dir.join(format!("{name}.json")),
                serde_json::to_string_pretty(&pretty)?,
            )
            .with_context(|| format!("writing {name}"))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_turn() -> Result<()> {
    let stack = Stack::start().await?;
    stack.post("hello", "k1").await?;
    stack.post("and again", "k2").await?;
    stack.wait_for_replies(2, WAIT).await?;
    settle(&stack, 2).await?;
    keep(&stack, "chat_turn").await
}

#[tokio::test(flavor = "multi_thread")]
async fn proposal_and_rejection() -> Result<()> {
    let stack = Stack::start().await?;
    stack.anthropic.push(Reply::tool_use(
        "propose_task",
        json!({"title": "Add dark mode", "description": "Follow the system theme.", "repo": "acme/web"}),
    ));
    stack.anthropic.push(Reply::text("Proposed."));
    stack.post("add dark mode to acme/web", "k1").await?;
    let thread = stack.wait_for_replies(1, WAIT).await?;
    let id = thread
        .iter()
        .flat_map(|m| m.proposals.iter())
        .map(|p| p.id.clone())
        .next()
        .context("no proposal")?;
    let rejected = reqwest::Client::new()
        .post(stack.url(&format!("/api/proposals/{id}/reject")))
        .send()
        .await?;
    assert_eq!(rejected.status(), 200);
    stack.post("fine, skip it", "k2").await?;
    stack.wait_for_replies(2, WAIT).await?;
    settle(&stack, 2).await?;
    keep(&stack, "proposal_and_rejection").await
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_and_retried_turns() -> Result<()> {
    let stack = Stack::start().await?;
    stack.anthropic.push(Reply::overloaded());
    stack.anthropic.push(Reply::text("after a retry"));
    stack.post("first", "k1").await?;
    stack.wait_for_replies(1, WAIT).await?;
    stack.anthropic.push(Reply::error(
        400,
        "invalid_request_error",
        "prompt is too long",
    ));
    stack.post("second", "k2").await?;
    stack.wait_for_replies(2, WAIT).await?;
    settle(&stack, 2).await?;
    keep(&stack, "failed_and_retried_turns").await
}

/// Posts "first", answered "slowly" after 6 s, and while that turn runs signals three task
/// events ("Plan 1 ready" … "Plan 3 ready"), so they queue in the thread's inbox.
pub(crate) async fn queue_task_events_behind_a_slow_turn(stack: &Stack) -> Result<()> {
    stack
        .anthropic
        .push(Reply::text("slowly").with_first_token_delay(Duration::from_secs(6)));
    let mut events = stack.events(0).await?;
    stack.post("first", "k1").await?;
    events
        .collect_until(WAIT, |e| e.event == "message.started")
        .await?;
    for n in 1..=3 {
        let event = format!(r#"{{"id": "e{n}", "task_id": "t{n}", "text": "Plan {n} ready"}}"#);
        stack.signal("task_event", Some(&event)).await?;
    }
    Ok(())
}

/// Task events queued while a turn runs wait behind a message sent after them: the user's
/// input goes first (the `user-input-first` patch).
#[tokio::test(flavor = "multi_thread")]
async fn user_input_overtakes_task_events() -> Result<()> {
    let stack = Stack::start().await?;
    queue_task_events_behind_a_slow_turn(&stack).await?;
    stack.post("second", "k2").await?;
    stack.wait_for_replies(2, WAIT).await?;
    settle(&stack, 2).await?;
    let thread = stack.thread().await?;
    let order: Vec<&str> = thread.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        order,
        [
            "first",
            "slowly",
            "second",
            "Echo: second",
            "Plan 1 ready",
            "Plan 2 ready",
            "Plan 3 ready"
        ],
        "the thread in order"
    );
    keep(&stack, "user_input_overtakes_task_events").await
}

#[tokio::test(flavor = "multi_thread")]
async fn ignored_signals() -> Result<()> {
    let stack = Stack::start().await?;
    stack.post("first", "k1").await?;
    stack.wait_for_replies(1, WAIT).await?;
    let mut events = stack.events(stack.last_event_id().await?).await?;
    for input in [r#"{"bogus": 1}"#, r#"{"message_id": "missing"}"#] {
        stack.signal("message", Some(input)).await?;
    }
    stack
        .signal(
            "proposal_decision",
            Some(r#"{"proposal_id": "p", "decision": "maybe"}"#),
        )
        .await?;
    let mut notices = 0;
    events
        .collect_until(WAIT, |e| {
            notices += usize::from(e.event == "thread.notice");
            notices == 3
        })
        .await?;
    stack.post("second", "k2").await?;
    stack.wait_for_replies(2, WAIT).await?;
    // The signal naming a missing message took a turn (that found nothing).
    settle(&stack, 3).await?;
    keep(&stack, "ignored_signals").await
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_and_continue_as_new() -> Result<()> {
    let stack = Stack::start_with(&[
        ("MAINLOOP_TURNS_PER_RUN", "3"),
        ("MAINLOOP_COMPACTION_THRESHOLD", "4"),
        ("MAINLOOP_KEEP_RECENT", "2"),
    ])
    .await?;
    for i in 0..5 {
        stack
            .post(&format!("message {i}"), &format!("k{i}"))
            .await?;
    }
    stack.wait_for_replies(5, WAIT).await?;
    settle(&stack, 5).await?;
    assert!(!stack.store.compactions(USER).await?.is_empty());
    keep(&stack, "compaction_and_continue_as_new").await
}

/// A run whose history passes `MAINLOOP_THREAD_HISTORY_LIMIT` continues as new long before its
/// turns run out, and the conversation goes on across the runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_history_continues_as_new_before_its_turns_run_out() -> Result<()> {
    let stack = Stack::start_with(&[
        ("MAINLOOP_TURNS_PER_RUN", "100"),
        ("MAINLOOP_THREAD_HISTORY_LIMIT", "10"),
    ])
    .await?;
    for i in 0..3 {
        stack
            .post(&format!("message {i}"), &format!("k{i}"))
            .await?;
        stack.wait_for_replies(i + 1, WAIT).await?;
    }
    settle(&stack, 3).await?;
    let runs = runs_of(&stack, &main_thread()).await?;
    assert!(runs.len() >= 3, "{} runs for 3 turns", runs.len());
    assert_eq!(stack.thread_state().await?["turns_total"], 3);
    keep(&stack, "continues_as_new_on_history_length").await
}

/// A main thread started on mainloop's task queue (as every thread was before threads had a
/// queue of their own) moves to the chat queue when it continues as new, and answers there.
#[tokio::test(flavor = "multi_thread")]
async fn a_thread_from_before_the_chat_queue_moves_there() -> Result<()> {
    let stack = Stack::start_with(&[("MAINLOOP_TURNS_PER_RUN", "1")]).await?;
    let input = json!({ "user": USER }).to_string();
    stack
        .temporal
        .cli(&[
            "workflow",
            "start",
            "--task-queue",
            mainloop_workflows::DEFAULT_TASK_QUEUE,
            "--type",
            "MainThreadWorkflow",
            "--workflow-id",
            &main_thread(),
            "--input",
            &input,
        ])
        .await?;
    stack.post("hello", "k1").await?;
    stack.wait_for_replies(1, WAIT).await?;
    stack.post("and again", "k2").await?;
    stack.wait_for_replies(2, WAIT).await?;
    settle(&stack, 2).await?;
    let runs = runs_of(&stack, &main_thread()).await?;
    let queues: Vec<&str> = runs
        .iter()
        .map(|run| run["taskQueue"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(queues, ["mainloop", "mainloop-chat", "mainloop-chat"]);
    keep(&stack, "moves_to_its_own_queue").await
}

/// Waits until workflow `workflow_id` has closed (completed, failed, …).
pub(crate) async fn wait_closed(stack: &Stack, workflow_id: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let described = stack
            .temporal
            .cli(&["workflow", "describe", "-w", workflow_id, "-o", "json"])
            .await?;
        let described: Value = serde_json::from_str(&described)?;
        let status = described["workflowExecutionInfo"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !status.is_empty() && !status.contains("RUNNING") {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{workflow_id} is still {status}");
        }
        // Closing is a state of the workflow, only observable by asking Temporal.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_task_input(ts: &TaskStack, id: &str, what: &str, body: Value) -> Result<()> {
    let (status, answer) = ts.task_input(id, what, body).await?;
    if status != 202 {
        bail!("{what} answered {status}: {answer}");
    }
    Ok(())
}

/// Questions, answers, a revised plan, a CI fix, a review asking for changes, and a merge:
/// every phase of a task that ends well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_from_questions_to_merge() -> Result<()> {
    // Every answer comes from the app while the wait's poll timer still runs: the wait
    // cancels it (the `human-wait-timer-cancelled` change).
    let ts = TaskStack::start_with(&[
        ("MAINLOOP_HUMAN_POLL", "10m"),
        ("MAINLOOP_HUMAN_POLL_MAX", "10m"),
    ])
    .await?;
    ts.stack.anthropic.set_default(asks_first);
    ts.github.set_ci(REPO, CiScript::FailTimes(1))?;
    ts.github.add_user("maria");
    ts.github
        .add_collaborator(REPO, "maria", Permission::Write)?;
    let id = ts.confirmed_task(json!({})).await?;
    let workflow = format!("task/{id}");
    ts.wait_status(&id, TaskStatus::WaitingQuestions).await?;
    wait_for_timer(&ts.stack, &workflow).await?;
    post_task_input(
        &ts,
        &id,
        "answer",
        json!({"answers": {"greeting": "Hi", "module": "src/greet.rs"}}),
    )
    .await?;
    ts.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
    wait_for_timer(&ts.stack, &workflow).await?;
    post_task_input(
        &ts,
        &id,
        "review-plan",
        json!({"action": "revise", "text": "Also add a doc comment"}),
    )
    .await?;
    ts.wait_for(|| async { Ok((ts.runs(&id, "plan").await? == 3).then_some(())) })
        .await?;
    approve_plan(&ts, &id).await?;
    let ready = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    let pr = ready.pr_number.context("PR")? as u64;
    ts.github
        .submit_review(
            "maria",
            REPO,
            pr,
            ReviewState::ChangesRequested,
            "Please call it hello()",
            vec![],
        )
        .await?;
    ts.wait_for(|| async {
        let task = ts.task(&id).await?;
        Ok(
            (task.status == TaskStatus::ReadyForReview && ts.runs(&id, "feedback").await? == 1)
                .then_some(()),
        )
    })
    .await?;
    ts.github.merge_pr(REPO, pr).await?;
    ts.wait_status(&id, TaskStatus::Merged).await?;
    wait_closed(&ts.stack, &workflow).await?;
    // The answers and the revision came while their waits' poll timers ran: each wait
    // cancelled its timer rather than leave it to fire later.
    let last: Value = serde_json::from_slice(
        histories(&ts.stack, &workflow)
            .await?
            .last()
            .context("no run")?,
    )?;
    let cancelled = last["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["attributes"]["TimerCanceledEventAttributes"].is_object())
        .count();
    assert!(cancelled >= 2, "{cancelled} timers cancelled");
    // It started on the intake queue and left it, with one continue-as-new, when it first
    // waited for a person.
    let queues: Vec<String> = runs_of(&ts.stack, &workflow)
        .await?
        .iter()
        .map(|run| run["taskQueue"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(queues, ["mainloop-intake", "mainloop"]);
    // Runs that start at behaviour level 1 ask no patch, and make the GitHub calls that go
    // together in one activity each; at level 2 they write their news to the thread with
    // their status, and signal nobody.
    let runs: Vec<Value> = histories(&ts.stack, &workflow)
        .await?
        .iter()
        .map(|run| serde_json::from_slice(run))
        .collect::<serde_json::Result<_>>()?;
    let events: Vec<&Value> = runs
        .iter()
        .flat_map(|run| run["events"].as_array().into_iter().flatten())
        .collect();
    let patches = events
        .iter()
        .filter(|e| e["attributes"]["MarkerRecordedEventAttributes"]["marker_name"] == "core_patch")
        .count();
    assert_eq!(patches, 0, "patch markers in a level-1 task");
    let signals = events
        .iter()
        .filter(|e| {
            e["attributes"]["SignalExternalWorkflowExecutionInitiatedEventAttributes"].is_object()
        })
        .count();
    assert_eq!(signals, 0, "signals sent by a level-2 task");
    let scheduled = |name: &str| {
        events
            .iter()
            .filter(|e| {
                e["attributes"]["ActivityTaskScheduledEventAttributes"]["activity_type"]["name"]
                    == name
            })
            .count()
    };
    // Answers, two plans and the approval; the start; one ready for review per round.
    assert_eq!(scheduled("github.update_issue_and_comment"), 4);
    assert_eq!(scheduled("github.start"), 1);
    assert_eq!(scheduled("github.mark_ready_and_comment"), 2);
    for alone in [
        "github.prepare",
        "github.ensure_issue",
        "github.update_issue",
        "github.mark_ready",
    ] {
        assert_eq!(scheduled(alone), 0, "{alone} on its own");
    }
    // The corpus keeps the histories this scenario recorded before: `from_questions_to_merge`
    // from before the intake queue (a task that never moves), `…_via_intake` from before
    // `implementing` was recorded at the approval, `…_implementing_at_approval` from before a
    // wait for a person cancelled its poll timer, `…_human_timers_cancelled` from before
    // behaviour levels (its runs ask each patch), and `…_level_1` from before level 2 (its
    // runs signal the main thread their news).
    keep_workflow(
        &ts.stack,
        &workflow,
        "task",
        "from_questions_to_merge_level_2",
    )
    .await?;
    settle(&ts.stack, 1).await?;
    // `task_started_and_told` stays in the corpus: a thread from before it started its tasks
    // with their search attributes.
    keep_workflow(
        &ts.stack,
        &main_thread(),
        "main_thread",
        "task_started_with_search_attributes",
    )
    .await
}

/// A task that fails, is retried, fails again and is cancelled while failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_failed_retried_and_cancelled() -> Result<()> {
    let ts = TaskStack::start_with(&[
        ("MAINLOOP_MAX_CI_FIXES", "1"),
        // No CI-attempts budget, so the phase limit fails the task.
        ("MAINLOOP_TASK_MAX_CI_ATTEMPTS", "0"),
    ])
    .await?;
    ts.github.set_ci(REPO, CiScript::NeverPass)?;
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    ts.wait_status(&id, TaskStatus::Failed).await?;
    post_task_input(&ts, &id, "retry", json!({})).await?;
    ts.wait_for(|| async { Ok((ts.runs(&id, "fix").await? == 2).then_some(())) })
        .await?;
    ts.wait_status(&id, TaskStatus::Failed).await?;
    post_task_input(&ts, &id, "cancel", json!({"reason": "not needed"})).await?;
    // Still `failed` until the workflow takes the cancel, so not `wait_status`.
    ts.wait_for(|| async {
        Ok((ts.task(&id).await?.status == TaskStatus::Cancelled).then_some(()))
    })
    .await?;
    let workflow = format!("task/{id}");
    wait_closed(&ts.stack, &workflow).await?;
    keep_workflow(&ts.stack, &workflow, "task", "failed_retried_cancelled").await
}

/// Waits until the latest run of `workflow_id` waits on a timer and nothing else (its last
/// event is `TimerStarted`): a nudge sent now lands in that wait, not before it.
pub(crate) async fn wait_for_timer(stack: &Stack, workflow_id: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let runs = histories(stack, workflow_id).await?;
        if let Some(latest) = runs.last() {
            let history: Value = serde_json::from_slice(latest)?;
            let waiting = history["events"]
                .as_array()
                .and_then(|events| events.last())
                .is_some_and(|event| {
                    event["attributes"]["TimerStartedEventAttributes"].is_object()
                });
            if waiting {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{workflow_id} never settled into a timer");
        }
        // Waiting on a timer is a state of the workflow, only observable in its history.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A task paused on its token budget right after the plan job, raised through the API, then
/// carried on to a merge: the budget path, behind its `task-budgets` patch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_paused_on_budget_and_raised() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let id = ts
        .confirmed_task(json!({ "budget": {"max_tokens": 1} }))
        .await?;
    ts.wait_status(&id, TaskStatus::WaitingBudget).await?;
    post_task_input(&ts, &id, "budget", json!({"max_tokens": 10_000_000})).await?;
    approve_plan(&ts, &id).await?;
    let ready = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    let pr = ready.pr_number.context("PR")? as u64;
    ts.github.merge_pr(REPO, pr).await?;
    ts.wait_status(&id, TaskStatus::Merged).await?;
    let workflow = format!("task/{id}");
    wait_closed(&ts.stack, &workflow).await?;
    keep_workflow(&ts.stack, &workflow, "task", "paused_on_budget_and_raised").await
}
