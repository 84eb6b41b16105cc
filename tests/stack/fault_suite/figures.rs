//! Where fault tests leave their figures: one JSON file per test in the figures directory
//! (`MAINLOOP_FIGURES_DIR`, default `<target>/tmp/fault-figures`), which
//! `scripts/fault-report` renders as a Markdown table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{Value, json};

pub fn dir() -> PathBuf {
    std::env::var_os("MAINLOOP_FIGURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-figures"))
}

/// Records one fault test's outcome. `claim` is the property in words ("0 lost, 0 duplicated
/// replies"), `trials` how many times the fault was injected, and `figures` the measured
/// numbers (counts, durations in milliseconds) by name.
pub fn record(test: &str, claim: &str, trials: u64, figures: Value) -> Result<()> {
    let dir = dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{test}.json"));
    let body = json!({ "test": test, "claim": claim, "trials": trials, "figures": figures });
    std::fs::write(&path, serde_json::to_vec_pretty(&body)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("figures {test}: {body}");
    Ok(())
}

/// A trial count from the environment (`var`), else `default`: the suite's defaults meet the
/// issue's numbers, and a quick local run can ask for fewer.
pub fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// `{ "n", "p50_ms", "max_ms" }` of durations.
pub fn millis(samples: &[std::time::Duration]) -> Value {
    let mut ms: Vec<u128> = samples.iter().map(|d| d.as_millis()).collect();
    ms.sort_unstable();
    let p50 = ms.get(ms.len().saturating_sub(1) / 2).copied().unwrap_or(0);
    let max = ms.last().copied().unwrap_or(0);
    json!({ "n": ms.len(), "p50_ms": p50, "max_ms": max })
}
