//! Crashes and outages: the API killed mid-stream, the worker killed mid-turn, the worker or
//! Temporal down while messages arrive. Nothing accepted may be lost or answered twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mainloop_testkit::anthropic::Reply;
use mainloop_testkit::sse::SseEvent;

use crate::harness::{
    Stack, USER, WAIT, asked, assert_one_reply_each, chat_requests, is_assistant_completion,
    replies_to,
};
use crate::pg_cut::{self, PgCut};

fn delta_text(events: &[SseEvent], attempt: i64) -> Result<String> {
    let mut text = String::new();
    for event in events.iter().filter(|e| e.event == "message.delta") {
        let data = event.json()?;
        if data["attempt"] == attempt {
            text.push_str(data["text"].as_str().unwrap_or_default());
        }
    }
    Ok(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_killed_mid_stream_resumes_with_last_event_id_without_gap_or_repeat() -> Result<()>
{
    let mut stack = Stack::start().await?;
    let text = "one two three four five six seven eight nine ten eleven twelve thirteen \
                fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    stack
        .anthropic
        .push(Reply::text(text).with_token_delay(Duration::from_millis(60)));
    let start = stack.last_event_id().await?;
    let mut events = stack.events(start).await?;
    stack.post("count to twenty", "k").await?;
    let mut before = Vec::new();
    let mut deltas = 0;
    events
        .collect_until(WAIT, |e| {
            before.push(e.clone());
            if e.event == "message.delta" {
                deltas += 1;
            }
            deltas == 3
        })
        .await?;
    let last_seen = before.last().map(|e| e.id.clone()).unwrap_or_default();
    drop(events);
    stack.kill_api().await?;
    stack.start_api().await?;
    let mut resumed =
        mainloop_testkit::sse::SseClient::connect(&stack.url("/api/events"), &[], Some(&last_seen))
            .await?;
    let after = resumed.collect_until(WAIT, is_assistant_completion).await?;

    let all: Vec<SseEvent> = before.iter().chain(&after).cloned().collect();
    let ids: Vec<i64> = all.iter().map(|e| e.id_number()).collect::<Result<_>>()?;
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "a repeat or reorder: {ids:?}"
    );
    // Every event the store holds in that range was delivered: no gap.
    let stored: Vec<i64> = stack
        .store
        .events_after(USER, start, 10_000)
        .await?
        .into_iter()
        .map(|e| e.id)
        .filter(|id| *id <= *ids.last().unwrap_or(&0))
        .collect();
    assert_eq!(ids, stored);
    let completed = after
        .last()
        .map(|e| e.json())
        .transpose()?
        .unwrap_or_default();
    assert_eq!(completed["content"], text);
    assert_eq!(delta_text(&all, 1)?, text);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_during_a_turn_still_gives_exactly_one_reply() -> Result<()> {
    let mut stack = Stack::start().await?;
    // The first attempt streams slowly and dies with the worker; the retry answers.
    stack.anthropic.push(
        Reply::text("this attempt will never finish because the worker dies")
            .with_token_delay(Duration::from_millis(300)),
    );
    stack
        .anthropic
        .push(Reply::text("Answered after the crash."));
    let mut events = stack.events(0).await?;
    let posted = stack.post("survive this", "k").await?;
    events
        .collect_until(WAIT, |e| e.event == "message.delta")
        .await?;
    stack.kill_worker().await?;
    stack.start_worker().await?;
    let rest = events.collect_until(WAIT, is_assistant_completion).await?;
    let restarted = rest
        .iter()
        .filter(|e| e.event == "message.started")
        .map(|e| e.json().map(|d| d["attempt"].clone()))
        .collect::<Result<Vec<_>>>()?;
    assert_eq!(
        restarted,
        [serde_json::json!(2)],
        "the retry restarts the same reply"
    );
    assert_eq!(delta_text(&rest, 2)?, "Answered after the crash.");

    let thread = stack.thread().await?;
    assert_one_reply_each(&thread);
    let reply = replies_to(&thread, posted["id"].as_str().unwrap_or_default());
    assert_eq!(reply[0].content, "Answered after the crash.");
    // A later message proves the thread is healthy on the new worker.
    stack.post("and after?", "k2").await?;
    let thread = stack.wait_for_replies(2, WAIT).await?;
    assert_one_reply_each(&thread);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_posted_while_the_worker_is_down_are_answered_once_it_is_back() -> Result<()> {
    let mut stack = Stack::start().await?;
    stack.post("before", "k0").await?;
    stack.wait_for_replies(1, WAIT).await?;
    stack.stop_worker().await?;
    for i in 1..=3 {
        stack
            .post(&format!("while down {i}"), &format!("k{i}"))
            .await?;
    }
    assert_eq!(chat_requests(&stack.anthropic).len(), 1);
    stack.start_worker().await?;
    let thread = stack.wait_for_replies(4, WAIT).await?;
    assert_one_reply_each(&thread);
    let asked: Vec<String> = asked(&stack.anthropic);
    assert_eq!(
        asked,
        ["before", "while down 1", "while down 2", "while down 3"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_posted_while_temporal_is_down_are_answered_once_it_is_back() -> Result<()> {
    let mut stack = Stack::start().await?;
    stack.post("before", "k0").await?;
    stack.wait_for_replies(1, WAIT).await?;
    stack.temporal.stop().await?;

    let http = reqwest::Client::new();
    for i in 1..=3 {
        stack
            .post(&format!("while down {i}"), &format!("k{i}"))
            .await?;
    }
    let ready = http.get(stack.url("/readyz")).send().await?;
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await?;
    assert_eq!(ready["store"], "ok");
    assert_ne!(ready["temporal"], "ok");
    assert_eq!(ready["outbox_backlog"], 3);

    stack.temporal.start_again().await?;
    let thread = stack.wait_for_replies(4, WAIT).await?;
    assert_one_reply_each(&thread);
    let asked: Vec<String> = asked(&stack.anthropic);
    let distinct: HashSet<&String> = asked.iter().collect();
    assert_eq!(asked.len(), 4, "{asked:?}");
    assert_eq!(distinct.len(), 4);
    assert_eq!(stack.store.outbox_backlog().await?, 0);
    Ok(())
}

/// The outbox relay's claim commits and the database's answer is lost (PostgreSQL went down
/// at that moment, which the fault suite's `postgres_restarts` once hit): the relay must take
/// its claim back at once instead of leaving the message, and every later one of the
/// thread, to the claim's 30 s lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_whose_commit_went_unanswered_does_not_hold_the_thread() -> Result<()> {
    let mut stack = Stack::start().await?;
    let cut = PgCut::start(format!("127.0.0.1:{}", stack._pg.port())).await?;
    stack.kill_api().await?;
    stack.set_role_env(
        "serve",
        "DATABASE_URL",
        &pg_cut::through(&stack.database_url, cut.port)?,
    );
    stack.start_api().await?;
    stack.post("first", "k1").await?;
    stack.wait_for_replies(1, WAIT).await?;

    cut.arm();
    let posted = Instant::now();
    stack.post("second", "k2").await?;
    tokio::time::timeout(WAIT, cut.cut())
        .await
        .context("no claim of the relay was cut")?;
    let thread = stack.wait_for_replies(2, WAIT).await?;
    let took = posted.elapsed();
    assert_one_reply_each(&thread);
    assert!(
        took < Duration::from_secs(10),
        "the message waited {took:?}: for the lost claim's lease (30 s)"
    );
    Ok(())
}
