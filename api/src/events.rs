//! `GET /api/events`: the user's event log as Server-Sent Events. It replays everything after
//! `Last-Event-ID` (or `?after=`), then follows live. Each event's SSE id is its log id, so a
//! client that reconnects with the last id it saw gets every later event exactly once, even
//! across a restart of this process. Live events come from the process's [`EventFeed`]
//! (one read of the log per commit, whatever the number of streams).
//!
//! [`EventFeed`]: crate::feed::EventFeed

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::User;
use crate::error::{ApiError, ApiResult, code};
use crate::extract::ApiQuery;
use crate::feed::{Batch, FedEvent, PAGE, sse_event};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Replay events after this id (for clients that cannot set `Last-Event-ID`, such as a
    /// first `EventSource` connection). Without it or the header, the stream starts live.
    #[param(minimum = 0, nullable = false)]
    pub after: Option<i64>,
}

#[utoipa::path(
    get, path = "/api/events", tag = "events",
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, nullable = false, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream",
         description = "`id:` the event id, `event:` its kind, `data:` JSON: message.created and message.completed (Message), message.started (MessageStarted), message.delta (MessageDelta), message.waiting (MessageWaiting), proposal.created and proposal.updated (Proposal), thread.notice (ThreadNotice), task.updated (Task), task.log (TaskLogEvent), task.input (TaskInputEvent), inbox.updated (InboxItem)"),
        (status = 400, description = "invalid_header, invalid_query"),
        (status = 401, description = "unauthorized"),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    User(user): User,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let from_header = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request(code::INVALID_HEADER, "Last-Event-ID must be an event id")
                })?,
        ),
        None => None,
    };
    if query.after.is_some_and(|after| after < 0) {
        return Err(ApiError::bad_request(
            code::INVALID_QUERY,
            "after must be an event id",
        ));
    }
    // Subscribe before the first read, so nothing committed in between goes unnoticed.
    let mut batches = state.feed.subscribe();
    let mut after = match from_header.or(query.after) {
        Some(after) => after,
        None => state.store.last_user_event_id(&user).await?,
    };
    let store = state.store.clone();
    let feed = state.feed.clone();
    let shutdown = state.shutdown.clone();
    let events = async_stream::stream! {
        // The feed's id up to which this stream has every event: a batch starting there
        // carries all that came next. None until a batch follows an own read.
        let mut level: Option<i64> = None;
        let mut read_log = true;
        let mut pending: Option<Arc<Batch>> = None;
        loop {
            if read_log {
                feed.count_stream_read();
                let page = match store.events_after(&user, after, PAGE).await {
                    Ok(page) => page,
                    Err(error) => {
                        // Ending the stream makes the client reconnect and resume from its
                        // last id.
                        tracing::warn!(%error, "cannot read events; closing the stream");
                        break;
                    }
                };
                let full = page.len() as i64 == PAGE;
                for event in page {
                    after = event.id;
                    yield Ok(sse_event(&event));
                }
                if full {
                    continue;
                }
                read_log = false;
                // The batch that sent us to the log was committed before the read, so the
                // read covered it; what is left of it are ids the read did not return.
                if let Some(batch) = pending.take() {
                    for event in mine(&batch, &user, after) {
                        after = event.id;
                        yield Ok(event.sse.clone());
                    }
                    level = Some(batch.last);
                }
                continue;
            }
            tokio::select! {
                received = batches.recv() => match received {
                    Ok(batch) if level == Some(batch.after) => {
                        for event in mine(&batch, &user, after) {
                            after = event.id;
                            yield Ok(event.sse.clone());
                        }
                        level = Some(batch.last);
                    }
                    Ok(batch) => {
                        pending = Some(batch);
                        read_log = true;
                    }
                    Err(RecvError::Lagged(_)) => {
                        level = None;
                        read_log = true;
                    }
                    Err(RecvError::Closed) => break,
                },
                () = shutdown.cancelled() => break,
            }
        }
    };
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The user's events in `batch` after `after`.
fn mine<'a>(batch: &'a Batch, user: &'a str, after: i64) -> impl Iterator<Item = &'a FedEvent> {
    batch
        .events
        .iter()
        .filter(move |event| event.user == user && event.id > after)
}
