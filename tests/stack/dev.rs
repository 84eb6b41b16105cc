//! `mainloop dev` as a user runs it: one command, URLs printed, chat works, Ctrl-C stops all
//! of it, and a restart keeps every message. And the safety check on `serve`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_testkit::anthropic::FakeAnthropic;
use mainloop_testkit::ports::free_port;
use mainloop_testkit::process::{ChildProcess, Output};
use mainloop_testkit::sse::SseClient;
use mainloop_testkit::temporal::find_temporal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::{WAIT, is_assistant_completion};

struct Dev {
    process: tokio::process::Child,
    api: String,
    ui: String,
}

async fn start_dev(
    data: &std::path::Path,
    anthropic: &FakeAnthropic,
    ports: (u16, u16, u16),
) -> Result<Dev> {
    let mut process = Command::new(env!("CARGO_BIN_EXE_mainloop"))
        .arg("dev")
        .env("MAINLOOP_DATA_DIR", data)
        .env("MAINLOOP_LISTEN", format!("127.0.0.1:{}", ports.0))
        .env("MAINLOOP_TEMPORAL_PORT", ports.1.to_string())
        .env("MAINLOOP_TEMPORAL_UI_PORT", ports.2.to_string())
        .env("TEMPORAL_BIN", find_temporal()?)
        .env("ANTHROPIC_BASE_URL", anthropic.base_url())
        .env("ANTHROPIC_API_KEY", anthropic.api_key())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = process.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut api, mut ui) = (String::new(), String::new());
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("mainloop"), Some(url)) => api = url.to_string(),
                (Some("temporal-ui"), Some(url)) => ui = url.to_string(),
                _ => {}
            }
            if !api.is_empty() && !ui.is_empty() {
                return anyhow::Ok(());
            }
        }
        bail!("mainloop dev exited before printing its URLs")
    })
    .await??;
    Ok(Dev { process, api, ui })
}

async fn interrupt(dev: &mut Dev) -> Result<std::process::ExitStatus> {
    let pid = dev.process.id().context("already exited")?;
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
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

    let mut dev = start_dev(data.path(), &anthropic, ports).await?;
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

    let status = interrupt(&mut dev).await?;
    assert!(
        status.success(),
        "Ctrl-C ends mainloop dev cleanly: {status}"
    );
    // Nothing is left listening: the Temporal dev server went with it.
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports.1)).is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports.0)).is_err());

    // A restart keeps every message, and the same thread answers again.
    let mut dev = start_dev(data.path(), &anthropic, ports).await?;
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
