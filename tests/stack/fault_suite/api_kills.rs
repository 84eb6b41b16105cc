//! The API SIGKILLed again and again while a client follows `/api/events` the way a browser's
//! `EventSource` does (reconnecting with `Last-Event-ID`), during long streamed replies and
//! during posts: the client sees every event of the store's log exactly once, in order, and
//! the deltas it saw add up to each reply's text.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mainloop_testkit::anthropic::Reply;
use mainloop_testkit::sse::{SseClient, SseEvent};
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::figures;
use super::idempotency::{env_number, post_retrying};
use super::outages::{ms, spread};
use crate::harness::{Stack, USER, WAIT, assert_one_reply_each};

/// What the following client has seen so far.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<SseEvent>>,
    reconnects: Mutex<Vec<Duration>>,
    progress: Notify,
}

impl Seen {
    fn count(&self) -> usize {
        self.events.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Waits until more than `n` events arrived.
    async fn more_than(&self, n: usize) -> Result<usize> {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.progress.notified();
                let count = self.count();
                if count > n {
                    return count;
                }
                notified.await;
            }
        })
        .await
        .context("the client received nothing new")
    }
}

/// Follows the stream from `after` like `EventSource`: on an error or the end of the stream
/// it reconnects with the last id it saw, until it has seen event `target` (once set).
async fn follow(
    url: String,
    after: i64,
    seen: Arc<Seen>,
    mut target: watch::Receiver<i64>,
) -> Result<()> {
    let mut last: Option<String> = None;
    let mut lost_at: Option<Instant> = None;
    loop {
        let connected = match &last {
            Some(id) => SseClient::connect(&url, &[], Some(id)).await,
            None => SseClient::connect(&format!("{url}?after={after}"), &[], None).await,
        };
        let mut stream = match connected {
            Ok(stream) => stream,
            Err(_) => {
                lost_at.get_or_insert_with(Instant::now);
                // EventSource's retry delay: the API coming back is only observable by trying.
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
        };
        if let Some(at) = lost_at.take()
            && let Ok(mut reconnects) = seen.reconnects.lock()
        {
            reconnects.push(at.elapsed());
        }
        loop {
            let wanted = *target.borrow();
            let last_id = last
                .as_deref()
                .and_then(|l| l.parse::<i64>().ok())
                .unwrap_or(after);
            if wanted > 0 && last_id >= wanted {
                return Ok(());
            }
            let event = tokio::select! {
                event = stream.next(Duration::from_secs(120)) => event,
                changed = target.changed() => {
                    changed?;
                    continue;
                }
            };
            match event {
                Ok(Some(event)) => {
                    last = Some(event.id.clone());
                    if let Ok(mut events) = seen.events.lock() {
                        events.push(event);
                    }
                    seen.progress.notify_waiters();
                }
                // Killed under us: the stream ends or breaks.
                Ok(None) | Err(_) => {
                    lost_at = Some(Instant::now());
                    break;
                }
            }
        }
    }
}

/// A reply long enough to be cut by several kills.
fn long_reply(n: usize) -> Reply {
    let text: Vec<String> = (1..=40).map(|w| format!("r{n}w{w}")).collect();
    Reply::text(text.join(" ")).with_token_delay(Duration::from_millis(40))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "fault suite: kills the API 20 times under a streaming client (about 70 s); run by `make test-faults`, and with 5 kills by `make test` (make test-faults-short); results in docs/reliability.md"]
async fn the_api_killed_repeatedly_under_a_streaming_client_loses_and_repeats_no_event()
-> Result<()> {
    let started = Instant::now();
    let kills = env_number("MAINLOOP_FAULT_API_KILLS", 20);
    let mut stack = Stack::start().await?;
    let replies = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = replies.clone();
    stack.anthropic.set_default(move |request| {
        if crate::harness::is_summary(request) {
            return Reply::text("A summary.");
        }
        long_reply(counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
    });
    let start = stack.last_event_id().await?;
    let (target, wanted) = watch::channel(0);
    let seen = Arc::new(Seen::default());
    let follower = tokio::spawn(follow(
        stack.url("/api/events"),
        start,
        seen.clone(),
        wanted,
    ));
    let http = reqwest::Client::new();
    let url = stack.url("/api/messages");
    let post = |n: usize| {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            post_retrying(&http, &url, &format!("k{n}"), &format!("story {n}"), WAIT).await
        })
    };
    let mut posts = vec![post(0)];
    seen.more_than(0).await?;
    for kill in 1..=kills {
        // A post races each kill; the replies keep the stream busy between kills.
        posts.push(post(kill));
        stack.kill_api().await?;
        stack.start_api().await?;
        // The next kill waits until the client is back and receiving.
        let count = seen.count();
        seen.more_than(count).await?;
    }
    for posted in posts {
        let (status, body, _) = posted.await??;
        anyhow::ensure!(status == 202, "{status} {body}");
    }
    let thread = stack
        .wait_for_replies(kills + 1, Duration::from_secs(300))
        .await?;
    assert_one_reply_each(&thread);
    let last = stack.store.last_event_id().await?;
    target.send(last)?;
    tokio::time::timeout(WAIT, follower)
        .await
        .context("the client did not catch up")???;

    let received: Vec<SseEvent> = seen.events.lock().map(|e| e.clone()).unwrap_or_default();
    let ids: Vec<i64> = received
        .iter()
        .map(SseEvent::id_number)
        .collect::<Result<_>>()?;
    let stored: Vec<i64> = stack
        .store
        .events_after(USER, start, 1_000_000)
        .await?
        .into_iter()
        .map(|e| e.id)
        .filter(|id| *id <= last)
        .collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for id in &ids {
        *counts.entry(*id).or_insert(0) += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let gaps = stored.iter().filter(|id| !counts.contains_key(id)).count();
    assert_eq!(duplicates, 0, "repeated events");
    assert_eq!(gaps, 0, "events never received");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
    assert_eq!(ids, stored);

    // The deltas the client saw add up to each reply, for its last attempt.
    let mut streamed: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for event in received.iter().filter(|e| e.event == "message.delta") {
        let data = event.json()?;
        let id = data["message_id"].as_str().unwrap_or_default().to_string();
        let attempt = data["attempt"].as_i64().unwrap_or_default();
        let text = data["text"].as_str().unwrap_or_default();
        let entry = streamed.entry(id).or_insert((attempt, String::new()));
        if attempt > entry.0 {
            *entry = (attempt, String::new());
        }
        if attempt == entry.0 {
            entry.1.push_str(text);
        }
    }
    let assistant: Vec<_> = thread
        .iter()
        .filter(|m| m.role == mainloop_store::Role::Assistant)
        .collect();
    for reply in &assistant {
        let text = streamed.get(&reply.id).map(|(_, t)| t.as_str());
        assert_eq!(text, Some(reply.content.as_str()), "reply {}", reply.id);
    }
    let reconnects: Vec<Duration> = seen
        .reconnects
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();

    figures::record(
        "api_kills_under_streaming",
        "API SIGKILLed while a client follows /api/events with Last-Event-ID: 0 gaps, 0 duplicates, deltas add up to every reply",
        kills as u64,
        json!({
            "kills": kills,
            "posts": kills + 1,
            "events_received": ids.len(),
            "events_in_store": stored.len(),
            "gaps": gaps,
            "duplicates": duplicates,
            "replies_checked": assistant.len(),
            "reconnect": spread(&reconnects),
            "duration_ms": ms(started.elapsed()),
        }),
    )
}
