//! F8: `mainloop dev` started → it prints its URL (the API answers), Temporal excluded. The
//! dev server's own start-up is read from the line `mainloop dev` logs when Temporal is ready
//! (with how long it took) and taken off the total, so what remains is mainloop's: the
//! process, the store (SQLite, migrations), the Temporal connection and the API. Restarts on
//! the same data directory are measured (what a developer does all day); the first start, which
//! creates the database, is in the note.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mainloop_testkit::ports::free_port;
use mainloop_testkit::temporal::find_temporal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{Bound, Probe, Row, Stats, setting};

pub async fn run() -> Result<Vec<Row>> {
    let iterations = setting("F8_ITERATIONS", 5);
    let data = tempfile::tempdir()?;
    let temporal = find_temporal()?;
    let mut samples = Vec::new();
    let mut first = Duration::ZERO;
    let mut temporal_ms = Vec::new();
    for i in 0..=iterations {
        let (own, temporal_took) = start_once(data.path(), &temporal).await?;
        temporal_ms.push(temporal_took);
        if i == 0 {
            first = own;
        } else {
            samples.push(own);
        }
    }
    let stats = Stats::of(samples);
    let temporal = Stats::of(temporal_ms);
    Ok(vec![Row {
        id: "F8",
        what: "`mainloop dev` ready (Temporal excluded), p50 of restarts".into(),
        figure: stats.p50_ms,
        unit: "ms",
        bound: Bound::AtMost(300.0),
        probe: Some(Probe::Loopback),
        note: format!(
            "n={}, max {:.0} ms; first start (new database) {:.0} ms; Temporal's own start \
             p50 {:.0} ms, excluded",
            stats.n,
            stats.p99_ms,
            first.as_secs_f64() * 1000.0,
            temporal.p50_ms
        ),
    }])
}

/// One start and orderly stop; returns mainloop's own start-up time and Temporal's.
async fn start_once(
    data: &std::path::Path,
    temporal: &std::path::Path,
) -> Result<(Duration, Duration)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mainloop"));
    command
        .arg("dev")
        .env("MAINLOOP_DATA_DIR", data)
        .env("MAINLOOP_LISTEN", format!("127.0.0.1:{}", free_port()?))
        .env("MAINLOOP_TEMPORAL_PORT", free_port()?.to_string())
        .env("MAINLOOP_TEMPORAL_UI_PORT", free_port()?.to_string())
        .env("TEMPORAL_BIN", temporal)
        .env("MAINLOOP_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let start = Instant::now();
    let mut process = command.spawn()?;
    let mut stdout = BufReader::new(process.stdout.take().context("no stdout")?).lines();
    let mut stderr = BufReader::new(process.stderr.take().context("no stderr")?).lines();
    let mut temporal_took = None;
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            tokio::select! {
                line = stdout.next_line() => match line? {
                    Some(line) if line.starts_with("mainloop ") => return anyhow::Ok(start.elapsed()),
                    Some(_) => {}
                    None => bail!("mainloop dev exited before it was ready"),
                },
                line = stderr.next_line() => {
                    if let Some(line) = line?
                        && line.contains("the Temporal dev server is ready")
                    {
                        let log: serde_json::Value = serde_json::from_str(&line)?;
                        temporal_took = log["elapsed_ms"].as_f64();
                    }
                }
            }
        }
    })
    .await??;
    // Both pipes are read as they come: the Temporal line may not have been read yet.
    while temporal_took.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
            .await??
            .context("mainloop dev did not log when Temporal was ready")?;
        if line.contains("the Temporal dev server is ready") {
            let log: serde_json::Value = serde_json::from_str(&line)?;
            temporal_took = log["elapsed_ms"].as_f64();
        }
    }
    // Drain stderr while it stops, so it never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let pid = process.id().context("already exited")?;
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -INT {pid} failed");
    tokio::time::timeout(Duration::from_secs(60), process.wait()).await??;
    drain.abort();
    let temporal_took = Duration::from_secs_f64(
        temporal_took.context("mainloop dev did not log when Temporal was ready")? / 1000.0,
    );
    Ok((ready.saturating_sub(temporal_took), temporal_took))
}
