//! The API benchmarks, on the API started in this process (as `mainloop serve` starts it) on
//! PostgreSQL, with no worker: nothing here runs a workflow.
//! - F6: `GET /api/inbox` with 10k tasks (each with its plan-review item) in the store.
//! - F7: one event committed to the store → the last of 100 connected SSE clients has it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use mainloop::config::{ApiArgs, GitHubArgs, QueueArgs};
use mainloop::run::{api_settings, github_client, start_api};
use mainloop_api::TemporalLink;
use mainloop_store::{
    ConfirmOverrides, InboxKind, NewEvent, NewInboxItem, NewProposal, Store, TaskProjection,
    TaskStatus, event_kind,
};
use mainloop_testkit::ports::free_port;
use mainloop_testkit::postgres::PgServer;
use tokio_util::sync::CancellationToken;

use crate::sse_clients;
use crate::support::{Bound, Probe, Row, Stats, WARMUP, setting};

const USER: &str = "bench-api";

#[derive(Parser)]
struct Settings {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    queue: QueueArgs,
    #[command(flatten)]
    github: GitHubArgs,
}

pub async fn run() -> Result<Vec<Row>> {
    let pg = PgServer::start().await?;
    let store = Store::connect(&pg.create_database("mainloop").await?).await?;
    store.migrate().await?;
    let port = free_port()?;
    let settings = Settings::try_parse_from([
        "bench".to_string(),
        format!("--listen=127.0.0.1:{port}"),
        format!("--user={USER}"),
        // Measured here is latency; the limiter would refuse the samples as a flood.
        "--rate-limit-per-minute=0".to_string(),
    ])?;
    let shutdown = CancellationToken::new();
    let api = start_api(
        settings.api.listen,
        api_settings(&settings.api, &settings.queue)?,
        store.clone(),
        // The seeded confirmations queue signals for the main thread; with no Temporal they
        // stay queued instead of starting 10k workflows during the measurement.
        TemporalLink::disconnected(),
        github_client(&settings.github)?,
        &shutdown,
    )
    .await?;
    let base = format!("http://{}", api.address);
    let measured = async {
        let mut rows = sse_fanout(&store, &base).await?;
        rows.extend(inbox(&store, &base).await?);
        anyhow::Ok(rows)
    }
    .await;
    shutdown.cancel();
    api.server.await??;
    measured
}

/// Stores `count` tasks as the product makes them: a proposal (on its note), confirmed, then
/// waiting for plan review with its inbox item raised.
async fn seed(store: &Store, count: usize) -> Result<()> {
    let one = |i: usize| {
        let store = store.clone();
        async move {
            let note = store
                .add_note(USER, &format!("seed-{i}"), "proposing a task")
                .await?;
            let id = uuid::Uuid::now_v7().to_string();
            store
                .create_proposal(
                    USER,
                    &NewProposal {
                        id: id.clone(),
                        message_id: note.id,
                        title: format!("Task {i}"),
                        description: "Seeded by the benchmark".into(),
                        repo: "acme/web".into(),
                        model: None,
                        skip_planning: false,
                    },
                )
                .await?;
            store
                .confirm_proposal(
                    USER,
                    &id,
                    &ConfirmOverrides::default(),
                    &format!("main-thread/{USER}"),
                )
                .await?;
            store
                .record_task(
                    USER,
                    &id,
                    &TaskProjection {
                        status: Some(TaskStatus::WaitingPlanReview),
                        detail: "waiting for plan review".into(),
                        issue_number: Some(i as i64 + 1),
                        ..TaskProjection::default()
                    },
                    Some(&NewInboxItem {
                        id: format!("{id}-plan-1"),
                        kind: InboxKind::PlanReview,
                        title: format!("Plan ready: Task {i}"),
                        body: "1. Add greet()\n2. Test it".into(),
                        url: None,
                        resolved: false,
                    }),
                )
                .await?;
            anyhow::Ok(())
        }
    };
    // A few at a time: the pool has room, and 10k one by one takes too long.
    let mut next = 0;
    while next < count {
        let batch: Vec<_> = (next..(next + 16).min(count)).map(one).collect();
        for result in futures::future::join_all(batch).await {
            result?;
        }
        next += 16;
    }
    Ok(())
}

/// Inbox reads made before F6's samples, and reported apart from them.
const COLD_READS: usize = 100;

async fn inbox(store: &Store, base: &str) -> Result<Vec<Row>> {
    let tasks = setting("F6_TASKS", 10_000);
    let iterations = setting("F6_ITERATIONS", 300);
    let seeding = Instant::now();
    seed(store, tasks).await?;
    let seeded = seeding.elapsed();
    let http = reqwest::Client::new();
    // The first few dozen reads after the bulk seeding took about 25 ms each (2026-11-23),
    // the rest 1–2 ms: measured is the store at rest, and the cold reads are reported apart.
    let mut cold = Vec::new();
    let mut samples = Vec::new();
    let mut items = 0;
    for i in 0..COLD_READS + iterations {
        let start = Instant::now();
        let response = http.get(format!("{base}/api/inbox")).send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "inbox answered {}",
            response.status()
        );
        let body = response.bytes().await?;
        if i >= COLD_READS {
            samples.push(start.elapsed());
        } else {
            cold.push(start.elapsed());
        }
        items = serde_json::from_slice::<serde_json::Value>(&body)?
            .as_array()
            .map_or(0, Vec::len);
    }
    let cold_max = cold.iter().max().copied().unwrap_or_default();
    let cold = Stats::of(cold);
    let stats = Stats::of(samples);
    Ok(vec![Row {
        id: "F6",
        what: format!("inbox list with {tasks} tasks, p99"),
        figure: stats.p99_ms,
        unit: "ms",
        bound: Bound::AtMost(10.0),
        probe: Some(Probe::Loopback),
        note: format!(
            "n={}, p50 {:.2} ms, {items} items per page, PostgreSQL (seeded in {:.0} s); \
             the {} reads before, just after the seeding: p50 {:.2} ms, max {:.2} ms",
            stats.n,
            stats.p50_ms,
            seeded.as_secs_f64(),
            cold.n,
            cold.p50_ms,
            cold_max.as_secs_f64() * 1000.0
        ),
    }])
}

async fn sse_fanout(store: &Store, base: &str) -> Result<Vec<Row>> {
    let clients = setting("F7_CLIENTS", 100);
    let iterations = setting("F7_ITERATIONS", 100);
    // One client first: what the fan-out adds is the difference.
    let single = fanout(store, base, 1, iterations).await?;
    let stats = fanout(store, base, clients, iterations).await?;
    Ok(vec![Row {
        id: "F7",
        what: format!("event committed → last of {clients} SSE clients has it, p50"),
        figure: stats.p50_ms,
        unit: "ms",
        bound: Bound::AtMost(3.0),
        probe: Some(Probe::Loopback),
        note: format!(
            "n={}, p99 {:.2} ms; one client alone p50 {:.2} ms; the commit is inside the \
             figure; the clients in a process of their own, reporting the last arrival over \
             a pipe (inside the figure)",
            stats.n, stats.p99_ms, single.p50_ms
        ),
    }])
}

async fn fanout(store: &Store, base: &str, clients: usize, iterations: usize) -> Result<Stats> {
    use tokio::io::AsyncBufReadExt as _;
    let after = store.last_event_id().await?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .env(
            sse_clients::URL_ENV,
            format!("{base}/api/events?after={after}"),
        )
        .env(sse_clients::COUNT_ENV, clients.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the SSE clients' process")?;
    let stdout = child.stdout.take().context("the clients' stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut next_line = async || -> Result<String> {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the SSE clients did not answer")??
            .context("the SSE clients' process ended")
    };
    anyhow::ensure!(
        next_line().await? == "ready",
        "the SSE clients did not connect"
    );
    let mut samples = Vec::new();
    for seq in 0..WARMUP + iterations {
        let start = Instant::now();
        store
            .append_events(
                USER,
                &[NewEvent::new(
                    event_kind::THREAD_NOTICE,
                    serde_json::json!({"level": "info", "text": seq.to_string()}),
                )],
            )
            .await?;
        // The clients' process says when the last of them has it; the pipe's hop is inside
        // the figure.
        let got = next_line().await?;
        let took = start.elapsed();
        anyhow::ensure!(
            got == seq.to_string(),
            "event {got} arrived while waiting for {seq}"
        );
        if seq >= WARMUP {
            samples.push(took);
        }
        // Apart, as events come: each one is fanned out to idle clients.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Closing its stdin ends the clients' process.
    drop(child.stdin.take());
    child.wait().await?;
    Ok(Stats::of(samples))
}
