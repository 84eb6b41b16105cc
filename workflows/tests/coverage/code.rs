//! What the workflow code can do, read from the sources: the activities each workflow
//! schedules (names from the `#[activity(name = …)]` of the implementers the worker
//! registers), the signals it handles, the commands it issues, the task statuses it records,
//! the job modes it runs and the patches it checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mainloop_store::TaskStatus;

/// How a workflow's command shows in its history, keyed by the workflow-context method (or
/// handle method) that issues it. Every method called on the context must be either here or
/// in [`NO_COMMAND`]: a new kind of command cannot slip past the gate unclassified.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        "ctx.execute_activity(",
        "ActivityTaskScheduledEventAttributes",
    ),
    (
        "ctx.execute_local_activity(",
        "MarkerRecordedEventAttributes",
    ),
    ("ctx.timer(", "TimerStartedEventAttributes"),
    // A timer dropped early (a webhook nudge or a cancel while waiting).
    ("timer.cancel()", "TimerCanceledEventAttributes"),
    // An activity abandoned because the task was cancelled meanwhile.
    (
        "future.cancel()",
        "ActivityTaskCancelRequestedEventAttributes",
    ),
    (
        "ctx.start_child_workflow(",
        "StartChildWorkflowExecutionInitiatedEventAttributes",
    ),
    (
        "ctx.external_workflow(",
        "SignalExternalWorkflowExecutionInitiatedEventAttributes",
    ),
    (
        "ctx.upsert_search_attributes(",
        "UpsertWorkflowSearchAttributesEventAttributes",
    ),
    (
        "ctx.continue_as_new(",
        "WorkflowExecutionContinuedAsNewEventAttributes",
    ),
    (
        "ctx.upsert_memo(",
        "WorkflowPropertiesModifiedEventAttributes",
    ),
];

/// Context methods that issue no command (reads, waits, details for the UI).
pub const NO_COMMAND: &[&str] = &[
    "state",
    "state_mut",
    "wait_condition",
    "search_attributes",
    "set_current_details",
    "continue_as_new_suggested",
    "history_length",
    "run_id",
    "workflow_id",
    "namespace",
    "task_queue",
    "info",
    "is_replaying",
    "workflow_time",
    "random",
    "random_stream",
    "uuid4",
    "memo",
    "headers",
    "all_handlers_finished",
    "cancellation_token",
    "cancelled",
    // Patches are checked by id, below.
    "patched",
    "deprecate_patch",
];

/// One workflow as its source describes it.
#[derive(Debug, Default)]
pub struct Capabilities {
    pub activities: BTreeSet<String>,
    pub signals: BTreeSet<String>,
    pub queries: BTreeSet<String>,
    /// History event kinds its commands produce.
    pub events: BTreeSet<String>,
    /// Signals it sends to other workflows.
    pub sends: BTreeSet<String>,
    pub patches: BTreeSet<String>,
    /// `MainloopTaskStatus` values it can set.
    pub statuses: BTreeSet<String>,
    /// Modes of `jobs.run` it can start.
    pub job_modes: BTreeSet<String>,
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `"x"` in `…prefix"x"…`, for every occurrence.
fn quoted_after(text: &str, prefix: &str) -> Vec<String> {
    text.match_indices(prefix)
        .filter_map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect()
}

/// What follows each occurrence of `prefix` up to the next `)`, `,` (a path like `a::B`, or a
/// quoted string kept with its quote).
fn idents_path_after(text: &str, prefix: &str) -> Vec<String> {
    text.match_indices(prefix)
        .map(|(at, _)| {
            text[at + prefix.len()..]
                .chars()
                .take_while(|c| *c != ')' && *c != ',')
                .collect::<String>()
        })
        .filter(|path| !path.is_empty())
        .collect()
}

/// The identifier right after each occurrence of `prefix`.
fn idents_after(text: &str, prefix: &str) -> Vec<String> {
    text.match_indices(prefix)
        .map(|(at, _)| {
            text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .filter(|s: &String| !s.is_empty())
        .collect()
}

/// `Implementer -> (method -> activity type name)`, from every `#[activities] impl` of the
/// activities crate.
pub fn activity_names() -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let dir = workspace().join("activities/src");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text: String = read(&path)?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let blocks: Vec<(usize, &str)> = text.match_indices("#[activities]impl").collect();
        if blocks.len() > 1 {
            bail!(
                "{}: one #[activities] impl per file, please",
                path.display()
            );
        }
        let Some((at, _)) = blocks.first() else {
            continue;
        };
        let body = &text[at + "#[activities]impl".len()..];
        let implementer: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let mut methods = BTreeMap::new();
        for (at, _) in body.match_indices("#[activity(name=\"") {
            let rest = &body[at + "#[activity(name=\"".len()..];
            let name = rest[..rest.find('"').unwrap_or(0)].to_string();
            let method = idents_after(rest, "fn").into_iter().next();
            let method = method.context("an activity without a fn")?;
            methods.insert(method, name);
        }
        out.insert(implementer, methods);
    }
    Ok(out)
}

/// The implementers the worker registers, from `Implementations` in worker.rs.
pub fn registered_implementers() -> Result<BTreeSet<String>> {
    let text = read(&workspace().join("workflows/src/worker.rs"))?;
    let start = text
        .find("pub struct Implementations")
        .context("worker.rs has no Implementations")?;
    let body = &text[start..start + text[start..].find('}').unwrap_or(0)];
    Ok(body
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|ty| ty.trim().trim_end_matches(',').to_string())
        .filter(|ty| !ty.is_empty())
        .collect())
}

/// What `workflows/src/{file}` can do.
pub fn capabilities(
    file: &str,
    names: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Capabilities> {
    // The workflow's file and its submodules (`task.rs` and `task/*.rs`).
    let src = workspace().join("workflows/src");
    let mut source = read(&src.join(file))?;
    let submodules = src.join(file.trim_end_matches(".rs"));
    if submodules.is_dir() {
        let mut paths: Vec<_> = std::fs::read_dir(&submodules)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        paths.sort();
        for path in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        {
            source.push_str(&read(path)?);
        }
    }
    let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    let mut caps = Capabilities::default();
    for (implementer, methods) in names {
        for method in idents_after(&compact, &format!("{implementer}::")) {
            let name = methods.get(&method).with_context(|| {
                format!("{file} calls {implementer}::{method}, which has no #[activity(name)]")
            })?;
            caps.activities.insert(name.clone());
        }
    }
    caps.signals = quoted_after(&compact, "#[signal(name=\"")
        .into_iter()
        .collect();
    caps.queries = quoted_after(&compact, "#[query(name=\"")
        .into_iter()
        .collect();
    caps.patches = quoted_after(&compact, ".patched(\"")
        .into_iter()
        .chain(quoted_after(&compact, ".deprecate_patch(\""))
        .collect();
    // Patch ids named by a constant: `.patched(PATCH)` or `.patched(module::PATCH)`, resolved
    // through its `const PATCH: &str = "…"`.
    for prefix in [".patched(", ".deprecate_patch("] {
        for path in idents_path_after(&compact, prefix) {
            let name = path.rsplit("::").next().unwrap_or(&path);
            let definition = format!("const{name}:&str=\"");
            let ids = quoted_after(&compact, &definition);
            if path.starts_with('"') {
                continue;
            }
            if ids.is_empty() {
                bail!(
                    "{file} checks patch `{path}`, whose `const {name}: &str` the gate cannot find"
                );
            }
            caps.patches.extend(ids);
        }
    }
    for method in idents_after(&compact, "ctx.") {
        let call = format!("ctx.{method}(");
        if !NO_COMMAND.contains(&method.as_str()) && !COMMANDS.iter().any(|(c, _)| *c == call) {
            bail!(
                "{file} calls `{call}…)`, which the coverage gate does not know: add it to \
                 COMMANDS (with the history event it produces) or NO_COMMAND"
            );
        }
    }
    for (call, event) in COMMANDS {
        if compact.contains(call) {
            caps.events.insert((*event).to_string());
        }
    }
    // Signals sent elsewhere: `ctx.external_workflow(…).signal(Workflow::signal, …)`.
    for (at, _) in compact.match_indices(".signal(") {
        let target: String = compact[at + ".signal(".len()..]
            .chars()
            .take_while(|c| *c != ',')
            .collect();
        if let Some((_, signal)) = target.split_once("::") {
            caps.sends.insert(signal.to_string());
        }
    }
    for status in TaskStatus::ALL {
        if compact.contains(&format!("TaskStatus::{status:?}")) {
            caps.statuses.insert(status.as_str().to_string());
        }
    }
    // Search attributes it sets, by key: `SEARCH_ATTRIBUTE_X.value_set(…)`, X's key from lib.rs.
    let lib: String = read(&workspace().join("workflows/src/lib.rs"))?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    for constant in idents_after(&compact, "SEARCH_ATTRIBUTE_") {
        let declared = format!("constSEARCH_ATTRIBUTE_{constant}:");
        let at = lib
            .find(&declared)
            .with_context(|| format!("SEARCH_ATTRIBUTE_{constant} is not in lib.rs"))?;
        let key = quoted_after(&lib[at..], "(\"").into_iter().next();
        let key = key.context("a search attribute key without a name")?;
        caps.events.insert(format!("SearchAttribute:{key}"));
    }
    caps.job_modes = idents_after(&compact, "Mode::")
        .into_iter()
        .map(|mode| mode.to_lowercase())
        .collect();
    Ok(caps)
}
