//! The event stream's live path: every stream follows the process's one reader of the log,
//! and a stream that falls behind that reader still gets every event, once, in order.

use std::time::Duration;

use mainloop_api::{AuthMode, EventFeed};
use mainloop_store::{NewEvent, Store, event_kind};
use mainloop_testkit::sse::SseClient;
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod common;
use common::{Served, serve, serve_on};
use mainloop_testkit::postgres::PgServer;

const USER: &str = "me";
const WAIT: Duration = Duration::from_secs(30);

async fn notice(served: &Served, text: &str) -> anyhow::Result<i64> {
    let appended = served
        .store
        .append_events(
            USER,
            &[NewEvent::new(
                event_kind::THREAD_NOTICE,
                json!({ "level": "info", "text": text }),
            )],
        )
        .await?;
    Ok(appended[0].id)
}

/// The next notice's text, skipping nothing: any other event is an error here.
async fn next_notice(client: &mut SseClient) -> anyhow::Result<(i64, String)> {
    let event = client
        .next(WAIT)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
    anyhow::ensure!(event.event == event_kind::THREAD_NOTICE, "got {event:?}");
    let text = event.json()?["text"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("a notice without text"))?
        .to_string();
    Ok((event.id_number()?, text))
}

async fn live_stream(served: &Served) -> anyhow::Result<SseClient> {
    SseClient::connect(&format!("{}/api/events", served.base()), &[], None).await
}

#[tokio::test]
async fn many_streams_share_one_read_of_the_log_per_commit() -> anyhow::Result<()> {
    let served = serve(AuthMode::None, USER, |_, _| {}).await;
    streams_share_reads(&served).await
}

/// On PostgreSQL every commit wakes the feed twice: in process, and by its own NOTIFY.
#[tokio::test]
async fn many_streams_share_one_read_of_the_log_per_commit_on_postgres() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let url = pg.create_database("feed").await?;
    let served = serve_on(&url, tempfile::tempdir()?, AuthMode::None, USER, |_, _| {}).await;
    streams_share_reads(&served).await
}

async fn streams_share_reads(served: &Served) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(live_stream(served).await?);
    }
    // The first batch a stream meets follows no batch it saw, so it reads the log once.
    let first = notice(served, "0").await?;
    for client in &mut clients {
        assert_eq!(next_notice(client).await?, (first, "0".to_string()));
    }

    let (feed_before, streams_before) = (served.feed.feed_reads(), served.feed.stream_reads());
    for seq in 1..=10 {
        let id = notice(served, &seq.to_string()).await?;
        for client in &mut clients {
            assert_eq!(next_notice(client).await?, (id, seq.to_string()));
        }
    }
    let feed_reads = served.feed.feed_reads() - feed_before;
    let stream_reads = served.feed.stream_reads() - streams_before;
    assert_eq!(
        stream_reads, 0,
        "level streams read the log themselves {stream_reads} times"
    );
    // One read per commit, or two on PostgreSQL, where the commit's NOTIFY wakes it again;
    // never one per stream.
    assert!(
        (1..=20).contains(&feed_reads),
        "10 commits took {feed_reads} reads of the log"
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_far_behind_the_feed_gets_every_event_once_in_order() -> anyhow::Result<()> {
    let served = serve(AuthMode::None, USER, |_, _| {}).await;
    // This one is not read until the end: once the socket buffers are full the server stops
    // polling its stream, which falls more batches behind than the feed keeps.
    let mut slow = live_stream(&served).await?;
    let mut paced = live_stream(&served).await?;
    let padding = "x".repeat(64 * 1024);
    let mut ids = Vec::new();
    for seq in 0..400 {
        let text = format!("{seq} {padding}");
        ids.push(notice(&served, &text).await?);
        // One batch per commit: wait for the paced stream to have it.
        assert_eq!(next_notice(&mut paced).await?, (ids[seq], text));
    }
    let reads_before = served.feed.stream_reads();
    for (seq, id) in ids.iter().enumerate() {
        let (got, text) = next_notice(&mut slow).await?;
        assert_eq!(got, *id, "event {seq}");
        assert!(
            text.starts_with(&format!("{seq} ")),
            "event {seq}: {text:.20}"
        );
    }
    assert!(
        served.feed.stream_reads() > reads_before,
        "the slow stream never fell behind the feed, so this test showed nothing"
    );
    // And it is level again: a new event arrives once.
    let id = notice(&served, "after").await?;
    assert_eq!(next_notice(&mut slow).await?, (id, "after".to_string()));
    Ok(())
}

/// The benchmark found this: with the feed's starting point read in the background, an
/// event committed just after start-up could land between a stream's first read and the
/// feed's, and reach no stream.
#[tokio::test]
async fn an_event_committed_as_the_feed_starts_is_in_its_first_batch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("feed.db").display()
    ))
    .await?;
    store.migrate().await?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let feed = EventFeed::start(store.clone(), shutdown).await?;
    let mut batches = feed.subscribe();
    let appended = store
        .append_events(
            USER,
            &[NewEvent::new(
                event_kind::THREAD_NOTICE,
                json!({ "level": "info", "text": "first" }),
            )],
        )
        .await?;
    let batch = tokio::time::timeout(WAIT, batches.recv()).await??;
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].id, appended[0].id);
    assert_eq!(batch.last, appended[0].id);
    Ok(())
}
