//! Wiring of the parts into running services: the store, the API with its outbox relay, and
//! the worker with its activities. `dev` composes the same pieces in one process.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_activities::anthropic::AnthropicClient;
use mainloop_activities::chat::{ActivityTiming, ChatSettings, ThreadConfig};
use mainloop_activities::chat_cli::{ClaudeCli, ClaudeCliSettings};
use mainloop_activities::governor::GovernorSettings;
use mainloop_activities::metrics::ActivityMetrics;
use mainloop_activities::{ChatActivities, ChatBackend};
use mainloop_api::cloudflare::{Access, CloudflareSettings};
use mainloop_api::metrics::ApiMetrics;
use mainloop_api::ratelimit::Clock;
use mainloop_api::{
    ApiSettings, AppConfig, AppState, AuthConfig, AuthMode, RateLimitSettings, RelaySettings,
    TemporalLink, WebAssets,
};
use mainloop_store::{Backend, Store, TaskBudget, redact_url};
use mainloop_workflows::worker::{self, Implementations, WorkerSettings};
use mainloop_workflows::{TemporalSettings, chat_task_queue, intake_task_queue};
use tokio_util::sync::CancellationToken;

use crate::config::{
    ApiArgs, AuthArg, ChatArgs, DEFAULT_ANTHROPIC_BASE_URL, GitHubArgs, QueueArgs, RunnerArg,
    ServeArgs, StoreArgs, TaskArgs, WorkerArgs, WorkerSettingsArgs,
};
use crate::metrics::{self, ApiProbe, Probes, Telemetry};
use mainloop_activities::github::{GitHub, GitHubSettings};
use mainloop_activities::jobs::JobRunner;
use mainloop_activities::jobs::JobSecrets;
use mainloop_activities::jobs::kubernetes::KubernetesRunner;
use mainloop_activities::jobs::local::{LocalRunner, LocalRunnerSettings};
use mainloop_activities::tasks::{TaskActivities, TaskConfig, TaskSettings};

/// Prints the lines that tell a user where things are, in one write.
///
/// A closed stdout (`mainloop dev | head -3`, or a supervisor that stopped reading) is no
/// reason to stop serving: the failure is logged, the same addresses are in the log, and the
/// process goes on. `println!` would panic there and take everything down.
pub fn announce(lines: &[String]) {
    use std::io::Write;
    if lines.is_empty() {
        return;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        tracing::warn!(%error, lines = ?lines, "could not print the addresses to stdout");
    }
}

pub async fn migrate(args: StoreArgs) -> Result<()> {
    let store = open_store(&args, true).await?;
    store.close().await;
    println!("migrations applied");
    Ok(())
}

/// `mainloop mcp`: the chat's MCP server on stdin and stdout, until its client closes stdin.
pub async fn mcp() -> Result<()> {
    mainloop_activities::mcp::serve(tokio::io::stdin(), tokio::io::stdout())
        .await
        .context("serving MCP on stdio")
}

/// Prints the OpenAPI document, which `make` turns into the web app's TypeScript types.
pub fn openapi() -> Result<()> {
    let document = mainloop_api::openapi::document_json().context("serialising OpenAPI")?;
    println!("{document}");
    Ok(())
}

pub async fn serve(args: ServeArgs, shutdown: CancellationToken) -> Result<()> {
    let mut settings = api_settings(&args.api, &args.queue)?;
    let metrics_listener = metrics::Listener::bind(args.metrics.metrics_listen).await?;
    let telemetry = Telemetry::new()?;
    let api_metrics =
        ApiMetrics::register(telemetry.registry()).context("registering the API's metrics")?;
    settings.metrics = Some(api_metrics.clone());
    let store = open_store(&args.store, false).await?;
    let mut temporal = TemporalSettings::from_env(&identity("serve"))?;
    temporal.connection.metrics_meter = Some(telemetry.client_meter()?);
    settings.app.temporal_namespace = temporal.namespace.clone();
    tracing::info!(address = %temporal.address(), namespace = %temporal.namespace, "Temporal");
    let link = TemporalLink::connect_in_background(temporal, shutdown.clone());
    let github = github_client(&args.github)?;
    let api = start_api(
        args.api.listen,
        settings,
        store.clone(),
        link,
        github,
        &shutdown,
    )
    .await?;
    let mut banner = vec![format!("mainloop  http://{}", api.address)];
    banner.extend(metrics_listener.banner_line());
    announce(&banner);
    // Scrapes and probes are answered until the API has finished its last request.
    let stop_metrics = CancellationToken::new();
    let probes = Probes {
        api: Some(ApiProbe {
            state: api.state.clone(),
            metrics: api_metrics,
        }),
        worker: None,
    };
    let exporter = metrics_listener.serve(&telemetry, probes, stop_metrics.clone());
    let result = api.server.await.context("the API task failed")?;
    stop_metrics.cancel();
    exporter.stopped().await;
    store.close().await;
    result
}

pub async fn worker(args: WorkerArgs, shutdown: CancellationToken) -> Result<()> {
    // Probes are answered from the start: the worker is alive (and not ready) while it waits
    // for the store and Temporal.
    let metrics_listener = metrics::Listener::bind(args.metrics.metrics_listen).await?;
    let telemetry = Telemetry::new()?;
    let polling = Arc::new(AtomicBool::new(false));
    let stop_metrics = CancellationToken::new();
    announce(&Vec::from_iter(metrics_listener.banner_line()));
    let probes = Probes {
        api: None,
        worker: Some(polling.clone()),
    };
    let exporter = metrics_listener.serve(&telemetry, probes, stop_metrics.clone());
    let result = run_worker_process(&args, &telemetry, polling, shutdown).await;
    stop_metrics.cancel();
    exporter.stopped().await;
    result
}

async fn run_worker_process(
    args: &WorkerArgs,
    telemetry: &Telemetry,
    polling: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<()> {
    let store = open_store(&args.store, false).await?;
    let mut temporal = TemporalSettings::from_env(&identity("worker"))?;
    temporal.connection.metrics_meter = Some(telemetry.client_meter()?);
    tracing::info!(address = %temporal.address(), namespace = %temporal.namespace, "Temporal");
    let Some(client) = temporal.connect_with_retry(&shutdown).await else {
        return Ok(());
    };
    if args.temporal.register_search_attributes
        && let Err(error) = worker::ensure_search_attributes(&client, &temporal.namespace).await
    {
        tracing::warn!(
            "could not register search attributes ({error:#}); register them with \
             `temporal operator search-attribute create` (see docs)"
        );
    }
    let parts = WorkerParts {
        queue: &args.queue,
        worker: &args.worker,
        chat: &args.chat,
        github: &args.github,
        tasks: &args.tasks,
        data_dir: data_dir(&args.store)?,
        job_env: Vec::new(),
        telemetry,
        polling,
    };
    run_worker(client, store.clone(), parts, shutdown).await?;
    store.close().await;
    Ok(())
}

/// Opens (and migrates) the store. Without `DATABASE_URL`, `embedded` picks SQLite in the
/// data directory; otherwise a URL is required.
pub async fn open_store(args: &StoreArgs, embedded: bool) -> Result<Store> {
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None if embedded => {
            let dir = data_dir(args)?;
            format!("sqlite://{}", dir.join("mainloop.db").display())
        }
        None => bail!(
            "set DATABASE_URL (postgres://…): separate API and worker processes share a \
             PostgreSQL database; for one process on one machine, run `mainloop dev`"
        ),
    };
    let store = Store::connect(&url)
        .await
        .with_context(|| format!("opening the database {}", redact_url(&url)))?;
    if !embedded && store.backend() == Backend::Sqlite {
        bail!(
            "serve and worker run as separate processes and need PostgreSQL in DATABASE_URL \
             (SQLite cannot tell one process about the other's writes); use `mainloop dev` for \
             SQLite"
        );
    }
    store.migrate().await.context("migrating the database")?;
    Ok(store)
}

pub fn data_dir(args: &StoreArgs) -> Result<PathBuf> {
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => dirs::data_dir()
            .context("no platform data directory; set MAINLOOP_DATA_DIR")?
            .join("mainloop"),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    Ok(dir)
}

/// The API's settings, refusing unsafe ones (e.g. no authentication off loopback).
pub fn api_settings(api: &ApiArgs, queue: &QueueArgs) -> Result<ApiSettings> {
    let auth = AuthConfig {
        mode: match api.auth {
            AuthArg::None => AuthMode::None,
            AuthArg::Token => AuthMode::Token {
                token: api
                    .auth_token
                    .clone()
                    .context("MAINLOOP_AUTH=token needs MAINLOOP_AUTH_TOKEN")?,
            },
            AuthArg::Tailscale => AuthMode::Tailscale {
                proxies: api.tailscale_proxy.clone(),
            },
            AuthArg::Cloudflare => {
                let settings = CloudflareSettings {
                    team_domain: api.cloudflare_team_domain.clone().context(
                        "MAINLOOP_AUTH=cloudflare needs MAINLOOP_CLOUDFLARE_TEAM_DOMAIN",
                    )?,
                    audience: api.cloudflare_aud.clone().unwrap_or_default(),
                    certs_url: api.cloudflare_certs_url.clone(),
                    refetch_interval: Duration::from_secs(10),
                };
                AuthMode::Cloudflare(Arc::new(
                    Access::new(&settings).map_err(anyhow::Error::msg)?,
                ))
            }
        },
        user: api.user.clone(),
        session_ttl: api.session_ttl,
    };
    auth.validate(api.listen).map_err(anyhow::Error::msg)?;
    Ok(ApiSettings {
        auth,
        body_limit: api.body_limit,
        request_timeout: api.request_timeout,
        header_timeout: api.header_timeout,
        body_timeout: api.body_timeout,
        webhook_secret: api
            .github_webhook_secret
            .as_deref()
            .filter(|secret| !secret.is_empty())
            .map(Arc::from),
        relay: RelaySettings {
            task_queue: queue.task_queue.clone(),
            batch: 100,
            lease: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(10),
            base_backoff: Duration::from_millis(200),
            max_backoff: api.outbox_max_backoff,
        },
        app: AppConfig {
            temporal_ui_url: api
                .temporal_ui_url
                .as_deref()
                .map(|url| url.trim_end_matches('/').to_string())
                .filter(|url| !url.is_empty()),
            // The caller knows the namespace once it has read Temporal's settings.
            temporal_namespace: String::new(),
        },
        web: WebAssets::Built,
        // The caller registers them in its registry.
        metrics: None,
        rate_limit: RateLimitSettings {
            per_minute: api.rate_limit_per_minute,
            burst: api.rate_limit_burst,
            clock: Clock::system(),
        },
    })
}

/// The API, started.
pub struct StartedApi {
    /// Ends once the API has shut down and its relay has stopped.
    pub server: tokio::task::JoinHandle<Result<()>>,
    pub address: std::net::SocketAddr,
    pub state: AppState,
}

/// Binds the API and starts it with its outbox relay.
pub async fn start_api(
    listen: std::net::SocketAddr,
    settings: ApiSettings,
    store: Store,
    temporal: TemporalLink,
    github: GitHub,
    shutdown: &CancellationToken,
) -> Result<StartedApi> {
    let state = AppState {
        feed: mainloop_api::EventFeed::start(store.clone(), shutdown.clone())
            .await
            .context("reading where the event log ends")?,
        store,
        auth: Arc::new(settings.auth.clone()),
        temporal,
        github,
        shutdown: shutdown.clone(),
        webhook_secret: settings.webhook_secret.clone(),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    let relay = mainloop_api::spawn_relay(&state, &settings);
    let serving = state.clone();
    let server = tokio::spawn(async move {
        let served = mainloop_api::serve(listener, serving, &settings).await;
        if let Err(error) = relay.await {
            tracing::warn!(%error, "the outbox relay ended abnormally");
        }
        served.context("serving HTTP")
    });
    Ok(StartedApi {
        server,
        address,
        state,
    })
}

/// What the worker is made of, from the command line.
pub struct WorkerParts<'a> {
    pub queue: &'a QueueArgs,
    pub worker: &'a WorkerSettingsArgs,
    pub chat: &'a ChatArgs,
    pub github: &'a GitHubArgs,
    pub tasks: &'a TaskArgs,
    pub data_dir: PathBuf,
    /// More environment for every job, after the configured one.
    pub job_env: Vec<(String, String)>,
    /// The registry the activities' and the SDK's metrics go to.
    pub telemetry: &'a Telemetry,
    /// Set while the SDK's worker runs: the worker's readiness.
    pub polling: Arc<AtomicBool>,
}

/// Runs the worker on the current task until `shutdown` (the SDK's worker cannot be spawned).
pub async fn run_worker(
    client: temporalio_client::Client,
    store: Store,
    parts: WorkerParts<'_>,
    shutdown: CancellationToken,
) -> Result<()> {
    let WorkerParts {
        queue,
        worker: worker_args,
        chat,
        ..
    } = parts;
    let backend = chat_backend(chat, parts.tasks, &parts.data_dir)?;
    match &backend {
        ChatBackend::NotConfigured => tracing::warn!(
            "neither ANTHROPIC_API_KEY nor CLAUDE_CODE_OAUTH_TOKEN is set: chat turns will \
             answer with an error"
        ),
        ChatBackend::Cli(cli) => tracing::info!(
            backend = backend.describe(),
            model = %chat.chat_model,
            claude = %cli.settings().bin.display(),
            "chat"
        ),
        ChatBackend::Api(_) => {
            tracing::info!(backend = backend.describe(), model = %chat.chat_model, "chat");
        }
    }
    let mut settings = chat_settings(chat);
    settings.thread.task_queue = Some(queue.task_queue.clone());
    settings.thread.chat_queue = Some(chat_task_queue(&queue.task_queue));
    settings.thread.intake_queue = Some(intake_task_queue(&queue.task_queue));
    // Where tasks settle once they leave the intake queue, and where their jobs go.
    let mut task_settings = task_settings(parts.tasks);
    task_settings.config.task_queue = Some(queue.task_queue.clone());
    if parts
        .github
        .github_token
        .as_deref()
        .is_none_or(|t| t.trim().is_empty())
    {
        tracing::warn!("GITHUB_TOKEN is not set: worker tasks will fail until it is");
    }
    let activity_metrics = ActivityMetrics::register(parts.telemetry.registry())
        .context("registering the activities' metrics")?;
    let governor = GovernorSettings {
        default_wait: chat.model_limit_wait,
        max_wait: chat.model_limit_max_wait,
    };
    worker::run(
        client,
        WorkerSettings {
            task_queue: queue.task_queue.clone(),
            max_jobs: parts.tasks.max_jobs,
            graceful_shutdown: worker_args.shutdown_grace,
            sticky_timeout: worker_args.sticky_timeout,
            workflow_cache: worker_args.workflow_cache,
            meter: Some(parts.telemetry.worker_meter()),
            polling: parts.polling.clone(),
        },
        Implementations {
            chat: ChatActivities::new(store.clone(), backend, settings)
                .with_governor(governor.clone())
                .with_metrics(activity_metrics.clone()),
            tasks: TaskActivities::new(
                store,
                github_client(parts.github)?,
                job_runner(&parts).await?,
                task_settings,
            )
            .with_governor(governor)
            .with_metrics(activity_metrics),
        },
        shutdown,
    )
    .await
}

/// What answers the chat: the Messages API when there is an API key; else, with a Claude
/// subscription token, the Claude Code CLI (with `mainloop mcp` for its tool); else nothing.
pub fn chat_backend(
    chat: &ChatArgs,
    tasks: &TaskArgs,
    data_dir: &std::path::Path,
) -> Result<ChatBackend> {
    let secret = |value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    if let Some(key) = secret(&chat.anthropic_api_key) {
        let client = AnthropicClient::new(
            &chat.anthropic_base_url,
            &key,
            Duration::from_secs(10),
            chat.model_idle_timeout,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(ChatBackend::Api(client));
    }
    let Some(token) = secret(&tasks.claude_code_oauth_token) else {
        return Ok(ChatBackend::NotConfigured);
    };
    let base_url = chat.anthropic_base_url.trim_end_matches('/');
    let cli = ClaudeCli::new(ClaudeCliSettings {
        bin: tasks
            .claude_bin
            .clone()
            .unwrap_or_else(|| PathBuf::from("claude")),
        oauth_token: token,
        // The CLI's own default unless another API is configured (the tests' fake).
        base_url: (base_url != DEFAULT_ANTHROPIC_BASE_URL).then(|| base_url.to_string()),
        mcp_server: std::env::current_exe()
            .context("finding the mainloop binary (the chat's MCP server)")?,
        dir: data_dir.join("chat-claude"),
        idle_timeout: chat.model_idle_timeout,
        path: std::env::var("PATH")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string()),
    })
    .with_context(|| format!("creating {}", data_dir.join("chat-claude").display()))?;
    Ok(ChatBackend::Cli(cli))
}

/// The chat activities' settings, and the main thread's, from the command line.
pub fn chat_settings(chat: &ChatArgs) -> ChatSettings {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let heartbeat_ms = millis(chat.turn_heartbeat_timeout);
    ChatSettings {
        model: chat.chat_model.clone(),
        summary_model: chat
            .summary_model
            .clone()
            .unwrap_or_else(|| chat.chat_model.clone()),
        max_tokens: chat.chat_max_tokens,
        history_limit: chat.history_limit,
        flush_interval: chat.stream_flush,
        flush_chars: 2048,
        max_model_calls: 4,
        // Well inside the timeout, so one late beat is not a missed deadline.
        heartbeat_interval: Duration::from_millis((heartbeat_ms / 3).max(100)),
        thread: ThreadConfig {
            turns_per_run: chat.turns_per_run,
            history_limit: Some(chat.thread_history_limit),
            compaction_threshold: chat.compaction_threshold,
            keep_recent: chat.keep_recent,
            turn: ActivityTiming {
                start_to_close_ms: millis(chat.turn_timeout),
                heartbeat_ms,
                retry_initial_ms: millis(chat.turn_retry_initial),
                retry_max_ms: millis(chat.turn_retry_max),
                retry_attempts: chat.turn_retry_attempts,
            },
            compaction: mainloop_workflows::defaults::compaction_timing(),
            // Known where the worker's queue is (see `run_worker`).
            task_queue: None,
            chat_queue: None,
            intake_queue: None,
        },
    }
}

/// How this process names itself to Temporal (shown in the Web UI).
pub fn identity(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("mainloop-{role}@{host}:{}", std::process::id())
}

pub fn github_client(args: &GitHubArgs) -> Result<GitHub> {
    let token = args
        .github_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    GitHub::new(GitHubSettings {
        api_url: args.github_api_url.clone(),
        token,
        concurrency: args.github_concurrency.get(),
    })
    .map_err(|e| anyhow::anyhow!("the GitHub client: {e}"))
}

/// The task activities' settings, and the task workflow's, from the command line.
pub fn task_settings(tasks: &TaskArgs) -> TaskSettings {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    TaskSettings {
        worker_model: tasks.worker_model.clone(),
        git_author_name: tasks.git_author_name.clone(),
        git_author_email: tasks.git_author_email.clone(),
        max_running_jobs: tasks.max_jobs.max(1),
        app_url: tasks.public_url.clone(),
        mention: "@mainloop".to_string(),
        failure_log_bytes: 60_000,
        config: TaskConfig {
            ci_poll_initial_ms: millis(tasks.ci_poll),
            ci_poll_max_ms: millis(tasks.ci_poll_max),
            ci_pending_timeout_ms: millis(tasks.ci_timeout),
            max_ci_fixes: tasks.max_ci_fixes,
            human_poll_initial_ms: millis(tasks.human_poll),
            human_poll_max_ms: millis(tasks.human_poll_max),
            review_poll_initial_ms: millis(tasks.review_poll),
            review_poll_max_ms: millis(tasks.review_poll_max),
            job_timeout_ms: millis(tasks.job_timeout),
            job_heartbeat_ms: millis(tasks.job_heartbeat_timeout),
            github_timeout_ms: millis(tasks.github_timeout),
            github_retry_initial_ms: millis(tasks.retry_initial),
            github_retry_max_ms: millis(tasks.retry_max),
            history_limit: tasks.task_history_limit,
            budget: TaskBudget {
                max_tokens: tasks
                    .task_max_tokens
                    .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                max_cost_usd: tasks.task_max_cost_usd.filter(|c| c.is_finite()),
                max_ci_attempts: (tasks.task_max_ci_attempts > 0)
                    .then_some(i64::from(tasks.task_max_ci_attempts)),
            },
            ..TaskConfig::default()
        },
    }
}

/// The job runner the configuration names, with the secrets jobs get.
async fn job_runner(parts: &WorkerParts<'_>) -> Result<Arc<dyn JobRunner>> {
    let tasks = parts.tasks;
    let secrets = JobSecrets {
        github_token: parts
            .github
            .github_token
            .clone()
            .filter(|t| !t.trim().is_empty()),
        anthropic_api_key: parts
            .chat
            .anthropic_api_key
            .clone()
            .filter(|k| !k.trim().is_empty()),
        claude_code_oauth_token: tasks
            .claude_code_oauth_token
            .clone()
            .filter(|t| !t.trim().is_empty()),
    };
    let mut env = vec![
        (
            "ANTHROPIC_BASE_URL".to_string(),
            parts.chat.anthropic_base_url.clone(),
        ),
        (
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_string(),
            "1".to_string(),
        ),
        ("DISABLE_AUTOUPDATER".to_string(), "1".to_string()),
    ];
    // Claude Code refuses to run unattended as root unless told it is sandboxed; an operator
    // who runs the worker as root in a container says so with IS_SANDBOX, and jobs inherit it.
    if let Ok(sandbox) = std::env::var("IS_SANDBOX") {
        env.push(("IS_SANDBOX".to_string(), sandbox));
    }
    env.extend(parts.job_env.iter().cloned());
    match tasks.job_runner {
        RunnerArg::Local => {
            let agent = match &tasks.agent_bin {
                Some(path) => path.clone(),
                None => {
                    let beside = std::env::current_exe()
                        .ok()
                        .map(|exe| exe.with_file_name("mainloop-agent"))
                        .filter(|p| p.exists());
                    beside.unwrap_or_else(|| PathBuf::from("mainloop-agent"))
                }
            };
            let jobs_dir = tasks
                .jobs_dir
                .clone()
                .unwrap_or_else(|| parts.data_dir.join("jobs"));
            std::fs::create_dir_all(&jobs_dir)
                .with_context(|| format!("creating {}", jobs_dir.display()))?;
            if let Some(claude) = &tasks.claude_bin {
                env.push((
                    "MAINLOOP_CLAUDE_BIN".to_string(),
                    claude.display().to_string(),
                ));
            }
            // Claude Code keeps its state under HOME: one per runner, not the operator's own.
            let home = jobs_dir.join("home");
            std::fs::create_dir_all(&home)?;
            env.push(("HOME".to_string(), home.display().to_string()));
            let mut settings = LocalRunnerSettings::new(agent, jobs_dir);
            settings.secrets = secrets;
            settings.extra_env = env;
            Ok(Arc::new(LocalRunner::new(settings)))
        }
        RunnerArg::Kubernetes => {
            let mut settings = tasks.kubernetes.settings(&tasks.agent_image)?;
            settings.secrets = secrets;
            settings.extra_env = env;
            let runner = KubernetesRunner::try_default(settings)
                .await
                .map_err(|e| anyhow::anyhow!("connecting to Kubernetes: {e}"))?;
            Ok(Arc::new(runner))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::{Cli, Command};

    fn worker_args(flags: &[&str]) -> Result<WorkerArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["mainloop", "worker"]
                .iter()
                .chain(flags)
                .copied()
                .collect::<Vec<_>>(),
        )?;
        let Command::Worker(args) = cli.command else {
            panic!("not the worker");
        };
        Ok(args)
    }

    fn backend(flags: &[&str], data_dir: &std::path::Path) -> ChatBackend {
        let args = worker_args(flags).unwrap_or_else(|e| panic!("{e}"));
        chat_backend(&args.chat, &args.tasks, data_dir).unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn the_api_key_wins_then_the_subscription_token_runs_the_cli() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let both = [
            "--anthropic-api-key",
            "sk-test",
            "--claude-code-oauth-token",
            "oat",
        ];
        assert!(matches!(backend(&both, dir.path()), ChatBackend::Api(_)));

        let token = [
            "--anthropic-api-key",
            " ",
            "--claude-code-oauth-token",
            "oat",
        ];
        let ChatBackend::Cli(cli) = backend(&token, dir.path()) else {
            panic!("not the CLI");
        };
        let settings = cli.settings();
        assert_eq!(settings.oauth_token, "oat");
        assert_eq!(settings.base_url, None, "the CLI keeps its own default");
        assert_eq!(settings.dir, dir.path().join("chat-claude"));
        assert!(dir.path().join("chat-claude/home").is_dir());
        // The token is never in a debug print.
        assert!(!format!("{cli:?}").contains("oat\""));

        let fake = [
            "--anthropic-api-key",
            "",
            "--claude-code-oauth-token",
            "oat",
            "--anthropic-base-url",
            "http://127.0.0.1:9/",
            "--claude-bin",
            "/opt/claude",
        ];
        let ChatBackend::Cli(cli) = backend(&fake, dir.path()) else {
            panic!("not the CLI");
        };
        assert_eq!(
            cli.settings().base_url.as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(cli.settings().bin, PathBuf::from("/opt/claude"));

        let neither = ["--anthropic-api-key", "", "--claude-code-oauth-token", ""];
        assert!(matches!(
            backend(&neither, dir.path()),
            ChatBackend::NotConfigured
        ));
    }

    fn serve_settings(flags: &[&str]) -> Result<ApiSettings> {
        let cli = Cli::try_parse_from(["mainloop", "serve"].iter().chain(flags).copied())?;
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        api_settings(&args.api, &args.queue)
    }

    #[test]
    fn proxy_auth_modes_are_wired_and_refuse_unsafe_settings() {
        let tailscale = ["--auth", "tailscale"];
        let settings = serve_settings(&tailscale).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(settings.auth.mode.name(), "tailscale");
        let public = ["--auth", "tailscale", "--listen", "0.0.0.0:8080"];
        let error = serve_settings(&public).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("MAINLOOP_TAILSCALE_PROXY")),
            "{error:?}"
        );
        let named = [&public[..], &["--tailscale-proxy", "100.64.0.1,fd7a::1"]].concat();
        assert!(serve_settings(&named).is_ok());

        let cloudflare = ["--auth", "cloudflare"];
        assert!(serve_settings(&cloudflare).is_err(), "needs a team domain");
        let no_aud = [
            &cloudflare[..],
            &["--cloudflare-team-domain", "t.cloudflareaccess.com"],
        ]
        .concat();
        assert!(serve_settings(&no_aud).is_err(), "needs an audience");
        let full = [&no_aud[..], &["--cloudflare-aud", "tag"]].concat();
        let settings = serve_settings(&full).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(settings.auth.mode.name(), "cloudflare");
        assert_eq!(settings.rate_limit.per_minute, 600);
    }
}
