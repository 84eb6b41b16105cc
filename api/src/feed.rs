//! The process's one live reader of the event log. Every open `GET /api/events` stream
//! follows it instead of querying the log on each wake-up, so a commit costs this process one
//! read, and each event one rendering as SSE, however many clients are connected (DESIGN §12,
//! F7).
//!
//! The feed reads every user's events after its cursor and hands each read out as a
//! [`Batch`]: all events with ids in `(after, last]`. Since ids follow commit order (the
//! store's contract), consecutive batches leave no gap. A stream that has seen a batch ending
//! at `n` can take the next batch starting at `n` as it is; one that missed batches (it
//! lagged, or it started between two reads) reads the log itself once to become level again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::response::sse::Event as SseEvent;
use mainloop_store::{Event, RetryBackoff, Store, StoreError};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Events per read of the log, for the feed and for a stream's own reads.
pub(crate) const PAGE: i64 = 500;

/// Batches kept for slow streams. A stream further behind reads the log itself, so this
/// bounds memory, not correctness.
const KEPT_BATCHES: usize = 64;

/// Every user's events with ids in `(after, last]`, oldest first.
#[derive(Debug)]
pub struct Batch {
    pub after: i64,
    pub last: i64,
    pub events: Vec<FedEvent>,
}

/// One event of a batch, rendered once for every stream that sends it.
#[derive(Debug)]
pub struct FedEvent {
    pub user: String,
    pub id: i64,
    pub sse: SseEvent,
}

impl FedEvent {
    fn new(user: String, event: &Event) -> FedEvent {
        FedEvent {
            user,
            id: event.id,
            sse: sse_event(event),
        }
    }
}

/// An event as its SSE frame: the log id as the SSE id, so a reconnecting client resumes
/// after it.
pub(crate) fn sse_event(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.id.to_string())
        .event(&event.kind)
        .data(event.data.to_string())
}

/// A handle on the process's feed; clones share it.
#[derive(Clone, Debug)]
pub struct EventFeed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    batches: broadcast::Sender<Arc<Batch>>,
    feed_reads: AtomicU64,
    stream_reads: AtomicU64,
}

impl EventFeed {
    /// Starts following `store`'s log until `shutdown`.
    ///
    /// # Errors
    /// If the store cannot say where its log ends.
    pub async fn start(store: Store, shutdown: CancellationToken) -> Result<EventFeed, StoreError> {
        // Subscribed before the cursor is read: a commit in between wakes the first read.
        let wake = store.subscribe_events();
        // Read before any stream can subscribe, so every later event reaches streams in a
        // batch, and every earlier one was committed before any stream's own first read.
        // (Read in the background instead, a commit just after start-up fell between the
        // two and reached no stream.)
        let cursor = store.last_event_id().await?;
        let (batches, _) = broadcast::channel(KEPT_BATCHES);
        let feed = EventFeed {
            inner: Arc::new(Inner {
                batches,
                feed_reads: AtomicU64::new(0),
                stream_reads: AtomicU64::new(0),
            }),
        };
        tokio::spawn(follow(store, feed.clone(), wake, cursor, shutdown));
        Ok(feed)
    }

    /// The batches read from now on. Subscribe before a stream's first own read, so nothing
    /// committed in between goes unnoticed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.inner.batches.subscribe()
    }

    /// How many times the feed has read the log.
    pub fn feed_reads(&self) -> u64 {
        self.inner.feed_reads.load(Ordering::Relaxed)
    }

    /// How many times streams have read the log themselves (replay, catching up).
    pub fn stream_reads(&self) -> u64 {
        self.inner.stream_reads.load(Ordering::Relaxed)
    }

    pub(crate) fn count_stream_read(&self) {
        self.inner.stream_reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads the log after each wake-up and hands out what it read. A failed read is retried
/// with backoff from the same cursor, so the batches stay contiguous.
async fn follow(
    store: Store,
    feed: EventFeed,
    mut wake: broadcast::Receiver<()>,
    mut cursor: i64,
    shutdown: CancellationToken,
) {
    let mut backoff = RetryBackoff::default();
    loop {
        let full = match store.log_after(cursor, PAGE).await {
            Ok(events) => {
                backoff.reset();
                feed.inner.feed_reads.fetch_add(1, Ordering::Relaxed);
                let full = events.len() as i64 == PAGE;
                if let Some((_, newest)) = events.last() {
                    let batch = Batch {
                        after: cursor,
                        last: newest.id,
                        events: events
                            .into_iter()
                            .map(|(user, event)| FedEvent::new(user, &event))
                            .collect(),
                    };
                    cursor = batch.last;
                    if feed.inner.batches.send(Arc::new(batch)).is_err() {
                        tracing::trace!("no event streams open");
                    }
                }
                full
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the event log; retrying");
                tokio::select! {
                    () = backoff.sleep() => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        if full {
            continue;
        }
        tokio::select! {
            woken = wake.recv() => match woken {
                Ok(()) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            () = shutdown.cancelled() => return,
        }
    }
}
