//! The Temporal CLI's dev server (`temporal server start-dev`) as a child process: on free
//! ports with a throwaway database for tests, or on fixed ports with a persistent database
//! for `mainloop dev`. It can be stopped, killed and restarted on the same database file, which
//! is how the tests simulate a Temporal outage.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::ports::free_port;
use crate::process::{ChildProcess, Output};

/// The search attributes mainloop's workflows set (DESIGN §3). A copy, since testkit depends on
/// none of mainloop's crates: a test in the root package keeps it equal to
/// `mainloop_workflows::SEARCH_ATTRIBUTES`.
pub const SEARCH_ATTRIBUTES: &[(&str, &str)] = &[
    ("MainloopUser", "Keyword"),
    ("MainloopTaskStatus", "Keyword"),
    ("MainloopRepo", "Keyword"),
];

#[derive(Debug, Clone)]
pub struct DevServerOptions {
    pub binary: PathBuf,
    pub ip: String,
    /// gRPC port; `None` picks a free one.
    pub port: Option<u16>,
    /// Web UI port; `None` runs headless.
    pub ui_port: Option<u16>,
    /// SQLite file that keeps the server's state across restarts; `None` keeps it in memory.
    pub db_file: Option<PathBuf>,
    pub namespace: String,
    pub search_attributes: Vec<(String, String)>,
    /// Where the server's output goes; `None` discards it.
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    pub ready_timeout: Duration,
    /// `--dynamic-config-value KEY=JSON` settings.
    pub dynamic_config: Vec<(String, String)>,
}

impl DevServerOptions {
    /// A throwaway server (as tests want): a free port, headless, state in memory, and
    /// mainloop's search attributes. Set the fields to make it a persistent one.
    pub fn ephemeral() -> Result<DevServerOptions> {
        Ok(DevServerOptions {
            binary: find_temporal()?,
            ip: "127.0.0.1".into(),
            port: None,
            ui_port: None,
            db_file: None,
            namespace: "default".into(),
            search_attributes: SEARCH_ATTRIBUTES
                .iter()
                .map(|(name, kind)| (name.to_string(), kind.to_string()))
                .collect(),
            log_file: None,
            log_level: "warn".into(),
            ready_timeout: Duration::from_secs(60),
            dynamic_config: Vec::new(),
        })
    }

    /// Server settings for latency on one machine (what `mainloop dev` runs):
    /// - activities scheduled by a workflow task go straight back to the worker that completed
    ///   it, instead of a round through matching (tens of milliseconds when no poller waits);
    /// - one partition per task queue: partitions spread load across matching hosts, of which
    ///   a dev server has one, and a task landing in a partition no poller is on waits to be
    ///   forwarded;
    /// - timers fire on time: the server schedules no timer earlier than
    ///   `history.timerProcessorMaxTimeShift` (1 s) ahead, its allowance for clocks that differ
    ///   between hosts, so a 5 ms poll waited a whole second (measured: five 1 ms timers took
    ///   5.1 s, and 0.2 s with this). One process has one clock;
    /// - the history service reads its task queues as fast as tasks come: each of its queue
    ///   readers is limited to 20 reads a second per history shard, and a dev server has one
    ///   shard, so once the burst allowance was spent every workflow task, activity and timer
    ///   waited about 50 ms for the transfer or timer queue (measured: 20 activities in a row
    ///   took 1,050 ms, and 200 ms with this);
    /// - a run that continues as new is not held back: the server delays the new run's first
    ///   workflow task until `history.workflowIdReuseMinimalInterval` (1 s) after the old run
    ///   started, against tight continue-as-new loops. A task leaves the intake queue that way
    ///   at its first wait, which with an instant agent (demo, benchmark) comes well within a
    ///   second; with a real plan job it never does.
    pub fn tuned_for_latency(mut self) -> DevServerOptions {
        for (key, value) in [
            ("system.enableActivityEagerExecution", "true"),
            ("matching.numTaskqueueReadPartitions", "1"),
            ("matching.numTaskqueueWritePartitions", "1"),
            ("history.timerProcessorMaxTimeShift", "\"10ms\""),
            ("history.workflowIdReuseMinimalInterval", "\"10ms\""),
            ("history.transferProcessorMaxPollRPS", "1000"),
            ("history.timerProcessorMaxPollRPS", "1000"),
        ] {
            self.dynamic_config.push((key.into(), value.into()));
        }
        self
    }
}

/// How many times a server that exits during start-up is started again.
const START_ATTEMPTS: u32 = 3;

/// Why a start failed: an exit during start-up is worth another try, anything else is not.
enum StartError {
    Exited(anyhow::Error),
    Other(anyhow::Error),
}

/// A running dev server; killed when dropped.
pub struct DevServer {
    options: DevServerOptions,
    port: u16,
    child: Option<ChildProcess>,
}

impl DevServer {
    pub async fn start(mut options: DevServerOptions) -> Result<DevServer> {
        let pick_port = options.port.is_none();
        let port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        options.port = Some(port);
        let mut server = DevServer {
            options,
            port,
            child: None,
        };
        let started = std::time::Instant::now();
        let mut attempt = 1;
        loop {
            match server.spawn_once().await {
                Ok(()) => {
                    // `mainloop dev`'s own start-up time is its time to ready minus this
                    // (the benchmarks read it from the log).
                    tracing::info!(
                        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                        port = server.port,
                        "the Temporal dev server is ready"
                    );
                    return Ok(server);
                }
                Err(StartError::Exited(error)) if attempt < START_ATTEMPTS => {
                    // A port that was free when picked (ours, or one the server picks for its
                    // internal services) can be taken by another process before the server
                    // binds it; with many servers starting at once that happens. Pick again.
                    tracing::warn!("{error:#}; starting it again");
                    if pick_port {
                        server.port = free_port()?;
                        server.options.port = Some(server.port);
                    }
                    attempt += 1;
                }
                Err(StartError::Exited(error) | StartError::Other(error)) => return Err(error),
            }
        }
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.spawn_once().await {
                Ok(()) => return Ok(()),
                // The server picks free ports for its internal services itself, which races
                // like any free-port pick; the frontend port and database stay the same.
                Err(StartError::Exited(error)) if attempt < START_ATTEMPTS => {
                    tracing::warn!("{error:#}; starting it again");
                    attempt += 1;
                }
                Err(StartError::Exited(error) | StartError::Other(error)) => return Err(error),
            }
        }
    }

    async fn spawn_once(&mut self) -> Result<(), StartError> {
        let o = &self.options;
        let mut command = Command::new(&o.binary);
        command
            .arg("server")
            .arg("start-dev")
            .arg("--ip")
            .arg(&o.ip)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--namespace")
            .arg(&o.namespace)
            .arg("--log-level")
            .arg(&o.log_level)
            // The UI would otherwise fetch news from the internet on every start.
            .env("TEMPORAL_UI_DISABLE_NEWS_FETCH", "true");
        match o.ui_port {
            Some(ui_port) => {
                command.arg("--ui-port").arg(ui_port.to_string());
            }
            None => {
                command.arg("--headless");
            }
        }
        if let Some(db_file) = &o.db_file {
            command.arg("--db-filename").arg(db_file);
        }
        for (key, value) in &o.dynamic_config {
            command
                .arg("--dynamic-config-value")
                .arg(format!("{key}={value}"));
        }
        for (name, kind) in &o.search_attributes {
            command
                .arg("--search-attribute")
                .arg(format!("{name}={kind}"));
        }
        let output = match &o.log_file {
            Some(path) => Output::File(path.clone()),
            None => Output::Null,
        };
        // A group of its own: a terminal's Ctrl-C reaches only the parent, which stops the
        // server after its workers have reported their last results. Interrupted together, the
        // server went first and `mainloop dev` took half a minute to stop, its worker retrying
        // those reports against a server that was gone.
        command.process_group(0);
        // SIGTERM on our death lets the server close its SQLite file cleanly.
        let child = ChildProcess::spawn("temporal", &mut command, output, libc::SIGTERM)
            .map_err(StartError::Other)?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Waits until the frontend answers and the namespace exists.
    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + self.options.ready_timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().map_err(StartError::Other)?
            {
                let error = anyhow::anyhow!(
                    "the Temporal dev server exited during start-up ({status}); is port {} free?\n{}",
                    self.port,
                    child.log_tail(20)
                );
                self.child = None;
                return Err(StartError::Exited(error));
            }
            let probe = Command::new(&self.options.binary)
                .args(["operator", "namespace", "describe", "-n"])
                .arg(&self.options.namespace)
                .arg("--address")
                .arg(self.address())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .context("running the temporal CLI")
                .map_err(StartError::Other)?;
            if probe.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(anyhow::anyhow!(
                    "the Temporal dev server on {} was not ready within {:?}",
                    self.address(),
                    self.options.ready_timeout
                )));
            }
            // Readiness is only observable by asking; ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `host:port` of the gRPC frontend, as `TEMPORAL_ADDRESS` takes it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.options.ip, self.port)
    }

    /// The frontend as a URL, for the Rust client.
    pub fn url(&self) -> String {
        format!("http://{}", self.address())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ui_url(&self) -> Option<String> {
        self.options
            .ui_port
            .map(|port| format!("http://{}:{port}", self.options.ip))
    }

    pub fn namespace(&self) -> &str {
        &self.options.namespace
    }

    pub fn binary(&self) -> &Path {
        &self.options.binary
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's process id while it runs (for measuring its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildProcess::pid)
    }

    /// Stops the server gracefully.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.terminate(Duration::from_secs(20)).await?;
        }
        Ok(())
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and database file.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await
    }

    /// Starts a stopped server again.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the Temporal dev server is already running");
        }
        self.spawn().await
    }

    /// Runs the `temporal` CLI against this server and returns its stdout.
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(&self.options.binary)
            .args(args)
            .arg("--address")
            .arg(self.address())
            .arg("--namespace")
            .arg(&self.options.namespace)
            .output()
            .await
            .context("running the temporal CLI")?;
        if !output.status.success() {
            bail!(
                "temporal {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.child
            .as_ref()
            .map(|c| c.log_tail(lines))
            .unwrap_or_default()
    }
}

/// Finds the `temporal` CLI: `$TEMPORAL_BIN`, then `PATH`, then Go's install directory
/// (where `scripts/setup` puts it).
pub fn find_temporal() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TEMPORAL_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("TEMPORAL_BIN={} is not a file", path.display());
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("temporal");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut go_bins = Vec::new();
    if let Some(gobin) = std::env::var_os("GOBIN") {
        go_bins.push(PathBuf::from(gobin));
    }
    if let Some(gopath) = std::env::var_os("GOPATH") {
        go_bins.extend(std::env::split_paths(&gopath).map(|p| p.join("bin")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        go_bins.push(PathBuf::from(home).join("go").join("bin"));
    }
    for dir in go_bins {
        let candidate = dir.join("temporal");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("the Temporal CLI was not found: run scripts/setup, or set TEMPORAL_BIN")
}
