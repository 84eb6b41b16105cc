//! A whole mainloop for a test: a Temporal dev server (with its state on disk, so it can be
//! stopped and restarted), PostgreSQL, the fake Anthropic API, and the real `mainloop` binary
//! running as separate `serve` and `worker` processes that a test can kill and restart.
//! Durations are configured small so retries and timeouts happen in test time.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_store::{Message, MessageKind, Role, Store};
use mainloop_testkit::anthropic::FakeAnthropic;
use mainloop_testkit::ports::free_port;
use mainloop_testkit::postgres::PgServer;
use mainloop_testkit::process::{ChildProcess, Output};
use mainloop_testkit::sse::{SseClient, SseEvent};
use mainloop_testkit::temporal::{DevServer, DevServerOptions};
use serde_json::Value;
use tokio::process::Command;

pub const USER: &str = "me";
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub temporal: DevServer,
    pub _pg: PgServer,
    pub database_url: String,
    pub anthropic: FakeAnthropic,
    pub api_port: u16,
    pub store: Store,
    api: Option<ChildProcess>,
    worker: Option<ChildProcess>,
    extra_env: Vec<(String, String)>,
    /// Settings of one role (`worker` or `serve`) only, as (role, variable, value).
    role_env: Vec<(String, String, String)>,
    http: reqwest::Client,
}

impl Stack {
    pub async fn start() -> Result<Stack> {
        Stack::start_with(&[]).await
    }

    /// Starts everything; `env` overrides the children's settings.
    pub async fn start_with(env: &[(&str, &str)]) -> Result<Stack> {
        Stack::start_with_roles(env, &[]).await
    }

    /// Starts everything; `env` overrides the children's settings, and `role_env` the
    /// settings of one role (`worker` or `serve`), e.g. an address only it binds.
    pub async fn start_with_roles(
        env: &[(&str, &str)],
        role_env: &[(&str, &str, &str)],
    ) -> Result<Stack> {
        let mut dir = tempfile::Builder::new()
            .prefix("mainloop-stack-")
            .tempdir()?;
        // For diagnosing a failed fault run: its logs and Temporal's database outlive the test.
        if std::env::var_os("MAINLOOP_KEEP_STACK").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping the stack's files in {}", dir.path().display());
        }
        let pg = PgServer::start().await?;
        let database_url = pg.create_database("mainloop").await?;
        let mut options = DevServerOptions::ephemeral()?;
        options.db_file = Some(dir.path().join("temporal.db"));
        options.log_file = Some(dir.path().join("temporal.log"));
        let temporal = DevServer::start(options).await?;
        let anthropic = FakeAnthropic::start().await?;
        let store = Store::connect(&database_url).await?;
        store.migrate().await?;
        let mut stack = Stack {
            dir,
            temporal,
            _pg: pg,
            database_url,
            anthropic,
            api_port: free_port()?,
            store,
            api: None,
            worker: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            role_env: role_env
                .iter()
                .map(|(r, k, v)| (r.to_string(), k.to_string(), v.to_string()))
                .collect(),
            http: reqwest::Client::new(),
        };
        stack.start_worker().await?;
        stack.start_api().await?;
        Ok(stack)
    }

    fn command(&self, role: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mainloop"));
        command
            .arg(role)
            .env("DATABASE_URL", &self.database_url)
            .env("TEMPORAL_ADDRESS", self.temporal.address())
            .env("TEMPORAL_NAMESPACE", self.temporal.namespace())
            .env("ANTHROPIC_BASE_URL", self.anthropic.base_url())
            .env("ANTHROPIC_API_KEY", self.anthropic.api_key())
            .env("MAINLOOP_LISTEN", format!("127.0.0.1:{}", self.api_port))
            .env("MAINLOOP_USER", USER)
            .env("MAINLOOP_TURN_HEARTBEAT_TIMEOUT", "2s")
            .env("MAINLOOP_TURN_RETRY_INITIAL", "100ms")
            .env("MAINLOOP_TURN_RETRY_MAX", "500ms")
            .env("MAINLOOP_TURN_RETRY_ATTEMPTS", "5")
            .env("MAINLOOP_OUTBOX_MAX_BACKOFF", "300ms")
            .env("MAINLOOP_SHUTDOWN_GRACE", "2s")
            .env("MAINLOOP_STICKY_TIMEOUT", "1s")
            .env("MAINLOOP_STREAM_FLUSH", "20ms")
            // Racing and bulk fault tests send far more than a person would.
            .env("MAINLOOP_RATE_LIMIT_PER_MINUTE", "0")
            .env("MAINLOOP_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                "info,mainloop=debug,mainloop_api=debug,mainloop_workflows=debug,temporalio_sdk_core=warn",
            )
            .env_remove("TEMPORAL_PROFILE")
            .env_remove("TEMPORAL_CONFIG_FILE")
            .env_remove("TEMPORAL_API_KEY")
            .env_remove("TEMPORAL_TLS");
        for (key, value) in &self.extra_env {
            command.env(key, value);
        }
        for (_, key, value) in self.role_env.iter().filter(|(r, _, _)| r == role) {
            command.env(key, value);
        }
        command
    }

    /// Sets one of `role`'s settings for its next start.
    pub fn set_role_env(&mut self, role: &str, key: &str, value: &str) {
        self.role_env.retain(|(r, k, _)| !(r == role && k == key));
        self.role_env
            .push((role.to_string(), key.to_string(), value.to_string()));
    }

    pub async fn start_worker(&mut self) -> Result<()> {
        let mut command = self.command("worker");
        let log = self.dir.path().join("worker.log");
        self.worker = Some(ChildProcess::spawn(
            "worker",
            &mut command,
            Output::File(log),
            libc::SIGKILL,
        )?);
        Ok(())
    }

    pub async fn start_api(&mut self) -> Result<()> {
        let mut command = self.command("serve");
        let log = self.dir.path().join("api.log");
        let mut child = ChildProcess::spawn("api", &mut command, Output::File(log), libc::SIGKILL)?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the API exited at start ({status}):\n{}",
                    child.log_tail(30)
                );
            }
            if let Ok(response) = self.http.get(self.url("/healthz")).send().await
                && response.status().is_success()
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the API did not come up:\n{}", child.log_tail(30));
            }
            // The port opening is the event; it can only be observed by trying.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.api = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub async fn kill_api(&mut self) -> Result<()> {
        if let Some(mut api) = self.api.take() {
            api.kill().await?;
        }
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub async fn kill_worker(&mut self) -> Result<()> {
        if let Some(mut worker) = self.worker.take() {
            worker.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM, as an orderly stop; fails unless the worker exits cleanly.
    pub async fn stop_worker(&mut self) -> Result<()> {
        if let Some(mut worker) = self.worker.take() {
            let status = worker.terminate(Duration::from_secs(20)).await?;
            if !status.success() {
                bail!("the worker exited with {status}:\n{}", worker.log_tail(30));
            }
        }
        Ok(())
    }

    /// Freezes the worker (SIGSTOP) or lets it go on (SIGCONT): a worker too busy or too
    /// starved to heartbeat, as Temporal sees it.
    pub fn freeze_worker(&self, frozen: bool) -> Result<()> {
        let worker = self.worker.as_ref().context("no worker running")?;
        worker.signal(if frozen { libc::SIGSTOP } else { libc::SIGCONT })
    }

    /// The last lines of the worker's log, for failure messages.
    pub fn worker_log_tail(&self, lines: usize) -> String {
        self.worker
            .as_ref()
            .map(|w| w.log_tail(lines))
            .unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// Posts a message; returns the stored message.
    pub async fn post(&self, content: &str, key: &str) -> Result<Value> {
        self.post_as(&[], content, key).await
    }

    /// Posts a message with extra request headers (e.g. a proxy's identity header); returns
    /// the stored message.
    pub async fn post_as(
        &self,
        headers: &[(&str, &str)],
        content: &str,
        key: &str,
    ) -> Result<Value> {
        let mut request = self
            .http
            .post(self.url("/api/messages"))
            .header("idempotency-key", key);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .json(&serde_json::json!({ "content": content }))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status.as_u16() != 202 {
            bail!("POST /api/messages answered {status}: {body}");
        }
        Ok(body)
    }

    pub async fn last_event_id(&self) -> Result<i64> {
        let page: Value = self
            .http
            .get(self.url("/api/messages?limit=1"))
            .send()
            .await?
            .json()
            .await?;
        page["last_event_id"]
            .as_i64()
            .context("no last_event_id in the page")
    }

    /// The event stream after `after`.
    pub async fn events(&self, after: i64) -> Result<SseClient> {
        self.events_as(&[], after).await
    }

    /// The event stream after `after`, with extra request headers (e.g. an identity).
    pub async fn events_as(&self, headers: &[(&str, &str)], after: i64) -> Result<SseClient> {
        SseClient::connect(
            &self.url(&format!("/api/events?after={after}")),
            headers,
            None,
        )
        .await
    }

    /// The whole thread, from the database.
    pub async fn thread(&self) -> Result<Vec<Message>> {
        Ok(self.store.list_messages(USER, None, 100_000).await?)
    }

    /// Waits until `n` assistant messages have completed, following the event stream from the
    /// start, and returns the thread.
    pub async fn wait_for_replies(&self, n: usize, timeout: Duration) -> Result<Vec<Message>> {
        let mut events = self.events(0).await?;
        let mut completed = 0;
        if n > 0 {
            events
                .collect_until(timeout, |event| {
                    if is_assistant_completion(event) {
                        completed += 1;
                    }
                    completed >= n
                })
                .await
                .with_context(|| self.logs())?;
        }
        self.thread().await
    }

    /// Sends a signal to the user's main thread with the `temporal` CLI, as an operator would.
    pub async fn signal(&self, name: &str, input: Option<&str>) -> Result<()> {
        let workflow = main_thread();
        let mut args = vec!["workflow", "signal", "-w", &workflow, "--name", name];
        if let Some(input) = input {
            args.extend(["--input", input]);
        }
        self.temporal.cli(&args).await?;
        Ok(())
    }

    /// What the main thread's `state` query answers.
    pub async fn thread_state(&self) -> Result<Value> {
        let workflow = main_thread();
        let output = self
            .temporal
            .cli(&[
                "workflow", "query", "-w", &workflow, "--name", "state", "-o", "json",
            ])
            .await?;
        let output: Value = serde_json::from_str(&output).context("query output")?;
        Ok(output["queryResult"][0].clone())
    }

    /// The children's recent logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            std::fs::read_to_string(self.dir.path().join(name))
                .map(|text| {
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(40)..].join("\n")
                })
                .unwrap_or_default()
        };
        format!(
            "--- worker.log\n{}\n--- api.log\n{}",
            read("worker.log"),
            read("api.log")
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The workflow id of the test user's main thread.
pub fn main_thread() -> String {
    mainloop_workflows::main_thread_id(USER)
}

pub fn is_assistant_completion(event: &SseEvent) -> bool {
    event.event == "message.completed" && event.json().is_ok_and(|data| data["role"] == "assistant")
}

/// The text pieces of the `message.delta` events among `received`, in order.
pub fn streamed_deltas(received: &[SseEvent]) -> Result<Vec<String>> {
    received
        .iter()
        .filter(|e| e.event == "message.delta")
        .map(|e| {
            e.json()
                .map(|d| d["text"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// Replies in the thread, by the user message they answer.
pub fn replies_to<'a>(thread: &'a [Message], message_id: &str) -> Vec<&'a Message> {
    thread
        .iter()
        .filter(|m| m.role == Role::Assistant && m.reply_to.as_deref() == Some(message_id))
        .collect()
}

/// Asserts every user message has exactly one complete reply of kind `chat`.
pub fn assert_one_reply_each(thread: &[Message]) {
    let users: Vec<&Message> = thread.iter().filter(|m| m.role == Role::User).collect();
    for message in &users {
        let replies = replies_to(thread, &message.id);
        assert_eq!(
            replies.len(),
            1,
            "message {:?} has {} replies",
            message.content,
            replies.len()
        );
        assert_eq!(replies[0].kind, MessageKind::Chat, "{:?}", replies[0]);
        assert_eq!(
            replies[0].status,
            mainloop_store::MessageStatus::Complete,
            "{:?}",
            replies[0]
        );
    }
    let assistants = thread.iter().filter(|m| m.role == Role::Assistant).count();
    assert_eq!(assistants, users.len(), "stray assistant messages");
}

/// Chat requests the fake received (summaries excluded).
pub fn chat_requests(
    anthropic: &FakeAnthropic,
) -> Vec<mainloop_testkit::anthropic::RecordedRequest> {
    anthropic
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/messages" && !is_summary(r))
        .collect()
}

/// What the model was asked, turn by turn: the last user text of each chat request.
pub fn asked(anthropic: &FakeAnthropic) -> Vec<String> {
    chat_requests(anthropic)
        .iter()
        .filter_map(|r| r.last_user_text())
        .collect()
}

pub fn is_summary(request: &mainloop_testkit::anthropic::RecordedRequest) -> bool {
    request.system_text().contains("maintain the memory")
}
