//! Runs every path of the main-thread workflow for real and replays the histories it
//! produced against the same code (which catches nondeterminism such as iterating a hash
//! map). With `MAINLOOP_RECORD_HISTORIES=1` (`make histories`) it also writes them to
//! `workflows/tests/histories`, the corpus the determinism gate replays on every build.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_testkit::anthropic::Reply;
use serde_json::{Value, json};
use temporalio_client::{WorkflowExecutionInfo, WorkflowFetchHistoryOptions};

use crate::harness::{Stack, USER, WAIT, main_thread};

/// Waits until the thread has taken `turns` turns and has nothing in hand.
async fn settle(stack: &Stack, turns: u64) -> Result<()> {
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

/// Every run of the main thread, oldest first, in the SDK's history JSON.
async fn histories(stack: &Stack) -> Result<Vec<Vec<u8>>> {
    let listed = stack
        .temporal
        .cli(&[
            "workflow",
            "list",
            "-q",
            &format!("WorkflowId = '{}'", main_thread()),
            "-o",
            "json",
        ])
        .await?;
    let mut runs: Vec<(String, String)> = serde_json::from_str::<Vec<Value>>(&listed)?
        .iter()
        .map(|run| {
            (
                run["startTime"].as_str().unwrap_or_default().to_string(),
                run["execution"]["runId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    runs.sort();
    let client = mainloop_workflows::TemporalSettings::local(
        &stack.temporal.address(),
        stack.temporal.namespace(),
        "history-recorder",
    )?
    .connect()
    .await?;
    let mut out = Vec::new();
    for (_, run) in runs {
        let info = WorkflowExecutionInfo::builder()
            .namespace(stack.temporal.namespace())
            .workflow_id(main_thread())
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

/// Replays what `stack` recorded and, when asked to, commits it to the corpus.
async fn keep(stack: &Stack, scenario: &str) -> Result<()> {
    let runs = histories(stack).await?;
    let named: Vec<(String, Vec<u8>)> = runs
        .iter()
        .enumerate()
        .map(|(i, bytes)| (format!("{scenario}-run{}", i + 1), bytes.clone()))
        .collect();
    mainloop_workflows::replay::replay_all(named.clone()).await?;
    if std::env::var_os("MAINLOOP_RECORD_HISTORIES").is_some() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/tests/histories/main_thread");
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
