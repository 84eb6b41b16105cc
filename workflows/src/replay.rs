//! Replaying recorded workflow histories against the current code: the determinism gate. A
//! change to workflow logic that a running workflow would replay differently fails here
//! (and needs `ctx.patched(…)`) instead of failing in production.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use temporalio_client::WorkflowHistory;
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};

use crate::{MainThreadWorkflow, WorkerTaskWorkflow};

/// A replayer that knows every mainloop workflow.
pub fn replayer() -> Result<WorkflowReplayer> {
    let options = WorkflowReplayerOptions::new()
        .register_workflow::<MainThreadWorkflow>()?
        .register_workflow::<WorkerTaskWorkflow>()?
        .build();
    WorkflowReplayer::new(options).map_err(|e| anyhow!("creating the replayer: {e}"))
}

/// Replays histories given as `(name, JSON as from `temporal workflow show -o json`)`;
/// fails naming every history that does not replay.
pub async fn replay_all(histories: Vec<(String, Vec<u8>)>) -> Result<usize> {
    let replayer = replayer()?;
    let mut names = Vec::new();
    let mut parsed = Vec::new();
    for (name, json) in histories {
        let history = WorkflowHistory::from_json(&json)
            .map_err(|e| anyhow!("{name} is not a workflow history: {e}"))?;
        names.push(name);
        parsed.push(history);
    }
    let results = replayer
        .replay_workflows(parsed)
        .await
        .map_err(|e| anyhow!("replaying: {e}"))?;
    let failures: Vec<String> = names
        .iter()
        .zip(&results)
        .filter_map(|(name, result)| {
            result
                .replay_failure
                .as_ref()
                .map(|failure| format!("{name}: {failure}"))
        })
        .collect();
    if !failures.is_empty() {
        return Err(anyhow!(
            "{} of {} histories no longer replay (use `ctx.patched(…)` for changes that \
             running workflows would see):\n{}",
            failures.len(),
            names.len(),
            failures.join("\n")
        ));
    }
    Ok(names.len())
}

/// Every `*.json` file under `dir`, recursively, with its path relative to `dir` as its name.
pub fn load_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string();
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok((name, bytes))
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "json") {
            out.push(path);
        }
    }
    Ok(())
}
