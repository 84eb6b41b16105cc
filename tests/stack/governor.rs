//! The rate-limit governor across worker processes: a 429 seen by one worker stops every
//! worker from calling the model until the limit resets, and each waiting reply says so
//! instead of failing.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use mainloop_testkit::anthropic::Reply;
use mainloop_testkit::sse::{SseClient, SseEvent};

use mainloop_store::TaskStatus;

use crate::harness::{Stack, WAIT};
use crate::tasks::{TaskStack, job_kind};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const IDENTITY: &str = "tailscale-user-login";
/// Long enough for a fresh worker to start and take Bob's turn while the block holds.
const RETRY_AFTER_SECS: u64 = 8;

fn is(event: &SseEvent, kind: &str) -> bool {
    event.event == kind
}

fn until_of(event: &SseEvent) -> Result<SystemTime> {
    let data = event.json()?;
    let until = data["until"].as_str().context("a wait without `until`")?;
    let until = humantime::parse_rfc3339(until)
        .with_context(|| format!("`until` is not an RFC 3339 time: {until}"))?;
    Ok(until)
}

async fn replied(received: &mut SseClient) -> Result<Vec<SseEvent>> {
    received
        .collect_until(WAIT, |e| {
            is(e, "message.completed") && e.data.contains("\"role\":\"assistant\"")
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_on_one_worker_makes_every_worker_wait_and_shows_the_wait() -> Result<()> {
    let mut stack = Stack::start_with(&[
        ("MAINLOOP_AUTH", "tailscale"),
        ("MAINLOOP_TAILSCALE_PROXY", "127.0.0.1"),
    ])
    .await?;
    stack.anthropic.push(
        Reply::error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        )
        .retry_after(RETRY_AFTER_SECS),
    );
    let mut alice_events = stack.events_as(&[(IDENTITY, ALICE)], 0).await?;
    let mut bob_events = stack.events_as(&[(IDENTITY, BOB)], 0).await?;

    // Alice's turn meets the 429 on the first worker, and her reply says it waits.
    stack
        .post_as(&[(IDENTITY, ALICE)], "first", "alice-1")
        .await?;
    let seen = alice_events
        .collect_until(WAIT, |e| is(e, "message.waiting"))
        .await?;
    let until = until_of(seen.last().context("no wait")?)?;
    let block = stack
        .store
        .rate_limit("anthropic")
        .await?
        .context("no block in the store")?;
    assert_eq!(SystemTime::from(block.until), until);
    assert!(
        block.reason.contains("rate_limit_error"),
        "{}",
        block.reason
    );

    // A worker that never saw the 429 takes over; Bob's turn runs on it.
    stack.kill_worker().await?;
    stack.start_worker().await?;
    stack.post_as(&[(IDENTITY, BOB)], "second", "bob-1").await?;
    let bob_seen = bob_events
        .collect_until(WAIT, |e| {
            is(e, "message.waiting") || (is(e, "message.completed") && e.data.contains("Echo"))
        })
        .await?;
    let bob_wait = bob_seen.last().context("no event")?;
    assert!(
        is(bob_wait, "message.waiting"),
        "Bob's reply did not wait for the limit to reset (the new worker took his turn only \
         after the block, or ignored it): {bob_seen:?}"
    );
    assert_eq!(until_of(bob_wait)?, until, "Bob waits for the same block");

    // Both replies come once the limit has reset, and none is an error.
    let alice_reply = replied(&mut alice_events).await?;
    let bob_reply = replied(&mut bob_events).await?;
    for (who, received, asked) in [
        ("alice", &alice_reply, "first"),
        ("bob", &bob_reply, "second"),
    ] {
        let reply = received.last().context("no reply")?.json()?;
        assert_eq!(reply["kind"], "chat", "{who}'s reply: {reply}");
        assert_eq!(reply["content"], format!("Echo: {asked}"), "{who}'s reply");
    }

    // The model saw the one 429, then nothing until the block ended: no worker called it
    // while it was blocked.
    let requests = stack.anthropic.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200, 200], "requests: {statuses:?}");
    for request in &requests[1..] {
        let early = until
            .duration_since(request.received_at)
            .unwrap_or(Duration::ZERO);
        assert!(
            early.is_zero(),
            "a worker called the model {early:?} before the limit reset"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_starts_only_once_the_limit_has_reset_and_its_log_says_why() -> Result<()> {
    let ts = TaskStack::start().await?;
    ts.stack
        .post("please add a greeting to acme/web", "task-1")
        .await?;
    let proposal = ts.proposal_id().await?;
    // Another worker met a 429 just now (the chat is answered already).
    let until = chrono::Utc::now() + chrono::Duration::seconds(4);
    ts.stack
        .store
        .block_rate_limit("anthropic", until, "429 rate_limit_error: slow down")
        .await?;
    let id = ts
        .confirm(&proposal, serde_json::json!({ "skip_planning": true }))
        .await?;
    ts.wait_for_log(&id, "Waiting for the model's rate limit to reset")
        .await?;
    ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    let jobs: Vec<_> = ts
        .stack
        .anthropic
        .requests()
        .into_iter()
        .filter(|r| job_kind(r).is_some())
        .collect();
    let first = jobs.first().context("the job never called the model")?;
    let early = SystemTime::from(until)
        .duration_since(first.received_at)
        .unwrap_or(Duration::ZERO);
    assert!(
        early.is_zero(),
        "the job called the model {early:?} before the limit reset"
    );
    Ok(())
}
