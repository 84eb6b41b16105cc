//! F1: a chat message posted to the API → the first streamed token on the event stream, with
//! an instant fake model (testkit's Anthropic fake, answering at once). The API and the worker
//! run in this process, as `mainloop dev` runs them, on SQLite.
//!
//! Measured twice: on an idle thread (the user writes again after a moment, which is how chat
//! is used; the target applies to it) and in a burst (each message posted the instant the
//! previous reply completes, so it queues behind the previous turn's bookkeeping).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use mainloop::config::{
    ApiArgs, ChatArgs, GitHubArgs, QueueArgs, StoreArgs, TaskArgs, WorkerSettingsArgs,
};
use mainloop::run::{WorkerParts, api_settings, github_client, open_store, run_worker, start_api};
use mainloop_api::TemporalLink;
use mainloop_testkit::anthropic::FakeAnthropic;
use mainloop_testkit::ports::free_port;
use mainloop_testkit::sse::SseClient;
use mainloop_testkit::temporal::DevServer;
use mainloop_workflows::TemporalSettings;
use tokio_util::sync::CancellationToken;

use crate::support::{Bound, Probe, Row, Stats, WARMUP, setting};

/// Time a user takes to write the next message, as far as the thread is concerned: long
/// enough for the previous turn's bookkeeping to finish.
const THINK_TIME: Duration = Duration::from_millis(100);

#[derive(Parser)]
struct Settings {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    queue: QueueArgs,
    #[command(flatten)]
    worker: WorkerSettingsArgs,
    #[command(flatten)]
    chat: ChatArgs,
    #[command(flatten)]
    github: GitHubArgs,
    #[command(flatten)]
    tasks: TaskArgs,
}

pub async fn run(temporal: &DevServer) -> Result<Vec<Row>> {
    let iterations = setting("F1_ITERATIONS", 200);
    let dir = tempfile::tempdir()?;
    let anthropic = FakeAnthropic::start().await?;
    let port = free_port()?;
    let settings = Settings::try_parse_from([
        "bench".to_string(),
        format!("--data-dir={}", dir.path().display()),
        format!("--listen=127.0.0.1:{port}"),
        format!("--anthropic-base-url={}", anthropic.base_url()),
        format!("--anthropic-api-key={}", anthropic.api_key()),
        "--task-queue=bench-f1".to_string(),
        "--user=bench-f1".to_string(),
        // Measured here is latency; the limiter would refuse the samples as a flood.
        "--rate-limit-per-minute=0".to_string(),
    ])?;
    let store = open_store(&settings.store, true).await?;
    let client = TemporalSettings::local(&temporal.address(), temporal.namespace(), "bench-f1")?
        .connect()
        .await?;
    let shutdown = CancellationToken::new();
    // Metrics are recorded as in production (nothing scrapes them).
    let telemetry = mainloop::metrics::Telemetry::new()?;
    let api = start_api(
        settings.api.listen,
        api_settings(&settings.api, &settings.queue)?,
        store.clone(),
        TemporalLink::connected(client.clone()),
        github_client(&settings.github)?,
        &shutdown,
    )
    .await?;
    let measure = async {
        let result = measure(&format!("http://{}", api.address), iterations).await;
        shutdown.cancel();
        result
    };
    let (worked, measured) = tokio::join!(
        run_worker(
            client.clone(),
            store.clone(),
            WorkerParts {
                queue: &settings.queue,
                worker: &settings.worker,
                chat: &settings.chat,
                github: &settings.github,
                tasks: &settings.tasks,
                data_dir: dir.path().to_path_buf(),
                job_env: Vec::new(),
                telemetry: &telemetry,
                polling: Default::default(),
            },
            shutdown.clone(),
        ),
        measure,
    );
    worked?;
    api.server.await??;
    let (idle, burst) = measured?;
    let note = |s: &Stats| {
        format!(
            "n={}, instant fake model, API+worker in process, SQLite",
            s.n
        )
    };
    Ok(vec![
        Row {
            id: "F1",
            what: "chat message → first streamed token, p50 (idle thread)".into(),
            figure: idle.p50_ms,
            unit: "ms",
            bound: Bound::AtMost(20.0),
            probe: Some(Probe::EchoUpdate),
            note: format!("{}; burst p50 {:.1} ms", note(&idle), burst.p50_ms),
        },
        Row {
            id: "F1",
            what: "chat message → first streamed token, p99 (idle thread)".into(),
            figure: idle.p99_ms,
            unit: "ms",
            bound: Bound::AtMost(60.0),
            probe: Some(Probe::EchoUpdate),
            note: format!("{}; burst p99 {:.1} ms", note(&idle), burst.p99_ms),
        },
    ])
}

async fn measure(base: &str, iterations: usize) -> Result<(Stats, Stats)> {
    let http = reqwest::Client::new();
    let page: serde_json::Value = http
        .get(format!("{base}/api/messages?limit=1"))
        .send()
        .await?
        .json()
        .await?;
    let after = page["last_event_id"].as_i64().context("last_event_id")?;
    let mut events =
        SseClient::connect(&format!("{base}/api/events?after={after}"), &[], None).await?;
    let mut idle = Vec::new();
    let mut burst = Vec::new();
    for (samples, think) in [(&mut idle, THINK_TIME), (&mut burst, Duration::ZERO)] {
        for i in 0..WARMUP + iterations {
            tokio::time::sleep(think).await;
            let start = Instant::now();
            let response = http
                .post(format!("{base}/api/messages"))
                .header("idempotency-key", uuid::Uuid::now_v7().to_string())
                .json(&serde_json::json!({"content": format!("message {i}")}))
                .send()
                .await?;
            anyhow::ensure!(
                response.status() == 202,
                "POST answered {}",
                response.status()
            );
            events
                .collect_until(Duration::from_secs(30), |e| e.event == "message.delta")
                .await?;
            if i >= WARMUP {
                samples.push(start.elapsed());
            }
            events
                .collect_until(Duration::from_secs(30), |e| {
                    e.event == "message.completed" && e.data.contains("\"role\":\"assistant\"")
                })
                .await?;
        }
    }
    Ok((Stats::of(idle), Stats::of(burst)))
}
