//! The local job runner: `mainloop-agent` as a detached process group on this machine.
//!
//! It owns `{work_dir}/{task_id}/{job name}/`:
//! - `workspace/`: the agent's working directory ([`WORKSPACE_ENV`]), emptied before each start;
//! - `output.jsonl` and `stderr.log`: the agent's stdout (protocol lines) and stderr;
//! - `job.json`: the pid of the job's wrapper shell (the leader of the job's process group),
//!   that pid's start time from `/proc` (so a reused pid is never taken for the job), the
//!   wall-clock start (the timeout counts from it, across re-attaches) and the index of its
//!   first log line (a job started again continues the numbering of the attempt it replaces);
//! - `exit`: the exit status, written by the wrapper shell itself, so it is recorded even when
//!   no worker is alive to see the job end;
//! - `cancelled`: left by [`JobRunner::cancel`], so the job's error says why it ended;
//! - `lock`: serialises the start-or-attach decision between concurrent runs, also across
//!   processes.
//!
//! A job is its own process group and is not tied to the worker (no death signal): a worker
//! that crashes leaves it running, and the retried activity re-attaches by reading its output
//! from the first line. Dropping a [`JobRunner::run`] future only stops following; only
//! [`JobRunner::cancel`], [`JobRunner::cleanup`] or the timeout kill a job.
//!
//! The agent gets a clean environment: the few variables a program needs to run as the user
//! (`PATH`, `HOME`, locale, proxies, CA bundles), the spec, the workspace, the job's secrets and
//! the configured extra variables, never the worker's own (its database URL, its API keys).

use std::fs::{self, File};
use std::io::{ErrorKind, Read as _, Seek as _, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use mainloop_agent::protocol::{AgentResult, SPEC_ENV};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    JobError, JobLine, JobRequest, JobRunner, JobSecrets, OutputParser, Parsed, WORKSPACE_ENV,
    check_job_name,
};

const WORKSPACE: &str = "workspace";
const OUTPUT: &str = "output.jsonl";
const STDERR: &str = "stderr.log";
const RECORD: &str = "job.json";
const EXIT: &str = "exit";
const CANCELLED: &str = "cancelled";
const LOCK: &str = "lock";

/// Runs the agent (`"$@"`) and records its exit status in the file named by `$1`. A shell
/// rather than a Rust parent process, so the status is written even after the worker is gone.
const WRAPPER: &str =
    r#"exit_file=$1; shift; "$@"; status=$?; echo "$status" > "$exit_file"; exit "$status""#;

/// What the agent inherits from the worker's environment.
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// How much of `stderr.log` a failed job's error quotes.
const STDERR_TAIL_LINES: usize = 20;
const STDERR_TAIL_BYTES: u64 = 4096;
/// How long `cancel` waits for the process group to be gone after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Configuration of a [`LocalRunner`].
#[derive(Debug, Clone)]
pub struct LocalRunnerSettings {
    /// The `mainloop-agent` binary.
    pub agent_bin: PathBuf,
    /// Arguments for `agent_bin` (none for `mainloop-agent`; tests run `/bin/sh -c …`).
    pub agent_args: Vec<String>,
    /// Jobs live in `{work_dir}/{task_id}/{job name}/`.
    pub work_dir: PathBuf,
    pub secrets: JobSecrets,
    /// Set last, so they override inherited variables (e.g. `ANTHROPIC_BASE_URL`, `HOME` for
    /// the Claude Code CLI, `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC`).
    pub extra_env: Vec<(String, String)>,
    /// How often a followed job's output file is checked for new lines.
    pub poll_interval: Duration,
    /// Between SIGTERM and SIGKILL when a job is cancelled or times out.
    pub kill_grace: Duration,
}

impl LocalRunnerSettings {
    /// Settings with no secrets, no extra environment, a 20 ms poll and a 10 s kill grace.
    pub fn new(agent_bin: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            agent_bin: agent_bin.into(),
            agent_args: Vec::new(),
            work_dir: work_dir.into(),
            secrets: JobSecrets::default(),
            extra_env: Vec::new(),
            poll_interval: Duration::from_millis(20),
            kill_grace: Duration::from_secs(10),
        }
    }
}

/// Runs jobs as local processes; see the module documentation.
#[derive(Debug, Clone)]
pub struct LocalRunner {
    settings: Arc<LocalRunnerSettings>,
}

/// `job.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    pid: u32,
    /// Field 22 of `/proc/{pid}/stat`; `None` if the process was gone before it was read.
    start_time: Option<u64>,
    /// Milliseconds since the Unix epoch.
    started_at_ms: u64,
    /// The index of the job's first log line: after the lines of the attempt it replaced.
    #[serde(default)]
    first_index: u64,
}

impl JobRecord {
    /// Whether the job's wrapper process still runs (a zombie has ended).
    fn alive(&self) -> bool {
        let Some(expected) = self.start_time else {
            return false;
        };
        match proc_stat(self.pid) {
            Some((state, start_time)) => start_time == expected && !matches!(state, 'Z' | 'X'),
            None => false,
        }
    }

    /// When the job's timeout runs out, counted from its start.
    fn deadline(&self, timeout: Duration) -> Instant {
        let started = UNIX_EPOCH + Duration::from_millis(self.started_at_ms);
        let elapsed = SystemTime::now()
            .duration_since(started)
            .unwrap_or(Duration::ZERO);
        Instant::now() + timeout.saturating_sub(elapsed)
    }
}

impl LocalRunner {
    pub fn new(settings: LocalRunnerSettings) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }

    pub fn settings(&self) -> &LocalRunnerSettings {
        &self.settings
    }

    /// `{work_dir}/{task_id}/{name}`, where the job's files live.
    ///
    /// # Errors
    /// If the task id or name is not a safe file name.
    pub fn job_dir(&self, task_id: &str, name: &str) -> Result<PathBuf, JobError> {
        check_job_name(name)?;
        Ok(self.task_dir(task_id)?.join(name))
    }

    fn task_dir(&self, task_id: &str) -> Result<PathBuf, JobError> {
        let safe = !task_id.is_empty()
            && task_id.len() <= 128
            && !task_id.starts_with('.')
            && task_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if safe {
            Ok(self.settings.work_dir.join(task_id))
        } else {
            Err(JobError::Permanent(format!(
                "task id {task_id:?} is not a safe directory name"
            )))
        }
    }

    /// Follows `output.jsonl` from its first line until the result, the job's end or its
    /// deadline.
    async fn follow(
        &self,
        dir: &Path,
        record: &JobRecord,
        timeout: Duration,
        lines: &mpsc::UnboundedSender<JobLine>,
    ) -> Result<AgentResult, JobError> {
        let path = dir.join(OUTPUT);
        let mut output = tokio::fs::File::open(&path)
            .await
            .map_err(|error| io_error("opening the job's output", &path, &error))?;
        let deadline = record.deadline(timeout);
        let mut parser = OutputParser::starting_at(record.first_index);
        let mut pending = Vec::new();
        loop {
            // Seen before reading, so everything the job wrote before it ended gets read.
            let ended = !record.alive();
            let read = output
                .read_to_end(&mut pending)
                .await
                .map_err(|error| io_error("reading the job's output", &path, &error))?;
            if let Some(result) = take_lines(&mut pending, &mut parser, lines) {
                return Ok(result);
            }
            if ended {
                // The last line may lack its newline.
                let rest = String::from_utf8_lossy(&pending).into_owned();
                if let Some(result) = parser.line(&rest, lines) {
                    return Ok(result);
                }
                return Err(ended_without_result(dir).await);
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(job = %dir.display(), ?timeout, "job timed out; killing it");
                kill_group(
                    record,
                    self.settings.kill_grace,
                    self.settings.poll_interval,
                )
                .await?;
                return Err(JobError::Retryable(format!(
                    "job timed out after {}",
                    humanize(timeout)
                )));
            }
            if read == 0 {
                tokio::time::sleep(self.settings.poll_interval.min(deadline - now)).await;
            }
        }
    }

    /// Kills the job in `dir` if it runs, leaving a `cancelled` marker.
    async fn stop(&self, dir: &Path) -> Result<(), JobError> {
        let Some(record) = read_record(dir)? else {
            return Ok(());
        };
        if !record.alive() {
            return Ok(());
        }
        let marker = dir.join(CANCELLED);
        if let Err(error) = tokio::fs::write(&marker, b"cancelled\n").await {
            // Only the error message of the job's follower is poorer for it.
            tracing::warn!(%error, path = %marker.display(), "cannot mark the job cancelled");
        }
        kill_group(
            &record,
            self.settings.kill_grace,
            self.settings.poll_interval,
        )
        .await
    }
}

#[async_trait]
impl JobRunner for LocalRunner {
    async fn run(
        &self,
        request: &JobRequest,
        lines: mpsc::UnboundedSender<JobLine>,
    ) -> Result<AgentResult, JobError> {
        let dir = self.job_dir(&request.task_id, &request.name)?;
        let spec = serde_json::to_string(&request.spec)
            .map_err(|error| JobError::Permanent(format!("cannot encode the job spec: {error}")))?;
        let settings = Arc::clone(&self.settings);
        let job_dir = dir.clone();
        // Blocking: a file lock, process spawning and small file writes. If this future is
        // dropped meanwhile, the decision still completes and the job is recorded.
        let record =
            tokio::task::spawn_blocking(move || start_or_attach(&settings, &job_dir, &spec))
                .await
                .map_err(|error| {
                    JobError::Retryable(format!("starting the job failed: {error}"))
                })??;
        self.follow(&dir, &record, request.timeout, &lines).await
    }

    async fn cancel(&self, task_id: &str, name: &str) -> Result<(), JobError> {
        let dir = self.job_dir(task_id, name)?;
        self.stop(&dir).await
    }

    async fn cleanup(&self, task_id: &str) -> Result<(), JobError> {
        let dir = self.task_dir(task_id)?;
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error("listing the task's jobs", &dir, &error)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|error| io_error("listing the task's jobs", &dir, &error))?
        {
            if entry.path().join(RECORD).exists() {
                self.stop(&entry.path()).await?;
            }
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error("removing the task's jobs", &dir, &error)),
        }
    }
}

/// Hands complete lines of `pending` to the parser, keeping an unfinished last line.
fn take_lines(
    pending: &mut Vec<u8>,
    parser: &mut OutputParser,
    lines: &mpsc::UnboundedSender<JobLine>,
) -> Option<AgentResult> {
    let mut consumed = 0;
    let mut result = None;
    while let Some(end) = pending[consumed..].iter().position(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(&pending[consumed..consumed + end]).into_owned();
        consumed += end + 1;
        if let Some(found) = parser.line(&line, lines) {
            result = Some(found);
            break;
        }
    }
    pending.drain(..consumed);
    result
}

/// Under the job's lock: attaches to a job that has a result or still runs, else starts it.
fn start_or_attach(
    settings: &LocalRunnerSettings,
    dir: &Path,
    spec: &str,
) -> Result<JobRecord, JobError> {
    fs::create_dir_all(dir).map_err(|error| io_error("creating the job directory", dir, &error))?;
    let lock_path = dir.join(LOCK);
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| io_error("opening the job's lock", &lock_path, &error))?;
    lock_file
        .lock()
        .map_err(|error| io_error("locking the job", &lock_path, &error))?;
    let mut first_index = 0;
    if let Some(record) = read_record(dir)? {
        let (has_result, next_index) = scan_output(dir, record.first_index);
        if has_result || record.alive() {
            tracing::debug!(job = %dir.display(), pid = record.pid, "attaching to the job");
            return Ok(record);
        }
        first_index = next_index;
    }
    start(settings, dir, spec, first_index)
    // The lock is released when `lock_file` is dropped, after job.json is written.
}

fn start(
    settings: &LocalRunnerSettings,
    dir: &Path,
    spec: &str,
    first_index: u64,
) -> Result<JobRecord, JobError> {
    // A bare name is looked up in PATH by the shell; a path must exist.
    if settings.agent_bin.components().count() > 1 && !settings.agent_bin.exists() {
        return Err(JobError::Permanent(format!(
            "the agent binary {} does not exist",
            settings.agent_bin.display()
        )));
    }
    for file in [RECORD, OUTPUT, STDERR, EXIT, CANCELLED] {
        remove_file(&dir.join(file))?;
    }
    let workspace = dir.join(WORKSPACE);
    match fs::remove_dir_all(&workspace) {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("emptying the workspace", &workspace, &error)),
    }
    fs::create_dir_all(&workspace)
        .map_err(|error| io_error("creating the workspace", &workspace, &error))?;
    let output_path = dir.join(OUTPUT);
    let stdout = File::create(&output_path)
        .map_err(|error| io_error("creating the job's output", &output_path, &error))?;
    let stderr_path = dir.join(STDERR);
    let stderr = File::create(&stderr_path)
        .map_err(|error| io_error("creating the job's stderr", &stderr_path, &error))?;

    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(WRAPPER)
        .arg("mainloop-job")
        .arg(dir.join(EXIT))
        .arg(&settings.agent_bin)
        .args(&settings.agent_args)
        .current_dir(&workspace)
        .env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.env(SPEC_ENV, spec).env(WORKSPACE_ENV, &workspace);
    for var in settings.secrets.vars() {
        command.env(var.env, var.value);
    }
    for (name, value) in &settings.extra_env {
        command.env(name, value);
    }
    // Its own process group: a signal to the worker's group (Ctrl-C on `mainloop dev`) does
    // not reach it, and cancel can signal the agent and everything it started at once.
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let started_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut child = command.spawn().map_err(|error| {
        JobError::Retryable(format!(
            "cannot start {}: {error}",
            settings.agent_bin.display()
        ))
    })?;
    let pid = child.id();
    // Read before the child can be reaped, so the pid is still ours.
    let record = JobRecord {
        pid,
        start_time: proc_stat(pid).map(|(_, start_time)| start_time),
        started_at_ms,
        first_index,
    };
    if let Err(error) = write_record(dir, &record) {
        // A job nobody can find again must not run on.
        if let Err(kill) = child.kill() {
            tracing::warn!(%kill, pid, "cannot kill a job whose record was not written");
        }
        return Err(error);
    }
    reap_later(child);
    tracing::info!(job = %dir.display(), pid, "job started");
    Ok(record)
}

/// Waits for the child on a thread of its own, so it does not linger as a zombie while this
/// worker lives. The job does not depend on it: if the worker dies, init reaps the job.
fn reap_later(mut child: std::process::Child) {
    let pid = child.id();
    let spawned = std::thread::Builder::new()
        .name(format!("job-reaper-{pid}"))
        .spawn(move || {
            if let Err(error) = child.wait() {
                tracing::warn!(%error, pid, "waiting for a job failed");
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, pid, "cannot start a thread to reap the job; it stays a zombie until the worker exits");
    }
}

fn read_record(dir: &Path) -> Result<Option<JobRecord>, JobError> {
    let path = dir.join(RECORD);
    match fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(error) => {
                // Torn by a crash mid-write (it is written by rename, so unlikely): the job is
                // treated as never started.
                tracing::warn!(%error, path = %path.display(), "unreadable job record");
                Ok(None)
            }
        },
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error("reading the job record", &path, &error)),
    }
}

fn write_record(dir: &Path, record: &JobRecord) -> Result<(), JobError> {
    let path = dir.join(RECORD);
    let temporary = dir.join(format!("{RECORD}.tmp"));
    let bytes = serde_json::to_vec(record)
        .map_err(|error| JobError::Retryable(format!("cannot encode the job record: {error}")))?;
    fs::write(&temporary, bytes)
        .map_err(|error| io_error("writing the job record", &temporary, &error))?;
    fs::rename(&temporary, &path).map_err(|error| io_error("writing the job record", &path, &error))
}

fn remove_file(path: &Path) -> Result<(), JobError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("removing", path, &error)),
    }
}

/// Whether the job's output holds its result line, and the index after its log lines.
fn scan_output(dir: &Path, first_index: u64) -> (bool, u64) {
    let mut parser = OutputParser::starting_at(first_index);
    let Ok(bytes) = fs::read(dir.join(OUTPUT)) else {
        return (false, first_index);
    };
    for line in String::from_utf8_lossy(&bytes).lines() {
        if let Parsed::Result(_) = parser.parse(line) {
            return (true, parser.next_index());
        }
    }
    (false, parser.next_index())
}

/// The error of a job that ended without a result line, with its exit status and the end of
/// its stderr.
async fn ended_without_result(dir: &Path) -> JobError {
    let exit = tokio::fs::read_to_string(dir.join(EXIT)).await.ok();
    let cancelled = tokio::fs::try_exists(dir.join(CANCELLED))
        .await
        .unwrap_or(false);
    let how = match (exit.as_deref().map(str::trim), cancelled) {
        (_, true) => "cancelled".to_owned(),
        (Some(code), false) if !code.is_empty() => format!("exit {code}"),
        _ => "killed before it could record an exit status".to_owned(),
    };
    let dir = dir.to_path_buf();
    let stderr = tokio::task::spawn_blocking(move || stderr_tail(&dir.join(STDERR)))
        .await
        .unwrap_or_default();
    let mut message = format!("job ended without a result: {how}");
    if !stderr.is_empty() {
        message.push_str(", last stderr lines:\n");
        message.push_str(&stderr);
    }
    JobError::Retryable(message)
}

fn stderr_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = length.saturating_sub(STDERR_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    // The first line may be cut by the byte limit; the lines limit usually drops it anyway.
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

/// SIGTERM to the job's process tree, SIGKILL after `grace`, then waits for its leader to go.
///
/// The process group alone is not enough: Claude Code starts each Bash command in a session
/// of its own, so a command it runs would outlive a group kill (and keep running, say, a
/// test suite after the task was cancelled). The tree is read from `/proc` before anything
/// is signalled, while every member still descends from the leader.
async fn kill_group(record: &JobRecord, grace: Duration, poll: Duration) -> Result<(), JobError> {
    let mut tree = descendants(record.pid);
    signal(record.pid, &tree, "TERM").await?;
    let deadline = Instant::now() + grace;
    while record.alive() && Instant::now() < deadline {
        tokio::time::sleep(poll).await;
    }
    // Also for members that outlived their leader or ignore SIGTERM. The leader was ours a
    // moment ago, so its pid cannot have been reused as another group's id yet; the others
    // are checked against their start time.
    for process in descendants(record.pid) {
        if !tree.contains(&process) {
            tree.push(process);
        }
    }
    tree.retain(|(pid, start_time)| proc_stat(*pid).is_some_and(|(_, t)| t == *start_time));
    signal(record.pid, &tree, "KILL").await?;
    let deadline = Instant::now() + KILL_WAIT;
    while record.alive() && Instant::now() < deadline {
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

/// Every process below `root` as (pid, start time), from the parent links in `/proc`.
fn descendants(root: u32) -> Vec<(u32, u64)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let processes: Vec<(u32, u32, u64)> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (parent, start_time) = parent_and_start(&stat)?;
            Some((pid, parent, start_time))
        })
        .collect();
    let mut found: Vec<(u32, u64)> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, _, start_time) in processes.iter().filter(|(_, p, _)| *p == parent) {
            if !found.iter().any(|(known, _)| known == pid) {
                found.push((*pid, *start_time));
                frontier.push(*pid);
            }
        }
    }
    found
}

/// Sends `signal` to process group `pgid` and to each of `processes`, with the shell's `kill`
/// (present wherever the wrapper shell is; no unsafe code or extra crate needed). Targets
/// already gone are fine.
async fn signal(pgid: u32, processes: &[(u32, u64)], signal: &str) -> Result<(), JobError> {
    let status = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"signal="$1"; shift; kill -s "$signal" -- "$@" 2>/dev/null"#)
        .arg("mainloop-kill")
        .arg(signal)
        .arg(format!("-{pgid}"))
        .args(processes.iter().map(|(pid, _)| pid.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|error| JobError::Retryable(format!("cannot run kill: {error}")))?;
    if !status.success() {
        tracing::debug!(
            pgid,
            signal,
            "some of the job's processes were already gone"
        );
    }
    Ok(())
}

/// The state and start time (fields 3 and 22) of `/proc/{pid}/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat_fields(&stat)?;
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

/// The parent pid and start time (fields 4 and 22) of a `/proc/{pid}/stat` text.
fn parent_and_start(stat: &str) -> Option<(u32, u64)> {
    let mut fields = stat_fields(stat)?;
    let parent = fields.nth(1)?.parse().ok()?;
    let start_time = fields.nth(17)?.parse().ok()?;
    Some((parent, start_time))
}

/// The fields of a `/proc/{pid}/stat` text from the third (the state) on.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    // The command name (field 2) may hold spaces and parentheses; fields after it may not.
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

fn io_error(what: &str, path: &Path, error: &std::io::Error) -> JobError {
    JobError::Retryable(format!("{what} ({}): {error}", path.display()))
}

fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_this_process() {
        let (state, start_time) = proc_stat(std::process::id()).expect("own stat");
        assert!(matches!(state, 'R' | 'S' | 'D'), "{state}");
        assert!(start_time > 0);
        assert_eq!(proc_stat(u32::MAX), None);
    }

    #[test]
    fn the_process_tree_is_read_from_proc() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("spawn");
        let pid = child.id();
        // The grandchild appears once the shell has forked it; only /proc can say when.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let tree = loop {
            let tree = descendants(pid);
            if !tree.is_empty() || std::time::Instant::now() > deadline {
                break tree;
            }
            std::thread::yield_now();
        };
        assert_eq!(tree.len(), 1, "{tree:?}");
        let (parent, start_time) =
            parent_and_start(&fs::read_to_string(format!("/proc/{}/stat", tree[0].0)).unwrap())
                .unwrap();
        assert_eq!(parent, pid);
        assert_eq!(start_time, tree[0].1);
        child.kill().unwrap();
        std::process::Command::new("kill")
            .args(["-9", &tree[0].0.to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn unsafe_task_ids_are_refused() {
        let runner = LocalRunner::new(LocalRunnerSettings::new("/bin/true", "/tmp/x"));
        assert!(runner.job_dir("0123-abcd", "task-0123-plan-1").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a b"] {
            assert!(runner.job_dir(bad, "job").is_err(), "{bad}");
        }
    }
}
