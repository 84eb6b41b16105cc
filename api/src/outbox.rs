//! The outbox relay: delivers the signals the API stored (a message for the main thread, a
//! decision on a proposal, a task's input) to Temporal with signal-with-start, in order per
//! workflow and many workflows at once, retrying with backoff while Temporal is unreachable.
//! Delivery is at least once; workflows de-duplicate by the input's id.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::anyhow;
use futures::StreamExt;
use mainloop_store::{
    OutboxItem, RetryBackoff, SIGNAL_GITHUB, SIGNAL_MESSAGE, SIGNAL_PROPOSAL_DECISION, Store,
};
use mainloop_workflows::WorkerTaskWorkflow;
use mainloop_workflows::payload::json_payload;
use mainloop_workflows::{
    MainThreadInput, MainThreadWorkflow, SEARCH_ATTRIBUTE_USER, chat_task_queue,
};
use temporalio_client::{Client, WorkflowSignalOptions, WorkflowStartOptions};
use temporalio_common::search_attributes::SearchAttributes;
use tokio_util::sync::CancellationToken;

use crate::temporal::TemporalLink;

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// mainloop's task queue; main threads start on its chat queue.
    pub task_queue: String,
    /// Items claimed per round.
    pub batch: i64,
    /// How long a claimed item is reserved for this relay.
    pub lease: Duration,
    /// Longest wait for one delivery.
    pub delivery_timeout: Duration,
    /// First retry delay after a failed delivery; doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

/// Runs until `shutdown`.
pub async fn run(
    store: Store,
    temporal: TemporalLink,
    settings: RelaySettings,
    shutdown: CancellationToken,
) {
    let client = tokio::select! {
        client = temporal.wait() => client,
        () = shutdown.cancelled() => None,
    };
    let Some(client) = client else { return };
    // Names this relay's claims, so it can take back a claim whose answer it lost.
    let relay = format!("relay-{}", uuid::Uuid::new_v4());
    let mut store_backoff = RetryBackoff::default();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let items = match store
            .claim_outbox(&relay, settings.batch, settings.lease)
            .await
        {
            Ok(items) => {
                store_backoff.reset();
                items
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the outbox; retrying");
                tokio::select! {
                    () = store_backoff.sleep() => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        if items.is_empty() {
            wait_for_work(&store, &shutdown).await;
            continue;
        }
        deliver_batch(&store, &client, &settings, items).await;
    }
}

/// Sleeps until something was added, an item falls due, or shutdown.
async fn wait_for_work(store: &Store, shutdown: &CancellationToken) {
    let due = match store.outbox_next_due().await {
        Ok(Some(due)) => (due - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(30)),
        Ok(None) => Duration::from_secs(30),
        Err(error) => {
            tracing::warn!(%error, "cannot read the outbox");
            Duration::from_secs(1)
        }
    };
    tokio::select! {
        () = store.outbox_added() => {}
        () = tokio::time::sleep(due) => {}
        () = shutdown.cancelled() => {}
    }
}

/// Deliveries in flight at once, each to a different workflow. One at a time, a thousand task
/// answers posted during an outage took tens of seconds to go out once Temporal was back, and
/// a chat message posted behind them waited for all of them.
const LANES: usize = 16;

/// Delivers `items` (oldest first): each workflow's in order, different workflows' at once.
async fn deliver_batch(
    store: &Store,
    client: &Client,
    settings: &RelaySettings,
    items: Vec<OutboxItem>,
) {
    let mut lanes: Vec<Vec<OutboxItem>> = Vec::new();
    let mut lane_of: HashMap<String, usize> = HashMap::new();
    for item in items {
        let lane = *lane_of.entry(item.workflow_id.clone()).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push(item);
    }
    futures::stream::iter(lanes)
        .for_each_concurrent(LANES, |lane| deliver_lane(store, client, settings, lane))
        .await;
}

/// Delivers one workflow's items in order; once one fails, the rest wait for it.
async fn deliver_lane(
    store: &Store,
    client: &Client,
    settings: &RelaySettings,
    items: Vec<OutboxItem>,
) {
    let mut held = false;
    for item in items {
        let retry_in = backoff(settings, item.attempts);
        if held {
            record(settings, || store.outbox_retry(item.id, None, retry_in)).await;
            continue;
        }
        let delivery =
            tokio::time::timeout(settings.delivery_timeout, deliver(client, settings, &item))
                .await
                .unwrap_or_else(|_| {
                    Err(Undeliverable::NotYet(anyhow!(
                        "Temporal did not answer in time"
                    )))
                });
        match delivery {
            Ok(()) => record(settings, || store.outbox_delivered(item.id)).await,
            Err(Undeliverable::Never(error)) => {
                tracing::error!(id = item.id, %error, "abandoning an outbox item");
                record(settings, || store.outbox_abandon(item.id, &error)).await;
            }
            Err(Undeliverable::NotYet(error)) => {
                let message = error.to_string();
                if item.attempts == 1 || item.attempts % 10 == 0 {
                    tracing::warn!(
                        workflow_id = %item.workflow_id,
                        attempts = item.attempts,
                        error = %message,
                        "signal not delivered yet; will retry"
                    );
                }
                held = true;
                record(settings, || {
                    store.outbox_retry(item.id, Some(&message), retry_in)
                })
                .await;
            }
        }
    }
}

/// Writes down what became of an item, retrying while the store is unreachable (a database
/// restart), within the lease. Should it still fail, the item stays claimed by this relay,
/// which takes it back at its next claim and delivers it again (the workflow de-duplicates
/// it): retrying here spares that second delivery, and keeps a failed item's backoff.
async fn record<F, Fut>(settings: &RelaySettings, write: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = mainloop_store::Result<()>>,
{
    let deadline = tokio::time::Instant::now() + settings.lease;
    let mut backoff = Duration::from_millis(50);
    loop {
        let Err(error) = write().await else { return };
        if tokio::time::Instant::now() + backoff > deadline {
            tracing::warn!(%error, "cannot update the outbox; the item's lease will expire");
            return;
        }
        tracing::warn!(%error, "cannot update the outbox; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

fn backoff(settings: &RelaySettings, attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    settings
        .base_backoff
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(settings.max_backoff)
}

enum Undeliverable {
    /// Temporal failed or is unreachable: try again later.
    NotYet(anyhow::Error),
    /// The item itself is broken: retrying cannot help.
    Never(String),
}

async fn deliver(
    client: &Client,
    settings: &RelaySettings,
    item: &OutboxItem,
) -> Result<(), Undeliverable> {
    let payload: serde_json::Value = serde_json::from_str(&item.payload)
        .map_err(|e| Undeliverable::Never(format!("corrupt payload: {e}")))?;
    let input = MainThreadInput {
        user: item.user_id.clone(),
        carry: Default::default(),
    };
    let queue = chat_task_queue(&settings.task_queue);
    let options = WorkflowStartOptions::new(queue, item.workflow_id.clone())
        .search_attributes(SearchAttributes::new([
            SEARCH_ATTRIBUTE_USER.value_set(item.user_id.clone())
        ]))
        .static_summary(format!("Main thread of {}", item.user_id))
        .build();
    let raw = json_payload(&payload);
    match item.signal.as_str() {
        SIGNAL_MESSAGE => client
            .signal_with_start_workflow(
                MainThreadWorkflow::run,
                input,
                MainThreadWorkflow::message,
                raw,
                options,
            )
            .await
            .map(|_| ())
            .map_err(|e| Undeliverable::NotYet(anyhow!("{e}"))),
        SIGNAL_PROPOSAL_DECISION => client
            .signal_with_start_workflow(
                MainThreadWorkflow::run,
                input,
                MainThreadWorkflow::proposal_decision,
                raw,
                options,
            )
            .await
            .map(|_| ())
            .map_err(|e| Undeliverable::NotYet(anyhow!("{e}"))),
        // Human input for a task: the task exists once the main thread started it; until
        // then (a confirmation still in flight) the signal is retried like any other.
        "answers" | "plan_review" | "retry" | "cancel" | "budget" => {
            let handle = client.get_workflow_handle::<WorkerTaskWorkflow>(item.workflow_id.clone());
            let options = WorkflowSignalOptions::default();
            let sent = match item.signal.as_str() {
                "answers" => {
                    handle
                        .signal(WorkerTaskWorkflow::answers, raw, options)
                        .await
                }
                "plan_review" => {
                    handle
                        .signal(WorkerTaskWorkflow::plan_review, raw, options)
                        .await
                }
                "retry" => handle.signal(WorkerTaskWorkflow::retry, raw, options).await,
                "budget" => {
                    handle
                        .signal(WorkerTaskWorkflow::budget, raw, options)
                        .await
                }
                _ => {
                    handle
                        .signal(WorkerTaskWorkflow::cancel, raw, options)
                        .await
                }
            };
            sent.map_err(|e| Undeliverable::NotYet(anyhow!("{e}")))
        }
        // A webhook's nudge is only a hint (the task polls anyway): one that cannot be
        // delivered, say to a task that has just ended, is dropped rather than retried.
        SIGNAL_GITHUB => {
            let handle = client.get_workflow_handle::<WorkerTaskWorkflow>(item.workflow_id.clone());
            if let Err(error) = handle
                .signal(
                    WorkerTaskWorkflow::github,
                    raw,
                    WorkflowSignalOptions::default(),
                )
                .await
            {
                tracing::debug!(workflow_id = %item.workflow_id, %error, "dropped a GitHub nudge");
            }
            Ok(())
        }
        other => Err(Undeliverable::Never(format!("unknown signal {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let settings = RelaySettings {
            task_queue: "q".into(),
            batch: 10,
            lease: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(5),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        };
        assert_eq!(backoff(&settings, 1), Duration::from_millis(100));
        assert_eq!(backoff(&settings, 2), Duration::from_millis(200));
        assert_eq!(backoff(&settings, 4), Duration::from_millis(800));
        assert_eq!(backoff(&settings, 50), Duration::from_secs(2));
    }
}
