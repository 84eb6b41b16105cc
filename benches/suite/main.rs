//! `make bench`: the performance targets of DESIGN §12 (F1–F9), each against the calibration
//! probes run in the same process, written as one Markdown table and one JSON document
//! (`target/bench/report.{md,json}`, under `CARGO_TARGET_DIR` when set).
//!
//! Settings (environment): `MAINLOOP_BENCH_ONLY=f1,f6` runs some benchmarks only;
//! `MAINLOOP_BENCH_CALIBRATION` (samples per probe, 200) and per benchmark
//! `MAINLOOP_BENCH_F1_ITERATIONS`, `_F2_TASKS`, `_F3_TASKS`, `_F4_TASKS`, `_F5_ITERATIONS`,
//! `_F6_TASKS`, `_F6_ITERATIONS`, `_F7_CLIENTS`, `_F7_ITERATIONS`, `_F8_ITERATIONS` size them.
//! What each measures and what is faked: docs/performance.md.

mod api;
mod dev;
mod f1;
mod instant_agent;
mod sse_clients;
mod stack;
mod support;
mod tasks;

use anyhow::Result;
use mainloop_testkit::temporal::{DevServer, DevServerOptions};
use mainloop_workflows::TemporalSettings;

use crate::support::{Report, calibrate, machine, setting};

fn main() -> Result<std::process::ExitCode> {
    // The worker's local job runner starts this binary as the benchmarks' instant agent.
    if instant_agent::is_job() {
        return Ok(instant_agent::main());
    }
    // F7 starts this binary again as its SSE clients.
    if sse_clients::is_clients() {
        return Ok(sse_clients::main());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(suite())?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn selected(id: &str) -> bool {
    match std::env::var("MAINLOOP_BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => {
            only.split(',').any(|s| s.trim().eq_ignore_ascii_case(id))
        }
        _ => true,
    }
}

async fn suite() -> Result<()> {
    let machine = machine();
    // The dev server as `mainloop dev` runs it, shared by every benchmark.
    let temporal = DevServer::start(DevServerOptions::ephemeral()?.tuned_for_latency()).await?;
    let client = TemporalSettings::local(&temporal.address(), temporal.namespace(), "bench")?
        .connect()
        .await?;
    eprintln!("bench: calibrating");
    let calibration = calibrate(&client, setting("CALIBRATION", 200)).await?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut record = |id: &str, result: Result<Vec<support::Row>>| match result {
        Ok(found) => {
            for row in &found {
                eprintln!(
                    "bench: {} {}: {:.2} {}",
                    row.id, row.what, row.figure, row.unit
                );
            }
            rows.extend(found);
        }
        Err(error) => {
            eprintln!("bench: {id} failed: {error:#}");
            errors.push((id.to_string(), format!("{error:#}")));
        }
    };
    if selected("f1") {
        eprintln!("bench: F1");
        record("F1", f1::run(&temporal).await);
    }
    if selected("f6") || selected("f7") {
        eprintln!("bench: F6, F7");
        record("F6/F7", api::run().await);
    }
    if selected("f8") {
        eprintln!("bench: F8");
        record("F8", dev::run().await);
    }
    if ["f2", "f3", "f4", "f5", "f9"].iter().any(|id| selected(id)) {
        eprintln!("bench: F2, F3, F9, F4, F5");
        record("F2-F5/F9", tasks::run(&temporal).await);
    }
    rows.sort_by_key(|r| r.id);
    let report = Report {
        machine,
        calibration,
        rows,
        errors,
    };
    let dir = report.write()?;
    println!("{}", report.markdown());
    println!(
        "bench: written {} and {}",
        dir.join("report.md").display(),
        dir.join("report.json").display()
    );
    Ok(())
}
