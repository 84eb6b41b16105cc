//! Duplicate and racing requests: many identical `POST /api/messages` with one
//! Idempotency-Key (also while the API is killed and restarted), a key reused for another
//! body, and racing state changes on tasks (confirm, answer, cancel). Each must have exactly
//! one effect; the losers are told so (a replay, 409 or 422), never a 5xx.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::join_all;
use mainloop_store::{Role, TaskStatus};
use serde_json::{Value, json};

use super::figures;
use crate::harness::{Stack, USER, WAIT, assert_one_reply_each};
use crate::task_humans::asks_first;
use crate::tasks::TaskStack;

/// How many clients race in each wave (`MAINLOOP_FAULT_RACERS`, default 50).
fn racers() -> usize {
    env_number("MAINLOOP_FAULT_RACERS", 50)
}

/// A count from the environment, so a quick local run can use less than the suite's default.
pub(super) fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A duration in seconds from the environment.
pub(super) fn env_seconds(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// One POST attempt: the status and body, or `None` when the API could not be reached.
pub(super) async fn post_once(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    content: &str,
) -> Option<(u16, Value)> {
    let response = http
        .post(url)
        .header("idempotency-key", key)
        .json(&json!({ "content": content }))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

/// Posts as a careful client does: the same key again after a connection error or a 5xx,
/// until the API answers something else. Returns the final answer and every status seen
/// (0 for a connection error).
pub(super) async fn post_retrying(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    content: &str,
    timeout: Duration,
) -> Result<(u16, Value, Vec<u16>)> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match post_once(http, url, key, content).await {
            Some((status, body)) if status < 500 => {
                seen.push(status);
                return Ok((status, body, seen));
            }
            Some((status, _)) => seen.push(status),
            None => seen.push(0),
        }
        if Instant::now() > deadline {
            bail!("no answer for key {key} within {timeout:?}: {seen:?}");
        }
        // A client's retry delay: the API coming back is only observable by trying.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: 2 waves of 50 racing POSTs, one during an API kill (about 35 s); run by `make test-faults` and by `make test` (make test-faults-short); results in docs/reliability.md"]
async fn racing_posts_with_one_idempotency_key_store_one_message() -> Result<()> {
    let started = Instant::now();
    let racers = racers();
    let mut stack = Stack::start().await?;
    // A request caught by the kill must end in an error the racer retries, never hang: one
    // run of this test sat idle after the restart with its work done and no connection open.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = stack.url("/api/messages");

    // Wave 1: every racer sends the same key and body at once.
    let answers =
        join_all((0..racers).map(|_| post_retrying(&http, &url, "race-1", "one message", WAIT)))
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
    let ids: Vec<&str> = answers
        .iter()
        .map(|(status, body, _)| {
            assert_eq!(*status, 202, "{body}");
            body["id"].as_str().unwrap_or_default()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");

    // The same key with another body is refused and stores nothing.
    let (status, body) = post_once(&http, &url, "race-1", "another message")
        .await
        .context("the API did not answer")?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused", "{body}");

    // Wave 2: the racers start, the API is killed under them and started again; each
    // retries with its key until it gets an answer.
    let wave = {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            join_all(
                (0..racers).map(|_| post_retrying(&http, &url, "race-2", "second message", WAIT)),
            )
            .await
        })
    };
    stack.kill_api().await?;
    stack.start_api().await?;
    let second: Vec<(u16, Value, Vec<u16>)> =
        wave.await?.into_iter().collect::<Result<Vec<_>>>()?;
    let refused = second
        .iter()
        .flat_map(|(_, _, seen)| seen)
        .filter(|s| **s == 0)
        .count();
    let second_ids: Vec<&str> = second
        .iter()
        .map(|(status, body, _)| {
            assert_eq!(*status, 202, "{body}");
            body["id"].as_str().unwrap_or_default()
        })
        .collect();
    assert!(
        second_ids.iter().all(|id| *id == second_ids[0]),
        "{second_ids:?}"
    );

    let thread = stack.wait_for_replies(2, WAIT).await?;
    let users: Vec<&str> = thread
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(users, ["one message", "second message"]);
    assert_one_reply_each(&thread);
    let chat_turns = crate::harness::chat_requests(&stack.anthropic).len();
    assert_eq!(chat_turns, 2, "one model turn per message");
    assert_eq!(stack.store.outbox_backlog().await?, 0);

    figures::record(
        "racing_posts_with_one_idempotency_key",
        "N identical POSTs (one key) store 1 message and get 1 reply; also across an API kill",
        2,
        json!({
            "racers_per_wave": racers,
            "waves": 2,
            "stored_messages": users.len(),
            "replies": thread.iter().filter(|m| m.role == Role::Assistant).count(),
            "model_turns": chat_turns,
            "connection_errors_during_kill": refused,
            "reused_key_other_body_status": 422,
            "duration_ms": started.elapsed().as_millis() as u64,
        }),
    )
}

/// Fires `racers` identical requests at once; returns how many got each status.
async fn race(
    ts: &TaskStack,
    racers: usize,
    path: &str,
    body: impl Fn(usize) -> Value,
) -> Result<BTreeMap<u16, usize>> {
    let answers = join_all((0..racers).map(|i| ts.request("POST", path, Some(body(i))))).await;
    let mut statuses = BTreeMap::new();
    for answer in answers {
        let (status, _) = answer?;
        *statuses.entry(status).or_insert(0) += 1;
    }
    Ok(statuses)
}

/// Exactly one winner, and every loser told 409.
fn assert_one_winner(what: &str, statuses: &BTreeMap<u16, usize>, racers: usize) {
    assert_eq!(statuses.get(&202), Some(&1), "{what}: {statuses:?}");
    assert_eq!(
        statuses.get(&409),
        Some(&(racers - 1)),
        "{what}: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: 50 racers on each task decision with the full task stack (about 15 s plus set-up); run by `make test-faults` and by `make test` (make test-faults-short); results in docs/reliability.md"]
async fn racing_task_decisions_take_effect_once() -> Result<()> {
    let started = Instant::now();
    let racers = racers();
    let ts = TaskStack::start().await?;
    ts.stack.anthropic.set_default(asks_first);
    ts.stack
        .post("please add a greeting to acme/web", "task-1")
        .await?;
    let proposal = ts.proposal_id().await?;

    let confirms = race(
        &ts,
        racers,
        &format!("/api/proposals/{proposal}/confirm"),
        |_| json!({}),
    )
    .await?;
    assert_one_winner("confirm", &confirms, racers);
    let tasks = ts.stack.store.list_tasks(USER, None, 100).await?;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let id = tasks[0].id.clone();
    let (status, body) = ts
        .request("POST", &format!("/api/proposals/{proposal}/reject"), None)
        .await?;
    assert_eq!(
        status, 409,
        "a confirmed proposal cannot be rejected: {body}"
    );

    ts.wait_status(&id, TaskStatus::WaitingQuestions).await?;
    let answers = race(
        &ts,
        racers,
        &format!("/api/tasks/{id}/answer"),
        |i| json!({ "answers": { "greeting": format!("Hi{i}"), "module": "src/greet.rs" } }),
    )
    .await?;
    assert_one_winner("answer", &answers, racers);
    let task = ts.wait_status(&id, TaskStatus::WaitingPlanReview).await?;
    let stored = ts.stack.store.task_inputs(USER, &id).await?;
    let stored_answers: Vec<_> = stored.iter().filter(|i| i.kind == "answers").collect();
    assert_eq!(stored_answers.len(), 1, "{stored:?}");
    // The plan was written from the one accepted answer.
    let winner = stored_answers[0].payload["answers"][0]["answer"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let plan = task.plan.unwrap_or_default();
    assert!(
        plan.contains(&format!("{winner},")),
        "{plan} lacks {winner}"
    );
    assert_eq!(ts.runs(&id, "plan").await?, 2);

    // Racing revisions of the plan: one is taken and planned again.
    let reviews = race(
        &ts,
        racers,
        &format!("/api/tasks/{id}/review-plan"),
        |i| json!({ "action": "revise", "text": format!("change {i}") }),
    )
    .await?;
    assert_one_winner("review-plan", &reviews, racers);
    ts.wait_for(|| async {
        Ok((ts.runs(&id, "plan").await? == 3
            && ts.task(&id).await?.status == TaskStatus::WaitingPlanReview)
            .then_some(()))
    })
    .await?;
    let revisions = ts
        .stack
        .store
        .task_inputs(USER, &id)
        .await?
        .into_iter()
        .filter(|i| i.kind == "plan_review")
        .count();
    assert_eq!(revisions, 1);

    let cancels = race(
        &ts,
        racers,
        &format!("/api/tasks/{id}/cancel"),
        |i| json!({ "reason": format!("stop {i}") }),
    )
    .await?;
    assert_one_winner("cancel", &cancels, racers);
    ts.wait_status(&id, TaskStatus::Cancelled).await?;
    let cancelled = ts
        .stack
        .store
        .task_inputs(USER, &id)
        .await?
        .into_iter()
        .filter(|i| i.kind == "cancel")
        .count();
    assert_eq!(cancelled, 1);

    figures::record(
        "racing_task_decisions",
        "N racing confirm / answer / plan revision / cancel requests: exactly 1 accepted (202) and acted on, the rest 409",
        4,
        json!({
            "racers": racers,
            "confirm_statuses": confirms,
            "answer_statuses": answers,
            "review_statuses": reviews,
            "revisions_stored": revisions,
            "cancel_statuses": cancels,
            "tasks_created": tasks.len(),
            "answers_stored": stored_answers.len(),
            "cancels_stored": cancelled,
            "duration_ms": started.elapsed().as_millis() as u64,
        }),
    )
}
