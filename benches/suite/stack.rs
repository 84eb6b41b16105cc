//! The production shape for the task benchmarks: the real `mainloop serve` and
//! `mainloop worker` binaries as separate processes, on PostgreSQL, against the suite's
//! Temporal dev server, with testkit's fake GitHub (real git repositories behind it, CI that
//! passes at once, webhooks delivered to the API) and jobs run by the worker's real local runner on the instant agent.
//! Humans answer at once: the benchmark reacts to the event stream.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_store::{NewProposal, Store};
use mainloop_testkit::anthropic::{FakeAnthropic, Reply};
use mainloop_testkit::github::{CiScript, FakeGitHub};
use mainloop_testkit::ports::free_port;
use mainloop_testkit::postgres::PgServer;
use mainloop_testkit::process::{ChildProcess, Output};
use mainloop_testkit::temporal::DevServer;
use serde_json::{Value, json};
use tokio::process::Command;

pub const REPO: &str = "acme/web";
pub const WAIT: Duration = Duration::from_secs(120);
const WEBHOOK_SECRET: &str = "bench-webhook-secret";

pub struct TaskStack {
    pub user: String,
    pub store: Store,
    pub github: FakeGitHub,
    pub api: ChildProcess,
    pub worker: ChildProcess,
    pub base: String,
    pub http: reqwest::Client,
    _anthropic: FakeAnthropic,
    _pg: PgServer,
    _dir: tempfile::TempDir,
}

impl TaskStack {
    /// Starts PostgreSQL, the fakes, the worker and the API; `name` keeps the user, the task
    /// queue and so the workflow ids of one benchmark apart from another's on the shared
    /// Temporal server. `env` overrides the children's settings.
    pub async fn start(temporal: &DevServer, name: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mainloop-bench-")
            .tempdir()?;
        let pg = PgServer::start().await?;
        let database_url = pg.create_database("mainloop").await?;
        let store = Store::connect(&database_url).await?;
        store.migrate().await?;
        let github = FakeGitHub::start().await?;
        github.create_repo("acme", "web").await?;
        github.set_ci(REPO, CiScript::AlwaysPass)?;
        let anthropic = FakeAnthropic::start().await?;
        anthropic.set_default(|_| Reply::text("ok"));
        let port = free_port()?;
        let agent = std::env::current_exe()?;
        let jobs = dir.path().join("jobs");
        let user = format!(
            "bench-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let command = |role: &str| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_mainloop"));
            command
                .arg(role)
                .env("DATABASE_URL", &database_url)
                .env("TEMPORAL_ADDRESS", temporal.address())
                .env("TEMPORAL_NAMESPACE", temporal.namespace())
                .env("ANTHROPIC_BASE_URL", anthropic.base_url())
                .env("ANTHROPIC_API_KEY", anthropic.api_key())
                .env("GITHUB_API_URL", github.base_url())
                .env("GITHUB_TOKEN", github.token())
                .env("MAINLOOP_LISTEN", format!("127.0.0.1:{port}"))
                .env("MAINLOOP_USER", &user)
                .env("MAINLOOP_RATE_LIMIT_PER_MINUTE", "0")
                .env("MAINLOOP_TASK_QUEUE", format!("bench-{name}"))
                .env("MAINLOOP_AGENT_BIN", &agent)
                .env("MAINLOOP_JOBS_DIR", &jobs)
                .env("MAINLOOP_WORKER_MODEL", "claude-sonnet-4-5")
                // GitHub tells tasks what happened through its webhooks, as in production
                // (docs/operations.md); the CI and review polls keep their defaults (15 s,
                // 30 s), a fallback a run should never wait for.
                .env("GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET)
                // Answers come through the app, not GitHub comments: no comment polling.
                .env("MAINLOOP_HUMAN_POLL", "1h")
                .env("MAINLOOP_HUMAN_POLL_MAX", "1h")
                .env("MAINLOOP_OUTBOX_MAX_BACKOFF", "300ms")
                .env("MAINLOOP_LOG_FORMAT", "text")
                .env("NO_COLOR", "1")
                .env("RUST_LOG", "warn")
                .env_remove("TEMPORAL_PROFILE")
                .env_remove("TEMPORAL_CONFIG_FILE")
                .env_remove("TEMPORAL_API_KEY")
                .env_remove("TEMPORAL_TLS");
            for (key, value) in env {
                command.env(key, value);
            }
            command
        };
        let worker = ChildProcess::spawn(
            "worker",
            &mut command("worker"),
            Output::File(dir.path().join("worker.log")),
            libc::SIGKILL,
        )?;
        let mut api = ChildProcess::spawn(
            "api",
            &mut command("serve"),
            Output::File(dir.path().join("api.log")),
            libc::SIGKILL,
        )?;
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = api.try_wait()? {
                bail!("the API exited ({status}):\n{}", api.log_tail(30));
            }
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the API did not come up:\n{}", api.log_tail(30));
            }
            // The port opening is the event; it can only be observed by trying.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        github.deliver_webhooks_to(&format!("{base}/api/github/webhook"), WEBHOOK_SECRET);
        Ok(TaskStack {
            user,
            store,
            github,
            api,
            worker,
            base,
            http,
            _anthropic: anthropic,
            _pg: pg,
            _dir: dir,
        })
    }

    pub fn worker_pid(&self) -> Result<u32> {
        self.worker.pid().context("the worker has exited")
    }

    pub fn api_pid(&self) -> Result<u32> {
        self.api.pid().context("the API has exited")
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// A proposal as the chat's model makes it (stored with the note that carries it, which
    /// is what a chat turn writes), so tasks start without a chat turn each.
    pub async fn proposal(&self, skip_planning: bool) -> Result<String> {
        let key = uuid::Uuid::now_v7().to_string();
        let note = self
            .store
            .add_note(&self.user, &key, "proposing a task")
            .await?;
        let proposal = self
            .store
            .create_proposal(
                &self.user,
                &NewProposal {
                    // Random, as the chat's are (a hash of the reply): branch names start
                    // with a task id's first characters when there is no issue.
                    id: uuid::Uuid::new_v4().to_string(),
                    message_id: note.id,
                    title: "Add a greeting".into(),
                    description: "Add a greet() function to the library".into(),
                    repo: REPO.into(),
                    model: None,
                    skip_planning,
                },
            )
            .await?;
        Ok(proposal.id)
    }

    /// Confirms proposal `id` through the API; returns the task id.
    pub async fn confirm(&self, id: &str) -> Result<String> {
        let confirmed = self
            .post(&format!("/api/proposals/{id}/confirm"), json!({}))
            .await?;
        Ok(confirmed["task"]["id"]
            .as_str()
            .context("no task id")?
            .to_string())
    }

    /// Waits (on the store's change notifications) until `check` yields something.
    pub async fn wait_for<T, F, Fut>(&self, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let mut wake = self.store.subscribe_events();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(found) = check().await? {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, wake.recv())
                .await
                .is_err()
            {
                bail!("timed out; worker log:\n{}", self.worker.log_tail(30));
            }
        }
    }
}
