//! A small Server-Sent Events client for tests: connects (optionally resuming with
//! `Last-Event-ID`) and yields events with a timeout on each wait.

use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};

/// One event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.data).with_context(|| format!("event data {:?}", self.data))
    }

    pub fn id_number(&self) -> Result<i64> {
        self.id
            .parse()
            .with_context(|| format!("event id {:?}", self.id))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SseEvent>> + Send>>;

pub struct SseClient {
    stream: EventStream,
}

impl SseClient {
    /// Opens `url` with the given extra headers, resuming after `last_event_id` if given.
    pub async fn connect(
        url: &str,
        headers: &[(&str, &str)],
        last_event_id: Option<&str>,
    ) -> Result<SseClient> {
        let client = reqwest::Client::new();
        let mut request = client.get(url).header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request
            .send()
            .await
            .context("connecting to the event stream")?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            bail!("event stream answered {status}: {body}");
        }
        let stream = response.bytes_stream().eventsource().map(|item| {
            item.map(|event| SseEvent {
                id: event.id,
                event: event.event,
                data: event.data,
            })
            .map_err(|e| anyhow::anyhow!("event stream: {e}"))
        });
        Ok(SseClient {
            stream: Box::pin(stream),
        })
    }

    /// The next event; `Ok(None)` when the server closed the stream.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<SseEvent>> {
        match tokio::time::timeout(timeout, self.stream.next()).await {
            Ok(Some(event)) => event.map(Some),
            Ok(None) => Ok(None),
            Err(_) => bail!("no event within {timeout:?}"),
        }
    }

    /// Reads events until one satisfies `done`, returning all of them (the last one included).
    pub async fn collect_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&SseEvent) -> bool,
    ) -> Result<Vec<SseEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(Some(event)) => {
                    let finished = done(&event);
                    events.push(event);
                    if finished {
                        return Ok(events);
                    }
                }
                Ok(None) => bail!(
                    "the event stream closed after {} events: {events:?}",
                    events.len()
                ),
                Err(error) => bail!("{error}; received so far: {events:?}"),
            }
        }
    }
}
