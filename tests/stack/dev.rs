//! `mainloop dev` as a user runs it: one command, URLs printed, chat works (and shows in the
//! metrics listener, when one is asked for), Ctrl-C stops all of it, and a restart keeps every
//! message; `mainloop dev --demo` takes a change from the chat
//! to a merged pull request with no accounts. And the safety check on `serve`.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_testkit::anthropic::FakeAnthropic;
use mainloop_testkit::ports::free_port;
use mainloop_testkit::process::{ChildProcess, Output};
use mainloop_testkit::sse::SseClient;
use mainloop_testkit::temporal::find_temporal;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::{WAIT, is_assistant_completion};
use crate::tasks::{agent_bin, claude_bin};

struct Dev {
    process: tokio::process::Child,
    api: String,
    ui: String,
    /// Every line printed up to the URLs.
    banner: Vec<String>,
}

/// The command that runs `mainloop dev` on the given data directory and ports.
fn dev_command(data: &std::path::Path, ports: (u16, u16, u16)) -> Result<Command> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mainloop"));
    command
        .arg("dev")
        .env("MAINLOOP_DATA_DIR", data)
        .env("MAINLOOP_LISTEN", format!("127.0.0.1:{}", ports.0))
        .env("MAINLOOP_TEMPORAL_PORT", ports.1.to_string())
        .env("MAINLOOP_TEMPORAL_UI_PORT", ports.2.to_string())
        .env("TEMPORAL_BIN", find_temporal()?)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        // Its own process group, as a shell gives a foreground job, for `interrupt`.
        .process_group(0)
        .kill_on_drop(true);
    Ok(command)
}

/// Starts `mainloop dev` with its stdout closed before it prints a byte, as `mainloop dev |
/// head -0` or a supervisor that stopped reading gives it, and waits for it to log that it
/// could not print its addresses: it must go on serving all the same.
async fn start_dev_with_stdout_closed(
    data: &std::path::Path,
    anthropic: &FakeAnthropic,
    ports: (u16, u16, u16),
) -> Result<Dev> {
    let mut command = dev_command(data, ports)?;
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    command
        .env("ANTHROPIC_BASE_URL", anthropic.base_url())
        .env("ANTHROPIC_API_KEY", anthropic.api_key())
        .stdout(writer)
        .stderr(std::process::Stdio::piped());
    let mut process = command.spawn()?;
    drop(command);
    let stderr = process.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            eprintln!("{line}");
            if line.contains("could not print the addresses to stdout") {
                return anyhow::Ok(());
            }
        }
        bail!("mainloop dev exited when its stdout was closed")
    })
    .await??;
    // The rest of its log goes where the test's goes, and never fills the pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
        }
    });
    Ok(Dev {
        process,
        api: format!("http://127.0.0.1:{}", ports.0),
        ui: format!("http://127.0.0.1:{}", ports.2),
        banner: Vec::new(),
    })
}

/// Spawns `mainloop dev` and reads its output until it has printed both URLs.
async fn spawn_dev(mut command: Command) -> Result<Dev> {
    let mut process = command.spawn()?;
    let stdout = process.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut api, mut ui, mut banner) = (String::new(), String::new(), Vec::new());
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("mainloop"), Some(url)) => api = url.to_string(),
                (Some("temporal-ui"), Some(url)) => ui = url.to_string(),
                _ => {}
            }
            banner.push(line);
            if !api.is_empty() && !ui.is_empty() {
                return anyhow::Ok(());
            }
        }
        bail!("mainloop dev exited before printing its URLs")
    })
    .await??;
    Ok(Dev {
        process,
        api,
        ui,
        banner,
    })
}

/// Ctrl-C as a terminal sends it: to the whole process group of `mainloop dev`.
async fn interrupt(dev: &mut Dev) -> Result<std::process::ExitStatus> {
    let pid = dev.process.id().context("already exited")?;
    let status = Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()
        .await?;
    assert!(status.success());
    Ok(tokio::time::timeout(Duration::from_secs(30), dev.process.wait()).await??)
}

#[tokio::test(flavor = "multi_thread")]
async fn mainloop_dev_runs_everything_stops_cleanly_and_keeps_the_thread() -> Result<()> {
    let data = tempfile::tempdir()?;
    let anthropic = FakeAnthropic::start().await?;
    let ports = (free_port()?, free_port()?, free_port()?);
    let http = reqwest::Client::new();

    // The first run also serves metrics: one listener for the API and the worker.
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut command = dev_command(data.path(), ports)?;
    command
        .env("ANTHROPIC_BASE_URL", anthropic.base_url())
        .env("ANTHROPIC_API_KEY", anthropic.api_key())
        .env("MAINLOOP_METRICS_LISTEN", &metrics);
    let mut dev = spawn_dev(command).await?;
    assert_eq!(dev.api, format!("http://127.0.0.1:{}", ports.0));
    assert_eq!(dev.ui, format!("http://127.0.0.1:{}", ports.2));
    let ui = http.get(&dev.ui).send().await?;
    assert!(ui.status().is_success(), "the Temporal Web UI answers");
    let ready: serde_json::Value = http
        .get(format!("{}/readyz", dev.api))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(ready["status"], "ready");

    let mut events =
        SseClient::connect(&format!("{}/api/events?after=0", dev.api), &[], None).await?;
    let posted = http
        .post(format!("{}/api/messages", dev.api))
        .header("idempotency-key", "first")
        .json(&serde_json::json!({"content": "hello dev"}))
        .send()
        .await?;
    assert_eq!(posted.status(), 202);
    events.collect_until(WAIT, is_assistant_completion).await?;
    drop(events);
    // The turn ran, so the worker polls: ready, with the API's readiness beside it.
    let ready = http.get(format!("http://{metrics}/readyz")).send().await?;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await?;
    assert_eq!(ready["worker"], "polling", "{ready}");
    assert_eq!(ready["api"]["status"], "ready", "{ready}");
    let text = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for series in [
        "mainloop_chat_turns_total{outcome=\"answered\"} 1",
        "mainloop_tasks{status=\"merged\"} 0",
        "mainloop_http_requests_total{method=\"POST\",route=\"/api/messages\",status=\"202\"} 1",
        "temporal_request{",
        "temporal_activity_execution_latency_bucket{",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }

    let status = interrupt(&mut dev).await?;
    assert!(
        status.success(),
        "Ctrl-C ends mainloop dev cleanly: {status}"
    );
    // Nothing is left listening: the Temporal dev server went with it.
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports.1)).is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports.0)).is_err());
    assert!(std::net::TcpStream::connect(&metrics).is_err());

    // A restart keeps every message, and the same thread answers again; this time nobody
    // reads what it prints.
    let mut dev = start_dev_with_stdout_closed(data.path(), &anthropic, ports).await?;
    // Without MAINLOOP_METRICS_LISTEN, no metrics listener.
    assert!(std::net::TcpStream::connect(&metrics).is_err());
    let page: serde_json::Value = http
        .get(format!("{}/api/messages", dev.api))
        .send()
        .await?
        .json()
        .await?;
    let contents: Vec<&str> = page["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["content"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(contents, ["hello dev", "Echo: hello dev"]);
    let mut events = SseClient::connect(
        &format!("{}/api/events?after={}", dev.api, page["last_event_id"]),
        &[],
        None,
    )
    .await?;
    http.post(format!("{}/api/messages", dev.api))
        .header("idempotency-key", "second")
        .json(&serde_json::json!({"content": "still here?"}))
        .send()
        .await?;
    let received = events.collect_until(WAIT, is_assistant_completion).await?;
    let reply = received
        .last()
        .map(|e| e.json())
        .transpose()?
        .unwrap_or_default();
    assert_eq!(reply["content"], "Echo: still here?");
    // The model saw the conversation from before the restart.
    let last = anthropic
        .requests()
        .pop()
        .map(|r| r.all_text())
        .unwrap_or_default();
    assert!(last.contains("hello dev"), "{last}");
    assert!(interrupt(&mut dev).await?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_to_run_without_auth_off_loopback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_mainloop"));
    command
        .arg("serve")
        .env("MAINLOOP_LISTEN", "0.0.0.0:0")
        .env("MAINLOOP_AUTH", "none")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none");
    let mut child = ChildProcess::spawn(
        "serve",
        &mut command,
        Output::File(dir.path().join("serve.log")),
        libc::SIGKILL,
    )?;
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert!(!status.success());
    let log = child.log_tail(10);
    assert!(log.contains("MAINLOOP_AUTH=none"), "{log}");
    Ok(())
}

/// How long the demo gets to take a task from confirmation to merge.
const DEMO_WAIT: Duration = Duration::from_secs(180);

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value> {
    let response = http.get(url).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("GET {url} answered {status}: {body}");
    }
    Ok(body)
}

/// POSTs `body`; fails unless the answer is 202, which it returns.
async fn post_json(http: &reqwest::Client, url: &str, key: &str, body: Value) -> Result<Value> {
    let response = http
        .post(url)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if status.as_u16() != 202 {
        bail!("POST {url} answered {status}: {body}");
    }
    Ok(body)
}

/// Re-evaluates `check` after every event of the stream until it yields something.
async fn wait_for<T, F, Fut>(events: &mut SseClient, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + DEMO_WAIT;
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match events.next(left).await {
            Ok(Some(_)) => {}
            Ok(None) => bail!("the event stream closed while waiting for {what}"),
            Err(error) => bail!("waiting for {what}: {error}"),
        }
    }
}

/// Waits until the task's status is `status`, as the API tells it; fails early if it fails.
async fn wait_task(
    events: &mut SseClient,
    http: &reqwest::Client,
    api: &str,
    id: &str,
    status: &str,
) -> Result<Value> {
    let url = format!("{api}/api/tasks/{id}");
    let url = url.as_str();
    wait_for(events, status, move || async move {
        let task = get_json(http, url).await?;
        if task["status"] == status {
            return Ok(Some(task));
        }
        if task["status"] == "failed" {
            bail!("the task failed waiting for {status}: {task}");
        }
        Ok(None)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mainloop_dev_demo_takes_a_change_from_chat_to_a_merged_pr_with_no_accounts() -> Result<()>
{
    let data = tempfile::tempdir()?;
    let ports = (free_port()?, free_port()?, free_port()?);
    let mut command = dev_command(data.path(), ports)?;
    command
        .arg("--demo")
        .env("MAINLOOP_AGENT_BIN", agent_bin()?)
        .env("MAINLOOP_CLAUDE_BIN", claude_bin())
        // Credentials a user may have set: the demo must not use them (its fakes refuse them).
        .env("ANTHROPIC_API_KEY", "sk-ant-a-real-key")
        .env("GITHUB_TOKEN", "ghp_a_real_token")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("GITHUB_API_URL")
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .env_remove("DATABASE_URL")
        // The demo tells Claude Code it is sandboxed by itself (tests may run as root), over
        // whatever the operator set (here a value Claude Code does not take).
        .env("IS_SANDBOX", "yes")
        .env("MAINLOOP_DEMO_MERGE_AFTER", "1s")
        // Polls too slow to matter: the demo's GitHub tells the tasks through webhooks.
        .env("MAINLOOP_CI_POLL", "10m")
        .env("MAINLOOP_CI_POLL_MAX", "10m")
        .env("MAINLOOP_REVIEW_POLL", "10m")
        .env("MAINLOOP_REVIEW_POLL_MAX", "10m")
        .env("MAINLOOP_RETRY_INITIAL", "100ms")
        .env("MAINLOOP_RETRY_MAX", "1s")
        .env("MAINLOOP_SHUTDOWN_GRACE", "2s");
    let mut dev = spawn_dev(command).await?;
    let http = reqwest::Client::new();
    let api = dev.api.clone();

    // The banner says it is a demo and where its GitHub is.
    let banner = dev.banner.clone();
    let line = |key: &str| {
        banner
            .iter()
            .find(|l| l.split_whitespace().next() == Some(key))
            .cloned()
            .with_context(|| format!("no {key} line in {banner:?}"))
    };
    assert!(line("demo")?.contains("fake GitHub"), "{banner:?}");
    let github_line = line("demo-github")?;
    assert!(github_line.contains("demo/hello"), "{github_line}");
    let github = github_line
        .split_whitespace()
        .nth(1)
        .context("no URL")?
        .to_string();
    let token = github_line
        .split("Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .context("no token")?
        .to_string();
    let state_line = line("demo-state")?;
    let state_dir = std::path::PathBuf::from(
        state_line
            .split_whitespace()
            .nth(1)
            .context("no state dir")?,
    );
    assert!(state_dir.join("mainloop.db").exists(), "{state_line}");
    assert!(
        !data.path().join("mainloop.db").exists(),
        "the demo left the configured data directory alone"
    );

    // A greeting gets an answer about the demo.
    let mut events = SseClient::connect(&format!("{api}/api/events?after=0"), &[], None).await?;
    post_json(
        &http,
        &format!("{api}/api/messages"),
        "hello",
        json!({"content": "Hello! What can you do?"}),
    )
    .await?;
    let received = events.collect_until(WAIT, is_assistant_completion).await?;
    let reply = received
        .last()
        .map(|e| e.json())
        .transpose()?
        .unwrap_or_default();
    assert!(
        reply["content"]
            .as_str()
            .unwrap_or("")
            .contains("demo/hello"),
        "{reply}"
    );

    // A change request gets a proposal for the demo repository; confirm it.
    post_json(
        &http,
        &format!("{api}/api/messages"),
        "change",
        json!({"content": "please add a greeting to demo/hello"}),
    )
    .await?;
    let messages_url = format!("{api}/api/messages");
    let messages_url = messages_url.as_str();
    let http_ref = &http;
    let proposal = wait_for(&mut events, "the proposal", move || async move {
        let page = get_json(http_ref, messages_url).await?;
        Ok(page["messages"].as_array().and_then(|messages| {
            messages
                .iter()
                .flat_map(|m| m["proposals"].as_array().cloned().unwrap_or_default())
                .next()
        }))
    })
    .await?;
    assert_eq!(proposal["repo"], "demo/hello", "{proposal}");
    assert_eq!(proposal["title"], "Add a greeting", "{proposal}");
    let proposal_id = proposal["id"].as_str().context("no proposal id")?;
    let confirmed = post_json(
        &http,
        &format!("{api}/api/proposals/{proposal_id}/confirm"),
        "confirm",
        json!({}),
    )
    .await?;
    let id = confirmed["task"]["id"]
        .as_str()
        .context("no task id")?
        .to_string();

    // The agent asks two questions first; answer them as a user would.
    let task = wait_task(&mut events, &http, &api, &id, "waiting_questions").await?;
    let questions = task["questions"].as_array().cloned().unwrap_or_default();
    assert_eq!(questions.len(), 2, "{task}");
    let answers: serde_json::Map<String, Value> = questions
        .iter()
        .filter_map(|q| {
            let label = q["options"][0]["label"].clone();
            Some((q["id"].as_str()?.to_string(), label))
        })
        .collect();
    post_json(
        &http,
        &format!("{api}/api/tasks/{id}/answer"),
        "answer",
        json!({ "answers": answers }),
    )
    .await?;

    // Then it plans, with the answers; approve the plan.
    let task = wait_task(&mut events, &http, &api, &id, "waiting_plan_review").await?;
    assert!(
        task["plan"].as_str().unwrap_or("").contains("A new module"),
        "{task}"
    );
    assert!(
        task["plan"]
            .as_str()
            .unwrap_or("")
            .contains("src/add_a_greeting.rs"),
        "{task}"
    );
    post_json(
        &http,
        &format!("{api}/api/tasks/{id}/review-plan"),
        "approve",
        json!({"action": "approve"}),
    )
    .await?;

    // Implementation, one CI failure and its fix, ready for review, and the demo merges it.
    let task = wait_task(&mut events, &http, &api, &id, "merged").await?;
    let issue = task["issue_number"].as_i64().context("no issue number")?;
    let pr = task["pr_number"].as_i64().context("no PR number")?;
    let runs: Vec<&str> = task["runs"]
        .as_array()
        .map(|runs| runs.iter().filter_map(|r| r["mode"].as_str()).collect())
        .unwrap_or_default();
    for (mode, count) in [("plan", 2), ("implement", 1), ("fix", 1)] {
        assert_eq!(
            runs.iter().filter(|m| **m == mode).count(),
            count,
            "{mode}: {runs:?}"
        );
    }
    assert!(
        task["cost"]["output_tokens"].as_i64().unwrap_or(0) > 0,
        "{task}"
    );

    // The fake GitHub shows the merged PR and the closed issue to the banner's token.
    let as_user = |path: String| {
        http.get(format!("{github}{path}"))
            .bearer_auth(&token)
            .send()
    };
    let pull: Value = as_user(format!("/repos/demo/hello/pulls/{pr}"))
        .await?
        .json()
        .await?;
    assert_eq!(pull["merged"], true, "{pull}");
    let issue: Value = as_user(format!("/repos/demo/hello/issues/{issue}"))
        .await?
        .json()
        .await?;
    assert_eq!(issue["state"], "closed", "{issue}");
    drop(events);

    // Ctrl-C stops it all, and the demo's state goes with it.
    let status = interrupt(&mut dev).await?;
    assert!(status.success(), "Ctrl-C ends the demo cleanly: {status}");
    assert!(!state_dir.exists(), "{} is left", state_dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports.0)).is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports.1)).is_err());
    Ok(())
}
