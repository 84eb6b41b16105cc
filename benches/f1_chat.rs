//! F1 of DESIGN §12: a chat message posted to the API → the first streamed token on the event
//! stream, p50 and p99, with an instant fake model. Printed next to calibration probes run in
//! the same process against the same servers (loopback HTTP round trip, a Temporal no-op
//! workflow, a Temporal echo update), so the figures can be read as ratios that carry from
//! one machine to another.
//!
//! F1 is measured twice: on an idle thread (the user writes again after a moment, which is how
//! chat is used) and in a burst (each message posted the instant the previous reply
//! completes, so it queues behind the workflow's bookkeeping of the previous turn).
//!
//! `make bench`; `MAINLOOP_BENCH_ITERATIONS` sets the sample size (default 200).

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
use mainloop_testkit::temporal::{DevServer, DevServerOptions};
use mainloop_workflows::TemporalSettings;
use temporalio_client::{
    Client, WorkflowExecuteUpdateOptions, WorkflowGetResultOptions, WorkflowSignalOptions,
    WorkflowStartOptions,
};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    Runtime, SyncWorkflowContext, Worker, WorkerOptions, WorkflowContext, WorkflowResult,
};
use tokio_util::sync::CancellationToken;

const CALIBRATION_QUEUE: &str = "bench-calibration";
const WARMUP: usize = 10;
/// Time a user takes to write the next message, as far as the thread is concerned: long
/// enough for the previous turn's bookkeeping to finish.
const THINK_TIME: Duration = Duration::from_millis(100);

#[workflow]
#[derive(Default)]
pub struct NoopWorkflow;

#[workflow_methods]
impl NoopWorkflow {
    #[run]
    pub async fn run(_ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        Ok(())
    }
}

#[workflow]
#[derive(Default)]
pub struct EchoWorkflow {
    done: bool,
}

#[workflow_methods]
impl EchoWorkflow {
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        ctx.wait_condition(|s| s.done).await?;
        Ok(())
    }

    #[update]
    pub fn echo(&mut self, _ctx: &mut SyncWorkflowContext<Self>, value: String) -> String {
        value
    }

    #[signal]
    pub fn finish(&mut self, _ctx: &mut SyncWorkflowContext<Self>, _unused: ()) {
        self.done = true;
    }
}

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

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

async fn bench() -> Result<()> {
    let iterations: usize = std::env::var("MAINLOOP_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir()?;
    // The dev server as `mainloop dev` runs it.
    let temporal = DevServer::start(DevServerOptions::ephemeral()?.tuned_for_latency()).await?;
    let anthropic = FakeAnthropic::start().await?;
    let port = free_port()?;
    let settings = Settings::parse_from([
        "bench".to_string(),
        format!("--data-dir={}", dir.path().display()),
        format!("--listen=127.0.0.1:{port}"),
        format!("--anthropic-base-url={}", anthropic.base_url()),
        format!("--anthropic-api-key={}", anthropic.api_key()),
    ]);
    let store = open_store(&settings.store, true).await?;
    let client = TemporalSettings::local(&temporal.address(), temporal.namespace(), "bench")?
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

    let runtime =
        Runtime::from_current_tokio(Default::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut calibration_worker = Worker::new(
        &runtime,
        client.clone(),
        WorkerOptions::new(CALIBRATION_QUEUE)
            .register_workflow::<NoopWorkflow>()?
            .register_workflow::<EchoWorkflow>()?
            .build(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop_calibration = calibration_worker.shutdown_handle();

    let measure = async {
        let result = measure(&client, &format!("http://{}", api.address), iterations).await;
        stop_calibration();
        shutdown.cancel();
        result
    };
    let (worked, calibrated, report) = tokio::join!(
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
        calibration_worker.run(),
        measure,
    );
    worked?;
    calibrated.map_err(|e| anyhow::anyhow!("{e}"))?;
    api.server.await??;
    let report = report?;
    println!("{}", report.markdown());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("f1.json"),
        serde_json::to_string_pretty(&report.json())?,
    )?;
    std::fs::write(out.join("f1.md"), report.markdown())?;
    Ok(())
}

struct Report {
    iterations: usize,
    loopback: Stats,
    noop_workflow: Stats,
    echo_update: Stats,
    f1_idle: Stats,
    f1_burst: Stats,
}

impl Report {
    fn markdown(&self) -> String {
        let row = |name: &str, s: &Stats, target: &str| {
            format!(
                "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {target} |\n",
                s.p50_ms,
                s.p99_ms,
                s.p50_ms / self.noop_workflow.p50_ms,
                s.p50_ms / self.echo_update.p50_ms,
            )
        };
        let mut out = format!(
            "F1 benchmark, {} samples each (ratios: p50 over the calibration p50)\n\n\
             | measurement | p50 ms | p99 ms | ÷ no-op workflow | ÷ echo update | target |\n\
             |---|---|---|---|---|---|\n",
            self.iterations
        );
        out.push_str(&row(
            "calibration: loopback HTTP round trip",
            &self.loopback,
            "",
        ));
        out.push_str(&row(
            "calibration: Temporal no-op workflow",
            &self.noop_workflow,
            "",
        ));
        out.push_str(&row(
            "calibration: Temporal echo update",
            &self.echo_update,
            "",
        ));
        out.push_str(&row(
            "F1 message → first streamed token (idle thread)",
            &self.f1_idle,
            "p50 ≤ 20 ms, p99 ≤ 60 ms",
        ));
        out.push_str(&row(
            "F1 message → first streamed token (burst)",
            &self.f1_burst,
            "",
        ));
        out
    }

    fn json(&self) -> serde_json::Value {
        let stats = |s: &Stats| serde_json::json!({"p50_ms": s.p50_ms, "p99_ms": s.p99_ms});
        serde_json::json!({
            "iterations": self.iterations,
            "calibration": {
                "loopback_http": stats(&self.loopback),
                "temporal_noop_workflow": stats(&self.noop_workflow),
                "temporal_echo_update": stats(&self.echo_update),
            },
            "f1_message_to_first_token_idle": stats(&self.f1_idle),
            "f1_message_to_first_token_burst": stats(&self.f1_burst),
            "f1_idle_p50_over_noop_workflow": self.f1_idle.p50_ms / self.noop_workflow.p50_ms,
            "f1_idle_p50_over_echo_update": self.f1_idle.p50_ms / self.echo_update.p50_ms,
        })
    }
}

struct Stats {
    p50_ms: f64,
    p99_ms: f64,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples
            .get(index)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    Stats {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

async fn measure(client: &Client, base: &str, iterations: usize) -> Result<Report> {
    let http = reqwest::Client::new();

    let mut loopback = Vec::new();
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        http.get(format!("{base}/healthz"))
            .send()
            .await?
            .bytes()
            .await?;
        if i >= WARMUP {
            loopback.push(start.elapsed());
        }
    }

    let mut noop = Vec::new();
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        let handle = client
            .start_workflow(
                NoopWorkflow::run,
                (),
                WorkflowStartOptions::new(CALIBRATION_QUEUE, format!("noop-{i}")).build(),
            )
            .await?;
        handle
            .get_result(WorkflowGetResultOptions::default())
            .await?;
        if i >= WARMUP {
            noop.push(start.elapsed());
        }
    }

    let echo = client
        .start_workflow(
            EchoWorkflow::run,
            (),
            WorkflowStartOptions::new(CALIBRATION_QUEUE, "echo").build(),
        )
        .await?;
    let mut updates = Vec::new();
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        let value = echo
            .execute_update(
                EchoWorkflow::echo,
                format!("v{i}"),
                WorkflowExecuteUpdateOptions::default(),
            )
            .await?;
        anyhow::ensure!(value == format!("v{i}"));
        if i >= WARMUP {
            updates.push(start.elapsed());
        }
    }
    echo.signal(EchoWorkflow::finish, (), WorkflowSignalOptions::default())
        .await?;

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

    Ok(Report {
        iterations,
        loopback: stats(loopback),
        noop_workflow: stats(noop),
        echo_update: stats(updates),
        f1_idle: stats(idle),
        f1_burst: stats(burst),
    })
}
