//! What the committed histories exercise, read from their JSON (the SDK's history encoding:
//! each event's `attributes` holds one `…EventAttributes` object; payload data is base64).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::Value;

use crate::code::Capabilities;

/// Decodes the first JSON payload of a `{"payloads": [...]}` object.
fn payload(payloads: &Value) -> Option<Value> {
    let data = payloads["payloads"][0]["data"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Everything the histories of one workflow (`dir`: `tests/histories/{kind}`) exercise, in
/// the shape of [`Capabilities`]; queries are never in a history and stay empty.
pub fn exercised(dir: &Path) -> Result<Capabilities> {
    let mut seen = Capabilities::default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for file in files {
        let history: Value = serde_json::from_slice(&std::fs::read(&file)?)
            .with_context(|| format!("parsing {}", file.display()))?;
        for event in history["events"].as_array().into_iter().flatten() {
            let Some((kind, attributes)) = event["attributes"]
                .as_object()
                .and_then(|a| a.iter().next())
            else {
                continue;
            };
            record(&mut seen, kind, attributes);
        }
    }
    Ok(seen)
}

fn record(seen: &mut Capabilities, kind: &str, attributes: &Value) {
    seen.events.insert(kind.to_string());
    match kind {
        "ActivityTaskScheduledEventAttributes" => {
            let name = attributes["activity_type"]["name"]
                .as_str()
                .unwrap_or_default();
            seen.activities.insert(name.to_string());
            if name == "jobs.run"
                && let Some(mode) = payload(&attributes["input"])
                    .and_then(|input| input["mode"].as_str().map(str::to_string))
            {
                seen.job_modes.insert(mode.to_lowercase());
            }
        }
        "MarkerRecordedEventAttributes" => match attributes["marker_name"].as_str() {
            Some("core_local_activity") => {
                if let Some(data) = payload(&attributes["details"]["data"])
                    && let Some(name) = data["activity_type"].as_str()
                {
                    seen.activities.insert(name.to_string());
                }
            }
            Some("core_patch") => {
                if let Some(data) = payload(&attributes["details"]["patch-data"])
                    && let Some(id) = data["id"].as_str()
                {
                    seen.patches.insert(id.to_string());
                }
            }
            _ => {}
        },
        "WorkflowExecutionSignaledEventAttributes" => {
            if let Some(name) = attributes["signal_name"].as_str() {
                seen.signals.insert(name.to_string());
            }
        }
        "SignalExternalWorkflowExecutionInitiatedEventAttributes" => {
            if let Some(name) = attributes["signal_name"].as_str() {
                seen.sends.insert(name.to_string());
            }
        }
        "UpsertWorkflowSearchAttributesEventAttributes" => {
            let fields = &attributes["search_attributes"]["indexedFields"];
            if let Some(status) = fields.get("MainloopTaskStatus").and_then(|field| {
                let data = field["data"].as_str()?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .ok()?;
                serde_json::from_slice::<String>(&bytes).ok()
            }) {
                seen.statuses.insert(status);
            }
            // Which keys were set: recorded as events `SearchAttribute:<key>`.
            for key in fields.as_object().into_iter().flat_map(|f| f.keys()) {
                seen.events.insert(format!("SearchAttribute:{key}"));
            }
        }
        // A child started with search attributes: the starting workflow set those keys.
        "StartChildWorkflowExecutionInitiatedEventAttributes" => {
            let fields = &attributes["search_attributes"]["indexedFields"];
            for key in fields.as_object().into_iter().flat_map(|f| f.keys()) {
                seen.events.insert(format!("SearchAttribute:{key}"));
            }
        }
        _ => {}
    }
}

/// Whatever `code` can do that `seen` never did, one line each.
pub fn uncovered(kind: &str, code: &Capabilities, seen: &Capabilities) -> Vec<String> {
    let mut missing = Vec::new();
    let mut check = |what: &str, need: &BTreeSet<String>, have: &BTreeSet<String>| {
        for item in need.difference(have) {
            missing.push(format!("{kind}: {what} `{item}`"));
        }
    };
    check("activity", &code.activities, &seen.activities);
    check("signal", &code.signals, &seen.signals);
    check("history event", &code.events, &seen.events);
    check("signal sent", &code.sends, &seen.sends);
    check("patch", &code.patches, &seen.patches);
    check("task status", &code.statuses, &seen.statuses);
    check("job mode", &code.job_modes, &seen.job_modes);
    missing
}
