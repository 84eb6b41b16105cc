//! A process's observability: the Prometheus registry that holds the Temporal SDK's metrics
//! (`temporal_*`, see [`sdk`]) and ours (`mainloop_*`, defined by the crates that record
//! them), and the metrics listener (`MAINLOOP_METRICS_LISTEN`) that serves it to Prometheus
//! and answers Kubernetes' probes:
//!
//! - `GET /metrics`: the Prometheus text format;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 when every part of the process is ready (the worker: its SDK worker
//!   runs; the API: its own `/readyz`, the store and Temporal answer), else 503.
//!
//! It is a listener of its own so probes and scrapes reach a worker (which serves nothing
//! else) and never go through the API's authentication.

pub mod sdk;
pub mod sql;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mainloop_api::AppState;
use mainloop_api::metrics::ApiMetrics;
use prometheus::{Encoder as _, Registry, TextEncoder};
use temporalio_common::telemetry::metrics::{CoreMeter, TemporalMeter};
use temporalio_common::telemetry::{TelemetryOptions, telemetry_init};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The registry of one process, with the SDK's instruments in it.
pub struct Telemetry {
    registry: Registry,
    meter: sdk::SdkMeter,
}

impl Telemetry {
    pub fn new() -> Result<Telemetry> {
        let registry = Registry::new();
        let meter = sdk::SdkMeter::default();
        registry
            .register(Box::new(meter.collector()))
            .context("registering the Temporal SDK's metrics")?;
        if let Some(statements) = sql::counter() {
            registry
                .register(Box::new(statements))
                .context("registering the SQL statement counter")?;
        }
        Ok(Telemetry { registry, meter })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The meter the SDK's workers record through.
    pub fn worker_meter(&self) -> Arc<dyn CoreMeter> {
        Arc::new(self.meter.clone())
    }

    /// The meter of a Temporal client, for `ConnectionOptions::metrics_meter`: its calls as
    /// `temporal_request`, `temporal_request_failure` and `temporal_request_latency`, prefixed
    /// and labelled as the SDK's workers label theirs.
    pub fn client_meter(&self) -> Result<TemporalMeter> {
        let options = TelemetryOptions::builder()
            .metrics(self.worker_meter())
            .build();
        telemetry_init(options)
            .context("the Temporal client's telemetry")?
            .get_temporal_metric_meter()
            .context("the Temporal client's telemetry has no meter")
    }
}

/// What `/readyz` asks, and what `/metrics` reads before it answers.
#[derive(Clone, Default)]
pub struct Probes {
    pub api: Option<ApiProbe>,
    /// The worker's: true while its SDK worker runs.
    pub worker: Option<Arc<AtomicBool>>,
}

/// The API of this process.
#[derive(Clone)]
pub struct ApiProbe {
    /// The API's state: `/readyz` asks what the API's own `/readyz` asks.
    pub state: AppState,
    /// Its metrics; the task counts are read from the store before each scrape.
    pub metrics: Arc<ApiMetrics>,
}

struct Exporter {
    registry: Registry,
    probes: Probes,
}

/// The metrics listener, bound before anything starts so a taken port fails start-up.
pub struct Listener(Option<tokio::net::TcpListener>);

impl Listener {
    /// Binds `listen`; none: there is no listener, and [`Listener::serve`] does nothing.
    ///
    /// # Errors
    /// If the address cannot be bound.
    pub async fn bind(listen: Option<SocketAddr>) -> Result<Listener> {
        let Some(listen) = listen else {
            return Ok(Listener(None));
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening for metrics on {listen}"))?;
        Ok(Listener(Some(listener)))
    }

    /// The line that announces where metrics are scraped, if there is a listener.
    pub fn banner_line(&self) -> Option<String> {
        let address = self.0.as_ref()?.local_addr().ok()?;
        Some(format!("metrics  http://{address}/metrics"))
    }

    /// Serves the registry and the probes until `stop`.
    pub fn serve(self, telemetry: &Telemetry, probes: Probes, stop: CancellationToken) -> Served {
        let Some(listener) = self.0 else {
            return Served(None);
        };
        let exporter = Arc::new(Exporter {
            registry: telemetry.registry.clone(),
            probes,
        });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(exporter);
        Served(Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("serving metrics")
        })))
    }
}

/// The running listener.
pub struct Served(Option<JoinHandle<Result<()>>>);

impl Served {
    /// Waits until it has stopped (cancel its `stop` first); a failure is logged, since the
    /// process has done its work by then.
    pub async fn stopped(self) {
        let Some(task) = self.0 else {
            return;
        };
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("{error:#}"),
            Err(error) => tracing::warn!(%error, "the metrics listener ended abnormally"),
        }
    }
}

/// How long a scrape waits for the store's task counts before it answers without them.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

async fn metrics(State(exporter): State<Arc<Exporter>>) -> Response {
    if let Some(api) = &exporter.probes.api {
        let refresh = api.metrics.refresh_tasks(&api.state.store);
        match tokio::time::timeout(STORE_TIMEOUT, refresh).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "metrics: cannot count tasks"),
            Err(_) => tracing::warn!("metrics: the store did not count tasks in time"),
        }
    }
    let encoder = TextEncoder::new();
    match encoder.encode_to_string(&exporter.registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, encoder.format_type())], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics: cannot encode");
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    }
}

async fn readyz(State(exporter): State<Arc<Exporter>>) -> Response {
    let mut ready = true;
    let mut body = serde_json::Map::new();
    if let Some(polling) = &exporter.probes.worker {
        let polling = polling.load(Ordering::Relaxed);
        ready &= polling;
        body.insert(
            "worker".into(),
            (if polling { "polling" } else { "not polling" }).into(),
        );
    }
    if let Some(api) = &exporter.probes.api {
        let (status, readiness) = mainloop_api::health::readyz(State(api.state.clone())).await;
        ready &= status.is_success();
        match serde_json::to_value(&readiness.0) {
            Ok(value) => {
                body.insert("api".into(), value);
            }
            Err(error) => {
                ready = false;
                body.insert("api".into(), error.to_string().into());
            }
        }
    }
    body.insert(
        "status".into(),
        (if ready { "ready" } else { "unavailable" }).into(),
    );
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(serde_json::Value::Object(body))).into_response()
}
