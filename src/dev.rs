//! `mainloop dev`: the whole product in one process on one machine. It starts the Temporal
//! dev server as a child (state in the data directory, Web UI on), then the worker and the
//! API on SQLite, prints the URLs, and on Ctrl-C stops everything in reverse order. With
//! `--demo`, a scripted model and a fake GitHub start first, in this process, and stop last.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use mainloop_api::metrics::ApiMetrics;
use mainloop_api::{ApiSettings, TemporalLink};
use mainloop_testkit::demo::Demo;
use mainloop_testkit::temporal::{DevServer, DevServerOptions, find_temporal};
use mainloop_workflows::TemporalSettings;
use tokio_util::sync::CancellationToken;

use crate::config::DevArgs;
use crate::metrics::{self, ApiProbe, Probes, Telemetry};
use crate::run::{
    WorkerParts, api_settings, data_dir, github_client, identity, open_store, run_worker, start_api,
};

pub async fn run(mut args: DevArgs, shutdown: CancellationToken) -> Result<()> {
    // Refuse bad settings before starting anything.
    let mut api = api_settings(&args.api, &args.queue)?;
    let binary = match &args.temporal_bin {
        Some(path) => path.clone(),
        None => find_temporal()?,
    };
    let demo = if args.demo {
        Some(crate::demo::start(&mut args).await?)
    } else {
        None
    };
    // The demo's GitHub signs its webhooks with a secret of its own (`demo::deliver_webhooks`).
    if let Some(demo) = &demo {
        api.webhook_secret = Some(Arc::from(demo.webhook_secret()));
    }
    let result = run_temporal(&args, api, binary, demo.as_ref(), shutdown).await;
    // The fakes go last: the worker and the API have stopped calling them.
    if let Some(demo) = &demo {
        demo.shutdown().await;
    }
    // Dropping the demo removes its state directory, now that Temporal has stopped.
    drop(demo);
    result
}

async fn run_temporal(
    args: &DevArgs,
    mut api: ApiSettings,
    binary: std::path::PathBuf,
    demo: Option<&Demo>,
    shutdown: CancellationToken,
) -> Result<()> {
    let data = data_dir(&args.store)?;
    let mut options = DevServerOptions::ephemeral()?.tuned_for_latency();
    options.binary = binary;
    options.port = Some(args.temporal_port);
    options.ui_port = Some(args.temporal_ui_port);
    options.db_file = Some(data.join("temporal.db"));
    options.log_file = Some(data.join("temporal.log"));
    let mut temporal = DevServer::start(options).await.with_context(|| {
        format!(
            "starting the Temporal dev server on port {} (is another one running? see {})",
            args.temporal_port,
            data.join("temporal.log").display()
        )
    })?;
    api.app.temporal_namespace = temporal.namespace().to_string();
    if api.app.temporal_ui_url.is_none() {
        api.app.temporal_ui_url = temporal.ui_url();
    }
    let result = run_services(args, api, &temporal, demo, shutdown).await;
    if let Err(error) = temporal.stop().await {
        tracing::warn!(%error, "stopping the Temporal dev server");
    }
    result
}

async fn run_services(
    args: &DevArgs,
    mut api: ApiSettings,
    temporal: &DevServer,
    demo: Option<&Demo>,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics_listener = metrics::Listener::bind(args.metrics.metrics_listen).await?;
    let telemetry = Telemetry::new()?;
    let api_metrics =
        ApiMetrics::register(telemetry.registry()).context("registering the API's metrics")?;
    api.metrics = Some(api_metrics.clone());
    let store = open_store(&args.store, true).await?;
    let mut settings =
        TemporalSettings::local(&temporal.address(), temporal.namespace(), &identity("dev"))?;
    settings.connection.metrics_meter = Some(telemetry.client_meter()?);
    let client = settings
        .connect()
        .await
        .context("connecting to the Temporal dev server")?;
    // The API gets its own token so that it can finish after the worker has drained, and
    // the metrics listener another, to answer until both have.
    let api_shutdown = CancellationToken::new();
    let metrics_shutdown = CancellationToken::new();
    let started = start_api(
        args.api.listen,
        api,
        store.clone(),
        TemporalLink::connected(client.clone()),
        github_client(&args.github)?,
        &api_shutdown,
    )
    .await?;
    if let Some(demo) = demo {
        crate::demo::deliver_webhooks(demo, started.address);
    }
    let mut banner = demo.map(crate::demo::banner).unwrap_or_default();
    banner.push(format!("mainloop  http://{}", started.address));
    banner.extend(temporal.ui_url().map(|ui| format!("temporal-ui  {ui}")));
    banner.extend(metrics_listener.banner_line());
    crate::run::announce(&banner);
    let polling = Arc::new(AtomicBool::new(false));
    let probes = Probes {
        api: Some(ApiProbe {
            state: started.state.clone(),
            metrics: api_metrics,
        }),
        worker: Some(polling.clone()),
    };
    let exporter = metrics_listener.serve(&telemetry, probes, metrics_shutdown.clone());
    let parts = WorkerParts {
        queue: &args.queue,
        worker: &args.worker,
        chat: &args.chat,
        github: &args.github,
        tasks: &args.tasks,
        data_dir: data_dir(&args.store)?,
        job_env: demo.map(|_| crate::demo::job_env()).unwrap_or_default(),
        telemetry: &telemetry,
        polling,
    };
    let worked = run_worker(client, store.clone(), parts, shutdown).await;
    api_shutdown.cancel();
    let served = started.server.await.context("the API task failed")?;
    metrics_shutdown.cancel();
    exporter.stopped().await;
    store.close().await;
    worked?;
    served
}
