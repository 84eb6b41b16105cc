//! The Temporal workers of a `mainloop worker` process: one for mainloop's task queue (the
//! tasks' workflows and activities), one for its chat queue (the main threads and their chat
//! turns), one for its intake queue (new tasks until they first wait) and one for its job
//! queue (the jobs, `MAINLOOP_MAX_JOBS` at a time); registration of the search attributes they
//! use; and run loops that outlive Temporal outages and drain gracefully on shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use mainloop_activities::ChatActivities;
use mainloop_activities::tasks::TaskActivities;
use temporalio_client::Client;
use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::enums::v1::IndexedValueType;
use temporalio_common::protos::temporal::api::operatorservice::v1::{
    AddSearchAttributesRequest, ListSearchAttributesRequest,
};
use temporalio_common::telemetry::TelemetryOptions;
use temporalio_common::telemetry::metrics::CoreMeter;
use temporalio_sdk::runtime::RuntimeOptions;
use temporalio_sdk::runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;

use crate::{
    MainThreadWorkflow, SEARCH_ATTRIBUTES, WorkerTaskWorkflow, chat_task_queue, intake_task_queue,
    job_task_queue,
};

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub task_queue: String,
    /// How many jobs this process runs at once: the job worker's activity slots.
    pub max_jobs: usize,
    /// How long running activities may take to finish once shutdown begins.
    pub graceful_shutdown: Duration,
    /// How long a cached workflow's task waits for this worker before any worker may take it.
    pub sticky_timeout: Duration,
    /// Most workflows each workflow worker keeps in memory between their workflow tasks;
    /// beyond it the least recently used is evicted and replayed from its history when it
    /// next has work. It bounds the memory of tasks parked on a person, whatever their number.
    pub workflow_cache: usize,
    /// Where the SDK records its metrics (`temporal_*`); none: it records none.
    pub meter: Option<Arc<dyn CoreMeter>>,
    /// True while the SDK's worker runs (it checks the namespace, then polls), false while it
    /// is being built, rebuilt after a failure, or drained: the worker's readiness.
    pub polling: Arc<AtomicBool>,
}

/// Everything a worker executes.
pub struct Implementations {
    pub chat: ChatActivities,
    pub tasks: TaskActivities,
}

/// Runs a worker until `shutdown` is cancelled. A worker that stops on its own (Temporal
/// unreachable for too long, say) is rebuilt after a pause, so a long outage delays work but
/// never ends the process.
///
/// The future is `!Send` (the SDK's worker is): run it on the main task, not `tokio::spawn`.
pub async fn run(
    client: Client,
    settings: WorkerSettings,
    implementations: Implementations,
    shutdown: CancellationToken,
) -> Result<()> {
    let telemetry = TelemetryOptions::builder()
        .maybe_metrics(settings.meter.clone())
        .build();
    let options = RuntimeOptions::builder()
        .telemetry_options(telemetry)
        .build()
        .map_err(|e| anyhow::anyhow!("the Temporal runtime's options: {e}"))?;
    let runtime = Runtime::from_current_tokio(options)
        .map_err(|e| anyhow::anyhow!("creating the Temporal runtime: {e}"))?;
    let chat = Arc::new(implementations.chat);
    let tasks = Arc::new(implementations.tasks);
    let main = keep_running(
        "worker",
        &runtime,
        &client,
        &shutdown,
        Some(&settings.polling),
        || {
            Ok(WorkerOptions::new(settings.task_queue.clone())
                // Main threads started before they had a queue of their own run here until
                // they continue as new.
                .register_workflow::<MainThreadWorkflow>()?
                .register_workflow::<WorkerTaskWorkflow>()?
                .register_activities(Shared(chat.clone()))
                .register_activities(Shared(tasks.clone()))
                .graceful_shutdown_period(settings.graceful_shutdown)
                .sticky_queue_schedule_to_start_timeout(settings.sticky_timeout)
                .max_cached_workflows(settings.workflow_cache)
                .build())
        },
    );
    // The people's side: a reply or a confirmation is polled for on its own, never behind
    // the workflow tasks of hundreds of tasks that all got their answers at once.
    let chat_worker = keep_running("chat worker", &runtime, &client, &shutdown, None, || {
        Ok(WorkerOptions::new(chat_task_queue(&settings.task_queue))
            .register_workflow::<MainThreadWorkflow>()?
            .register_activities(Shared(chat.clone()))
            .graceful_shutdown_period(settings.graceful_shutdown)
            .sticky_queue_schedule_to_start_timeout(settings.sticky_timeout)
            .max_cached_workflows(settings.workflow_cache)
            .build())
    });
    // New tasks, until they first wait: their first steps are never queued behind the replays
    // of a backlog of parked tasks answered at once (see `intake_task_queue`).
    let intake = keep_running("intake worker", &runtime, &client, &shutdown, None, || {
        Ok(WorkerOptions::new(intake_task_queue(&settings.task_queue))
            .register_workflow::<WorkerTaskWorkflow>()?
            .register_activities(Shared(tasks.clone()))
            .graceful_shutdown_period(settings.graceful_shutdown)
            .sticky_queue_schedule_to_start_timeout(settings.sticky_timeout)
            .max_cached_workflows(settings.workflow_cache)
            .build())
    });
    // Activities only: as many slots as jobs may run, so a job is taken from the queue only
    // when it can start.
    let jobs = keep_running("job worker", &runtime, &client, &shutdown, None, || {
        let tuner = TunerHolder::builder()
            .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(2))
            .activity_task_slot_supplier(FixedSizeSlotSupplier::new(settings.max_jobs.max(1)))
            .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(1))
            .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(1))
            .build();
        Ok(WorkerOptions::new(job_task_queue(&settings.task_queue))
            .register_activities(Shared(tasks.clone()))
            .tuner(tuner)
            .graceful_shutdown_period(settings.graceful_shutdown)
            .build())
    });
    // Any of them failing for good ends them all: the process exits and is restarted whole.
    tokio::try_join!(main, chat_worker, intake, jobs).map(|_| ())
}

/// Runs the SDK worker that `options` describes until `shutdown` is cancelled, rebuilding it
/// after a pause whenever it stops on its own. `polling`, if given, tells whether it polls.
async fn keep_running(
    name: &str,
    runtime: &Runtime,
    client: &Client,
    shutdown: &CancellationToken,
    polling: Option<&AtomicBool>,
    options: impl Fn() -> Result<WorkerOptions>,
) -> Result<()> {
    let set_polling = |value: bool| {
        if let Some(polling) = polling {
            polling.store(value, Ordering::Relaxed);
        }
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut worker = Worker::new(runtime, client.clone(), options()?)
            .map_err(|e| anyhow::anyhow!("creating the {name}: {e}"))?;
        let stop = worker.shutdown_handle();
        set_polling(true);
        let result = {
            let run = worker.run();
            tokio::pin!(run);
            tokio::select! {
                result = &mut run => result,
                () = shutdown.cancelled() => {
                    tracing::info!("{name} draining");
                    set_polling(false);
                    stop();
                    run.await
                }
            }
        };
        set_polling(false);
        if shutdown.is_cancelled() {
            return result.map_err(|e| anyhow::anyhow!("{name}: {e}"));
        }
        match result {
            Ok(()) => tracing::warn!("{name} stopped on its own; restarting it"),
            Err(error) => tracing::error!(%error, "{name} failed; restarting it"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Registers the instance behind an `Arc` so that a rebuilt worker shares it.
struct Shared<T>(Arc<T>);

impl<T> temporalio_sdk::activities::ActivityImplementer for Shared<T>
where
    T: temporalio_sdk::activities::ActivityImplementer + Send + Sync + 'static,
{
    fn register_all(self: Arc<Self>, defs: &mut temporalio_sdk::activities::ActivityDefinitions) {
        self.0.clone().register_all(defs);
    }
}

/// Adds mainloop's search attributes to `namespace` where missing. Dev servers get them from
/// flags; a real cluster gets them here, or from the set-up job of the deployment if this
/// identity may not change the namespace (then this only logs).
pub async fn ensure_search_attributes(client: &Client, namespace: &str) -> Result<()> {
    let mut operator = client.connection().operator_service();
    let existing = operator
        .list_search_attributes(
            ListSearchAttributesRequest {
                namespace: namespace.to_string(),
            }
            .into_request(),
        )
        .await
        .context("listing search attributes")?
        .into_inner();
    let missing: HashMap<String, i32> = SEARCH_ATTRIBUTES
        .iter()
        .filter(|(name, _)| !existing.custom_attributes.contains_key(*name))
        .map(|(name, kind)| {
            let kind = match *kind {
                "Keyword" => IndexedValueType::Keyword,
                "Text" => IndexedValueType::Text,
                "Int" => IndexedValueType::Int,
                "Bool" => IndexedValueType::Bool,
                "Double" => IndexedValueType::Double,
                "Datetime" => IndexedValueType::Datetime,
                _ => IndexedValueType::KeywordList,
            };
            (name.to_string(), kind as i32)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(attributes = ?missing.keys().collect::<Vec<_>>(), namespace, "registering search attributes");
    operator
        .add_search_attributes(
            AddSearchAttributesRequest {
                search_attributes: missing,
                namespace: namespace.to_string(),
            }
            .into_request(),
        )
        .await
        .context("registering search attributes")?;
    Ok(())
}
