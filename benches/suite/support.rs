//! What every benchmark of the suite shares: the calibration probes (a loopback HTTP round
//! trip, a Temporal no-op workflow, a Temporal echo update), percentiles, the settings read from
//! the environment, and the report (one Markdown table and one JSON document, with the facts of
//! the machine they were measured on).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use temporalio_client::{
    Client, WorkflowExecuteUpdateOptions, WorkflowGetResultOptions, WorkflowSignalOptions,
    WorkflowStartOptions,
};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    Runtime, SyncWorkflowContext, Worker, WorkerOptions, WorkflowContext, WorkflowResult,
};

/// Samples thrown away before measuring: connections, caches and the JIT-less but lazy
/// server-side state warm up on them.
pub const WARMUP: usize = 10;

/// `MAINLOOP_BENCH_<NAME>` as a number, else `default`: every sample size is configurable so
/// a quick run and a careful one use the same code.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(format!("MAINLOOP_BENCH_{name}"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// p50 and p99 of a sample, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let at = |q: f64| {
            let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples
                .get(index)
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(f64::NAN)
        };
        Stats {
            n: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
        }
    }

    fn json(&self) -> Value {
        json!({"n": self.n, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms})
    }
}

pub const CALIBRATION_QUEUE: &str = "bench-calibration";

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

/// The three probes every figure is divided by: what this machine and this Temporal server
/// take for the least work of each kind, measured in the same process as the figures.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    pub loopback: Stats,
    pub noop_workflow: Stats,
    pub echo_update: Stats,
}

/// Which probe a figure is read against.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    Loopback,
    NoopWorkflow,
    EchoUpdate,
}

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::Loopback => "loopback round trip",
            Probe::NoopWorkflow => "no-op workflow",
            Probe::EchoUpdate => "echo update",
        }
    }

    fn p50(self, c: &Calibration) -> f64 {
        match self {
            Probe::Loopback => c.loopback.p50_ms,
            Probe::NoopWorkflow => c.noop_workflow.p50_ms,
            Probe::EchoUpdate => c.echo_update.p50_ms,
        }
    }
}

/// Runs the probes against `client` (a calibration worker on its own task queue runs in this
/// process for the time) and a loopback HTTP server of its own.
pub async fn calibrate(client: &Client, iterations: usize) -> Result<Calibration> {
    let runtime =
        Runtime::from_current_tokio(Default::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut worker = Worker::new(
        &runtime,
        client.clone(),
        WorkerOptions::new(CALIBRATION_QUEUE)
            .register_workflow::<NoopWorkflow>()?
            .register_workflow::<EchoWorkflow>()?
            .build(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = worker.shutdown_handle();
    let probes = async {
        let result = probes(client, iterations).await;
        stop();
        result
    };
    let (ran, measured) = tokio::join!(worker.run(), probes);
    ran.map_err(|e| anyhow::anyhow!("{e}"))?;
    measured
}

async fn probes(client: &Client, iterations: usize) -> Result<Calibration> {
    // The loopback probe: an axum server answering a GET with a few bytes, as /healthz does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let mut loopback = Vec::new();
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        http.get(format!("http://{address}/"))
            .send()
            .await?
            .bytes()
            .await?;
        if i >= WARMUP {
            loopback.push(start.elapsed());
        }
    }
    server.abort();

    let run = uuid::Uuid::now_v7();
    let mut noop = Vec::new();
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        let handle = client
            .start_workflow(
                NoopWorkflow::run,
                (),
                WorkflowStartOptions::new(CALIBRATION_QUEUE, format!("noop-{run}-{i}")).build(),
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
            WorkflowStartOptions::new(CALIBRATION_QUEUE, format!("echo-{run}")).build(),
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
    Ok(Calibration {
        loopback: Stats::of(loopback),
        noop_workflow: Stats::of(noop),
        echo_update: Stats::of(updates),
    })
}

/// Whether a figure must stay under its target or reach it.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

/// One line of the report: a figure against its target.
#[derive(Debug, Clone)]
pub struct Row {
    /// `F1` … `F9`.
    pub id: &'static str,
    pub what: String,
    pub figure: f64,
    pub unit: &'static str,
    pub bound: Bound,
    /// The probe a time is read against (`None` for counts, rates and sizes).
    pub probe: Option<Probe>,
    /// How it was measured, in a few words (sample size, the other percentile).
    pub note: String,
}

impl Row {
    pub fn passes(&self) -> bool {
        match self.bound {
            Bound::AtMost(limit) => self.figure <= limit,
            Bound::AtLeast(limit) => self.figure >= limit,
        }
    }

    fn target(&self) -> String {
        match self.bound {
            Bound::AtMost(limit) => format!("≤ {limit} {}", self.unit),
            Bound::AtLeast(limit) => format!("≥ {limit} {}", self.unit),
        }
    }

    fn ratio(&self, c: &Calibration) -> Option<f64> {
        self.probe.map(|p| self.figure / p.p50(c))
    }
}

/// Facts of the machine and the source, so figures are never read out of their context.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let command = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let dirty = !command("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    json!({
        "date": command("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "commit": command("git", &["rev-parse", "--short=12", "HEAD"]),
        "dirty": dirty,
        "cpu": cpu,
        "cores": cores,
        "load_1m_at_start": load,
        "os": command("uname", &["-sr"]),
    })
}

/// The suite's results, written as one Markdown table and one JSON document.
pub struct Report {
    pub machine: Value,
    pub calibration: Calibration,
    pub rows: Vec<Row>,
    /// Benchmarks that did not produce figures, with the reason.
    pub errors: Vec<(String, String)>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let c = &self.calibration;
        let mut out = format!(
            "mainloop benchmarks (DESIGN §12), {} UTC, commit {}{}, {} × {} ({} cores), load {} \
             at start\n\n\
             Calibration (p50 / p99 ms): loopback round trip {:.2} / {:.2}; Temporal no-op \
             workflow {:.2} / {:.2}; Temporal echo update {:.2} / {:.2}.\n\n\
             | F | measurement | figure | target | ÷ probe p50 | result | how |\n\
             |---|---|---|---|---|---|---|\n",
            m["date"].as_str().unwrap_or("?"),
            m["commit"].as_str().unwrap_or("?"),
            if m["dirty"].as_bool().unwrap_or(false) {
                " (with uncommitted changes)"
            } else {
                ""
            },
            m["cores"],
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["load_1m_at_start"].as_str().unwrap_or("?"),
            c.loopback.p50_ms,
            c.loopback.p99_ms,
            c.noop_workflow.p50_ms,
            c.noop_workflow.p99_ms,
            c.echo_update.p50_ms,
            c.echo_update.p99_ms,
        );
        for row in &self.rows {
            let ratio = match (row.ratio(c), row.probe) {
                (Some(r), Some(p)) => format!("{r:.2} × {}", p.name()),
                _ => "—".to_string(),
            };
            out.push_str(&format!(
                "| {} | {} | {:.2} {} | {} | {} | {} | {} |\n",
                row.id,
                row.what,
                row.figure,
                row.unit,
                row.target(),
                ratio,
                if row.passes() { "pass" } else { "**miss**" },
                row.note,
            ));
        }
        for (id, error) in &self.errors {
            out.push_str(&format!(
                "| {id} | not measured | — | — | — | **error** | {} |\n",
                error.replace('|', "/").replace('\n', " ")
            ));
        }
        out
    }

    pub fn json(&self) -> Value {
        let c = &self.calibration;
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let (bound, limit) = match row.bound {
                    Bound::AtMost(l) => ("at_most", l),
                    Bound::AtLeast(l) => ("at_least", l),
                };
                json!({
                    "id": row.id,
                    "what": row.what,
                    "figure": row.figure,
                    "unit": row.unit,
                    "target": {"bound": bound, "value": limit},
                    "probe": row.probe.map(Probe::name),
                    "ratio_to_probe_p50": row.ratio(c),
                    "pass": row.passes(),
                    "note": row.note,
                })
            })
            .collect();
        json!({
            "machine": self.machine,
            "calibration": {
                "loopback_round_trip": c.loopback.json(),
                "temporal_noop_workflow": c.noop_workflow.json(),
                "temporal_echo_update": c.echo_update.json(),
            },
            "results": rows,
            "errors": self.errors.iter().map(|(id, e)| json!({"id": id, "error": e})).collect::<Vec<_>>(),
        })
    }

    /// Writes `report.md` and `report.json` under the target directory's `bench/`; returns it.
    pub fn write(&self) -> Result<PathBuf> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        let dir = target.join("bench");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&self.json())?,
        )?;
        Ok(dir)
    }
}

/// CPU time (user + system) this process `pid` has used, not counting its children.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    stat_cpu(pid, false)
}

/// CPU time of process `pid` and of its children that have ended and been waited for (a
/// worker's jobs, the git processes of this process's fake GitHub).
pub fn cpu_time_with_children(pid: u32) -> Result<Duration> {
    stat_cpu(pid, true)
}

/// CPU time of every running process named `command` (PostgreSQL's postmaster and backends),
/// with their ended children.
pub fn cpu_time_of_command(command: &str) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end() == command);
        // A process may end between the listing and the read.
        if let (true, Ok(cpu)) = (named, stat_cpu(pid, true)) {
            total += cpu;
        }
    }
    Ok(total)
}

fn stat_cpu(pid: u32, with_children: bool) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime and cstime are fields 14 to 17 of stat(5); `rest` starts at
    // field 3.
    let ticks = |i: usize| -> Result<u64> {
        Ok(fields
            .get(i - 3)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    let mut total = ticks(14)? + ticks(15)?;
    if with_children {
        total += ticks(16)? + ticks(17)?;
    }
    // USER_HZ is 100 on every Linux we run on (sysconf needs unsafe code or a crate).
    Ok(Duration::from_millis(total * 10))
}

/// CPU time the whole machine spent busy (every process, every core: the `cpu` line of
/// /proc/stat without idle and iowait).
pub fn machine_cpu_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("no cpu line in /proc/stat"))?;
    let mut ticks = 0u64;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    for (index, field) in line.split_whitespace().skip(1).take(8).enumerate() {
        if index != 3 && index != 4 {
            ticks += field.parse::<u64>()?;
        }
    }
    Ok(Duration::from_millis(ticks * 10))
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}
