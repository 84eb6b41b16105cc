//! Command line and environment: every setting is a flag with an environment variable and a
//! default, documented here (and in the README's configuration table).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod kubernetes;

pub use kubernetes::{KubernetesArgs, PullPolicy};

#[derive(Debug, Parser)]
#[command(
    name = "mainloop",
    version,
    about = "Self-hosted orchestrator for AI coding agents, on Temporal"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(
        long,
        env = "MAINLOOP_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once at start-up: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process for a single machine: a Temporal dev server (child
    /// process), the worker and the API, with SQLite in the data directory.
    Dev(DevArgs),
    /// The HTTP API, against TEMPORAL_ADDRESS and DATABASE_URL.
    Serve(ServeArgs),
    /// The Temporal worker, against TEMPORAL_ADDRESS and DATABASE_URL.
    Worker(WorkerArgs),
    /// Apply database migrations and exit.
    Migrate(StoreArgs),
    /// The chat's MCP server on stdio (its `propose_task` tool), which the worker gives the
    /// Claude Code CLI when the chat runs on a Claude subscription. Not for running by hand.
    Mcp,
    /// Print the API's OpenAPI document (JSON) and exit; the web app's types come from it.
    Openapi,
    /// Exit 0 if the URL answers with a 2xx status in time, else 1: a container health check
    /// for images that have no curl (`mainloop probe http://127.0.0.1:8080/readyz`).
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL to GET.
    pub url: url::Url,
    /// How long the probe waits for the answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Where the Anthropic API is unless `ANTHROPIC_BASE_URL` says otherwise.
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub github: GitHubArgs,
    #[command(flatten)]
    pub tasks: TaskArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub worker: WorkerSettingsArgs,
    #[command(flatten)]
    pub chat: ChatArgs,
    /// gRPC port of the Temporal dev server.
    #[arg(long, env = "MAINLOOP_TEMPORAL_PORT", default_value_t = 7233)]
    pub temporal_port: u16,
    /// Port of the Temporal Web UI.
    #[arg(long, env = "MAINLOOP_TEMPORAL_UI_PORT", default_value_t = 8233)]
    pub temporal_ui_port: u16,
    /// The `temporal` CLI to run (default: found on PATH or in Go's bin directory).
    #[arg(long, env = "TEMPORAL_BIN")]
    pub temporal_bin: Option<PathBuf>,
    /// Run the demo: a scripted model and a fake GitHub with the repository `demo/hello`,
    /// started in this process, stand in for Anthropic and GitHub, so no account is needed.
    /// Credentials, the database URL and the data directory are ignored: the demo's state
    /// lives in a fresh temporary directory, removed at exit.
    #[arg(
        long,
        env = "MAINLOOP_DEMO",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub demo: bool,
    /// `--demo`: how long after a pull request is ready for review the demo merges it.
    #[arg(long, env = "MAINLOOP_DEMO_MERGE_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub demo_merge_after: Duration,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub github: GitHubArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub github: GitHubArgs,
    #[command(flatten)]
    pub tasks: TaskArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub worker: WorkerSettingsArgs,
    #[command(flatten)]
    pub chat: ChatArgs,
    #[command(flatten)]
    pub temporal: TemporalArgs,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Address of the metrics listener: Prometheus metrics at `/metrics`, and the probes
    /// `/healthz` and `/readyz`. Unset: no listener.
    #[arg(long, env = "MAINLOOP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Where mainloop keeps its state (SQLite database, Temporal dev database, logs).
    /// Default: the platform data directory (`~/.local/share/mainloop` on Linux).
    #[arg(long, env = "MAINLOOP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` or `sqlite://path`. Default: SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct TemporalArgs {
    /// Register mainloop's search attributes on the namespace at start-up (needs operator
    /// rights; turn off when a set-up job does it).
    #[arg(long, env = "MAINLOOP_REGISTER_SEARCH_ATTRIBUTES", default_value_t = true, action = clap::ArgAction::Set)]
    pub register_search_attributes: bool,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "MAINLOOP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// How callers authenticate: `none` (only on loopback), `token`, `tailscale` (behind
    /// `tailscale serve`) or `cloudflare` (behind Cloudflare Access).
    #[arg(long, env = "MAINLOOP_AUTH", value_enum, default_value = "none")]
    pub auth: AuthArg,
    /// The secret for `token` auth (at least 16 characters).
    #[arg(long, env = "MAINLOOP_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// The user id every authenticated request acts as (`none` and `token` auth).
    #[arg(long, env = "MAINLOOP_USER", default_value = "me")]
    pub user: String,
    /// Addresses `tailscale` auth believes identity headers from (comma-separated); default
    /// loopback only.
    #[arg(long, env = "MAINLOOP_TAILSCALE_PROXY", value_delimiter = ',')]
    pub tailscale_proxy: Vec<IpAddr>,
    /// `<team>.cloudflareaccess.com`: the issuer of the Access tokens `cloudflare` auth takes.
    #[arg(long, env = "MAINLOOP_CLOUDFLARE_TEAM_DOMAIN")]
    pub cloudflare_team_domain: Option<String>,
    /// The Access application's audience (AUD) tag.
    #[arg(long, env = "MAINLOOP_CLOUDFLARE_AUD")]
    pub cloudflare_aud: Option<String>,
    /// Where Access's signing keys are; default `https://<team domain>/cdn-cgi/access/certs`.
    #[arg(long, env = "MAINLOOP_CLOUDFLARE_CERTS_URL")]
    pub cloudflare_certs_url: Option<String>,
    /// Requests per minute each user (or, before logging in, each address) may make on
    /// average; 0 turns rate limits off.
    #[arg(long, env = "MAINLOOP_RATE_LIMIT_PER_MINUTE", default_value_t = 600)]
    pub rate_limit_per_minute: u32,
    /// Requests a user may make at once after being idle.
    #[arg(long, env = "MAINLOOP_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// Lifetime of a login session.
    #[arg(long, env = "MAINLOOP_SESSION_TTL", default_value = "30d", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAINLOOP_BODY_LIMIT", default_value_t = 256 * 1024)]
    pub body_limit: usize,
    /// Secret of the GitHub webhook (`POST /api/github/webhook`); unset: webhooks are off and
    /// tasks notice GitHub activity by polling alone.
    #[arg(long, env = "GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_webhook_secret: Option<String>,
    /// Longest a request may take (the event stream excepted).
    #[arg(long, env = "MAINLOOP_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's headers, or to start its next request
    /// on an idle connection; then the connection is closed (slow clients hold no socket).
    #[arg(long, env = "MAINLOOP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Longest a request's body may take to arrive; then 408 and the connection is closed.
    #[arg(long, env = "MAINLOOP_BODY_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Longest wait between retries of a signal Temporal did not take.
    #[arg(long, env = "MAINLOOP_OUTBOX_MAX_BACKOFF", default_value = "10s", value_parser = humantime::parse_duration)]
    pub outbox_max_backoff: Duration,
    /// Base URL of the Temporal Web UI, which the web app links tasks' workflows to
    /// (`mainloop dev` defaults to its dev server's UI).
    #[arg(long, env = "MAINLOOP_TEMPORAL_UI_URL")]
    pub temporal_ui_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Task queue of the tasks' workflows and activities; main threads run on `<queue>-chat`,
    /// jobs on `<queue>-jobs`.
    #[arg(long, env = "MAINLOOP_TASK_QUEUE", default_value = mainloop_workflows::DEFAULT_TASK_QUEUE)]
    pub task_queue: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuthArg {
    None,
    Token,
    Tailscale,
    Cloudflare,
}

#[derive(Debug, Args)]
pub struct WorkerSettingsArgs {
    /// Time running activities get to finish on shutdown.
    #[arg(long, env = "MAINLOOP_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How long a workflow waits for the worker that has it cached before any worker may take
    /// it (after a worker dies, its workflows resume after this).
    #[arg(long, env = "MAINLOOP_STICKY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub sticky_timeout: Duration,
    /// Most workflows kept in memory between their steps, per workflow queue (the tasks', the
    /// chat's, the intake's): about 90 KiB each. Beyond it the least recently used is evicted,
    /// and replayed from its history the next time it has work (a few ms for a task).
    #[arg(long, env = "MAINLOOP_WORKFLOW_CACHE", default_value_t = 1000)]
    pub workflow_cache: usize,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Anthropic API key for the main thread. Without one, a Claude subscription token
    /// (CLAUDE_CODE_OAUTH_TOKEN) runs the chat through the Claude Code CLI; without either,
    /// chat turns answer with an error that says so.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_api_key: Option<String>,
    /// Base URL of the Anthropic API.
    #[arg(long, env = "ANTHROPIC_BASE_URL", default_value = DEFAULT_ANTHROPIC_BASE_URL)]
    pub anthropic_base_url: String,
    /// Model of the main thread.
    #[arg(long, env = "MAINLOOP_CHAT_MODEL", default_value = "claude-haiku-4-5")]
    pub chat_model: String,
    /// Model that summarises old messages (default: the chat model).
    #[arg(long, env = "MAINLOOP_SUMMARY_MODEL")]
    pub summary_model: Option<String>,
    /// Most tokens in one reply.
    #[arg(long, env = "MAINLOOP_CHAT_MAX_TOKENS", default_value_t = 4096)]
    pub chat_max_tokens: u32,
    /// Most messages sent verbatim with a turn (older ones reach the model as the summary).
    #[arg(long, env = "MAINLOOP_HISTORY_LIMIT", default_value_t = 40)]
    pub history_limit: i64,
    /// Streamed text is written out at least this often.
    #[arg(long, env = "MAINLOOP_STREAM_FLUSH", default_value = "40ms", value_parser = humantime::parse_duration)]
    pub stream_flush: Duration,
    /// Longest silence tolerated from the model while it streams.
    #[arg(long, env = "MAINLOOP_MODEL_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub model_idle_timeout: Duration,
    /// How long every worker stops calling the model after a 429 that names no retry-after.
    #[arg(long, env = "MAINLOOP_MODEL_LIMIT_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub model_limit_wait: Duration,
    /// Longest wait after a 429: a longer retry-after is cut to this.
    #[arg(long, env = "MAINLOOP_MODEL_LIMIT_MAX_WAIT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub model_limit_max_wait: Duration,
    /// Turns per main-thread workflow run before it continues as new.
    #[arg(long, env = "MAINLOOP_TURNS_PER_RUN", default_value_t = 100)]
    pub turns_per_run: u32,
    /// History events after which a main-thread run continues as new, whatever its turns: task
    /// starts and task news add history without turns, and a worker that restarts replays the
    /// whole run before the thread answers again.
    #[arg(long, env = "MAINLOOP_THREAD_HISTORY_LIMIT", default_value_t = 1000)]
    pub thread_history_limit: u32,
    /// Compact the thread when more messages than this are not yet summarised.
    #[arg(long, env = "MAINLOOP_COMPACTION_THRESHOLD", default_value_t = 40)]
    pub compaction_threshold: i64,
    /// Messages a compaction leaves verbatim.
    #[arg(long, env = "MAINLOOP_KEEP_RECENT", default_value_t = 20)]
    pub keep_recent: u32,
    /// Longest one attempt of a chat turn may take.
    #[arg(long, env = "MAINLOOP_TURN_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub turn_timeout: Duration,
    /// A turn whose worker stops heartbeating for this long is retried elsewhere.
    #[arg(long, env = "MAINLOOP_TURN_HEARTBEAT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub turn_heartbeat_timeout: Duration,
    /// First retry delay of a failed turn (doubles per attempt).
    #[arg(long, env = "MAINLOOP_TURN_RETRY_INITIAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub turn_retry_initial: Duration,
    /// Longest retry delay of a failed turn.
    #[arg(long, env = "MAINLOOP_TURN_RETRY_MAX", default_value = "60s", value_parser = humantime::parse_duration)]
    pub turn_retry_max: Duration,
    /// Attempts of a turn before it ends in a visible error.
    #[arg(long, env = "MAINLOOP_TURN_RETRY_ATTEMPTS", default_value_t = 8)]
    pub turn_retry_attempts: u32,
}

#[derive(Debug, Args)]
pub struct GitHubArgs {
    /// GitHub's REST API (GitHub Enterprise: `https://HOST/api/v3`).
    #[arg(long, env = "GITHUB_API_URL", default_value = "https://api.github.com")]
    pub github_api_url: url::Url,
    /// GitHub token: issues, pull requests, checks, and the agents' git pushes.
    #[arg(long, env = "GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<String>,
    /// Most GitHub API requests one process sends at once (GitHub's secondary rate limits
    /// punish concurrency, and each one in flight holds a connection).
    #[arg(long, env = "MAINLOOP_GITHUB_CONCURRENCY", default_value = "8")]
    pub github_concurrency: std::num::NonZeroUsize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RunnerArg {
    /// A process per job in a fresh workspace under the data directory.
    Local,
    /// A Kubernetes Job per job, in a namespace per task.
    Kubernetes,
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Model of the worker agents (a task may name another).
    #[arg(long, env = "MAINLOOP_WORKER_MODEL", default_value = "claude-opus-4-1")]
    pub worker_model: String,
    /// Where jobs run.
    #[arg(long, env = "MAINLOOP_JOB_RUNNER", value_enum, default_value = "local")]
    pub job_runner: RunnerArg,
    /// Most jobs running at once in this worker (tasks waiting for a person hold none; jobs
    /// waiting for a turn wait in the job queue).
    #[arg(long, env = "MAINLOOP_MAX_JOBS", default_value_t = 3)]
    pub max_jobs: usize,
    /// The `mainloop-agent` binary of local jobs (default: next to this binary, else PATH).
    #[arg(long, env = "MAINLOOP_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
    /// The Claude Code CLI local jobs run, and the chat on a Claude subscription (default:
    /// `claude` on PATH).
    #[arg(long, env = "MAINLOOP_CLAUDE_BIN")]
    pub claude_bin: Option<PathBuf>,
    /// Workspaces of local jobs (default: `jobs` in the data directory).
    #[arg(long, env = "MAINLOOP_JOBS_DIR")]
    pub jobs_dir: Option<PathBuf>,
    /// Image of Kubernetes jobs. The default is the agent of this very release, never
    /// `latest`, so a deployment runs the agent it was tested with.
    #[arg(
        long,
        env = "MAINLOOP_AGENT_IMAGE",
        default_value = concat!("ghcr.io/mainloop-dev/mainloop-agent:", env!("CARGO_PKG_VERSION"))
    )]
    pub agent_image: String,
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    /// Claude subscription token for the agents, and for the chat (through the Claude Code
    /// CLI); used when ANTHROPIC_API_KEY is not set.
    #[arg(long, env = "CLAUDE_CODE_OAUTH_TOKEN", hide_env_values = true)]
    pub claude_code_oauth_token: Option<String>,
    /// Author name of the agents' commits.
    #[arg(long, env = "MAINLOOP_GIT_AUTHOR_NAME", default_value = "mainloop")]
    pub git_author_name: String,
    /// Author email of the agents' commits.
    #[arg(
        long,
        env = "MAINLOOP_GIT_AUTHOR_EMAIL",
        default_value = "mainloop@users.noreply.github.com"
    )]
    pub git_author_email: String,
    /// The app's public URL, linked from GitHub comments.
    #[arg(long, env = "MAINLOOP_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Fix jobs per CI phase before a task without a CI-attempts budget fails (a task with
    /// one pauses at its budget instead).
    #[arg(long, env = "MAINLOOP_MAX_CI_FIXES", default_value_t = 5)]
    pub max_ci_fixes: u32,
    /// Budget: model tokens (input, output and cache) a task may spend before it pauses and
    /// asks in the inbox. Unset: no limit. A task may name its own when confirmed.
    #[arg(long, env = "MAINLOOP_TASK_MAX_TOKENS")]
    pub task_max_tokens: Option<u64>,
    /// Budget: US dollars a task may spend before it pauses and asks. Unset: no limit.
    #[arg(long, env = "MAINLOOP_TASK_MAX_COST_USD")]
    pub task_max_cost_usd: Option<f64>,
    /// Budget: CI fix jobs over a whole task before it pauses and asks; 0: no limit (then
    /// MAINLOOP_MAX_CI_FIXES fails a hopeless CI phase).
    #[arg(long, env = "MAINLOOP_TASK_MAX_CI_ATTEMPTS", default_value_t = 5)]
    pub task_max_ci_attempts: u32,
    /// First wait before reading CI again (doubles up to MAINLOOP_CI_POLL_MAX).
    #[arg(long, env = "MAINLOOP_CI_POLL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub ci_poll: Duration,
    /// Longest wait between two reads of CI.
    #[arg(long, env = "MAINLOOP_CI_POLL_MAX", default_value = "2m", value_parser = humantime::parse_duration)]
    pub ci_poll_max: Duration,
    /// Longest CI may stay pending before the task fails (retryable).
    #[arg(long, env = "MAINLOOP_CI_TIMEOUT", default_value = "2h", value_parser = humantime::parse_duration)]
    pub ci_timeout: Duration,
    /// First wait before reading GitHub for replies to questions and plans (grows ×1.5).
    #[arg(long, env = "MAINLOOP_HUMAN_POLL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub human_poll: Duration,
    /// Longest wait between two reads of GitHub for replies.
    #[arg(long, env = "MAINLOOP_HUMAN_POLL_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub human_poll_max: Duration,
    /// First wait before reading a PR under review (grows ×1.5).
    #[arg(long, env = "MAINLOOP_REVIEW_POLL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub review_poll: Duration,
    /// Longest wait between two reads of a PR under review.
    #[arg(long, env = "MAINLOOP_REVIEW_POLL_MAX", default_value = "10m", value_parser = humantime::parse_duration)]
    pub review_poll_max: Duration,
    /// Longest one job may run.
    #[arg(long, env = "MAINLOOP_JOB_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub job_timeout: Duration,
    /// A job whose worker stops heartbeating for this long is re-attached by another.
    #[arg(long, env = "MAINLOOP_JOB_HEARTBEAT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub job_heartbeat_timeout: Duration,
    /// Longest one GitHub step (a few API calls) may take before Temporal gives it to another
    /// worker: how long a task stalls when its worker dies in the middle of one.
    #[arg(long, env = "MAINLOOP_GITHUB_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub github_timeout: Duration,
    /// First retry delay of a failed GitHub call or job start (doubles per attempt).
    #[arg(long, env = "MAINLOOP_RETRY_INITIAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_initial: Duration,
    /// Longest retry delay of a failed GitHub call or job start.
    #[arg(long, env = "MAINLOOP_RETRY_MAX", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,
    /// History events after which a task continues as new (as soon as it is between steps).
    #[arg(long, env = "MAINLOOP_TASK_HISTORY_LIMIT", default_value_t = 8_000)]
    pub task_history_limit: u32,
}
