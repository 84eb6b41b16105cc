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
