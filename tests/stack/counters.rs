//! Deterministic counters against the ceilings committed in `tests/ceilings.json`: history
//! events per task (one full lifecycle, one short) and per chat turn, counted from the real
//! Temporal history, and SQL statements per API request, read from the API process's
//! `mainloop_sql_statements_total{route}` before and after each request. Polls are slowed to
//! minutes and replaced by webhook-style nudges, so the counts depend on what happened, not
//! on how long it took.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_store::TaskStatus;
use mainloop_testkit::anthropic::Reply;
use mainloop_testkit::github::CiScript;
use mainloop_testkit::ports::free_port;
use serde_json::{Value, json};

use crate::harness::{Stack, WAIT, main_thread};
use crate::histories::{histories, settle, wait_closed, wait_for_timer};
use crate::task_humans::asks_first;
use crate::tasks::{REPO, TaskStack, approve_plan};

/// Compares `measured` with the ceilings of `section`, printing both; fails when one is
/// above its ceiling or has none.
fn check(section: &str, measured: &[(String, u64)]) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ceilings.json");
    let ceilings: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let ceilings = &ceilings[section];
    let mut failures = Vec::new();
    println!("{section} (measured | ceiling), from {}", path.display());
    for (name, value) in measured {
        let Some(ceiling) = ceilings[name.as_str()].as_u64() else {
            failures.push(format!("{name}: measured {value}, no ceiling committed"));
            continue;
        };
        let note = if *value > ceiling {
            failures.push(format!("{name}: {value} > ceiling {ceiling}"));
            "ABOVE THE CEILING"
        } else if value.saturating_mul(4) < ceiling.saturating_mul(3) && ceiling - value > 2 {
            "far below: lower the ceiling"
        } else {
            ""
        };
        println!("  {name:<60} {value:>5} | {ceiling:>5}  {note}");
    }
    if !failures.is_empty() {
        bail!(
            "{section} above the ceilings in tests/ceilings.json:\n  {}",
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// History events of every run of `workflow_id`.
async fn events(stack: &Stack, workflow_id: &str) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    for run in histories(stack, workflow_id).await? {
        let history: Value = serde_json::from_slice(&run)?;
        all.extend(history["events"].as_array().cloned().unwrap_or_default());
    }
    Ok(all)
}

/// Tells task `id` that something happened on GitHub, as a webhook delivery would.
async fn nudge(ts: &TaskStack, id: &str) -> Result<()> {
    ts.stack
        .temporal
        .cli(&[
            "workflow",
            "signal",
            "-w",
            &format!("task/{id}"),
            "--name",
            "github",
            "--input",
            "{}",
        ])
        .await?;
    Ok(())
}

/// Polls so slow that only signals and nudges move a task: its history then depends on what
/// happened only.
const SLOW_POLLS: &[(&str, &str)] = &[
    ("MAINLOOP_HUMAN_POLL", "10m"),
    ("MAINLOOP_HUMAN_POLL_MAX", "10m"),
    ("MAINLOOP_REVIEW_POLL", "10m"),
    ("MAINLOOP_REVIEW_POLL_MAX", "10m"),
];

/// Runs one task to a merge and counts the events of its workflow.
async fn task_events(ts: &TaskStack, body: Value, plan: bool) -> Result<u64> {
    let id = ts.confirmed_task(body).await?;
    if plan {
        approve_plan(ts, &id).await?;
    }
    let ready = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    ts.github
        .merge_pr(REPO, ready.pr_number.context("PR")? as u64)
        .await?;
    wait_for_timer(&ts.stack, &format!("task/{id}")).await?;
    nudge(ts, &id).await?;
    ts.wait_status(&id, TaskStatus::Merged).await?;
    let workflow = format!("task/{id}");
    wait_closed(&ts.stack, &workflow).await?;
    let events = events(&ts.stack, &workflow).await?;
    // Where the events go, for whoever has to bring the count down.
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for event in &events {
        if let Some(kind) = event["attributes"]
            .as_object()
            .and_then(|a| a.keys().next())
        {
            *kinds
                .entry(kind.trim_end_matches("EventAttributes").to_string())
                .or_default() += 1;
        }
    }
    println!("{workflow}: {} events: {kinds:?}", events.len());
    Ok(events.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_events_per_task_with_a_plan_and_a_ci_fix() -> Result<()> {
    let ts = TaskStack::start_with(SLOW_POLLS).await?;
    ts.github.set_ci(REPO, CiScript::FailTimes(1))?;
    let events = task_events(&ts, json!({}), true).await?;
    check(
        "history_events",
        &[(
            "task: plan, approve, implement, one CI fix, ready, merged".to_string(),
            events,
        )],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_events_per_task_without_planning() -> Result<()> {
    let ts = TaskStack::start_with(SLOW_POLLS).await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let events = task_events(&ts, json!({ "skip_planning": true }), false).await?;
    check(
        "history_events",
        &[(
            "task: no planning, implement, CI passes, ready, merged".to_string(),
            events,
        )],
    )
}

/// Events from the `n`-th `message` signal (0-based) up to the next one: one whole turn.
fn turn_events(events: &[Value], n: usize) -> Result<u64> {
    let signals: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e["attributes"]["WorkflowExecutionSignaledEventAttributes"]["signal_name"] == "message"
        })
        .map(|(i, _)| i)
        .collect();
    let (Some(start), Some(end)) = (signals.get(n), signals.get(n + 1)) else {
        bail!("fewer than {} message signals", n + 2);
    };
    Ok((end - start) as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn history_events_per_chat_turn() -> Result<()> {
    let stack = Stack::start().await?;
    // Each turn ends before the next message: the span between two signals is one turn.
    stack.post("first", "k1").await?;
    stack.wait_for_replies(1, WAIT).await?;
    settle(&stack, 1).await?;
    stack.post("second", "k2").await?;
    stack.wait_for_replies(2, WAIT).await?;
    settle(&stack, 2).await?;
    stack.anthropic.push(Reply::tool_use(
        "propose_task",
        json!({"title": "Add dark mode", "description": "Follow the system theme.", "repo": "acme/web"}),
    ));
    stack.anthropic.push(Reply::text("Proposed."));
    stack.post("add dark mode to acme/web", "k3").await?;
    stack.wait_for_replies(3, WAIT).await?;
    settle(&stack, 3).await?;
    stack.post("thanks", "k4").await?;
    stack.wait_for_replies(4, WAIT).await?;
    settle(&stack, 4).await?;
    let events = events(&stack, &main_thread()).await?;
    check(
        "history_events",
        &[
            (
                "chat turn: plain reply".to_string(),
                turn_events(&events, 1)?,
            ),
            (
                "chat turn: reply with a tool call (task proposal)".to_string(),
                turn_events(&events, 2)?,
            ),
        ],
    )
}

/// `mainloop_sql_statements_total` of the API process, by route.
struct SqlMeter {
    url: String,
    http: reqwest::Client,
}

impl SqlMeter {
    async fn read(&self) -> Result<BTreeMap<String, u64>> {
        let text = self.http.get(&self.url).send().await?.text().await?;
        let prefix = "mainloop_sql_statements_total{route=\"";
        Ok(text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(prefix)?;
                let (route, value) = rest.split_once("\"} ")?;
                Some((route.to_string(), value.trim().parse::<f64>().ok()? as u64))
            })
            .collect())
    }

    /// Statements run for `route` while `request` ran.
    async fn measure<F, Fut>(&self, route: &str, request: F) -> Result<u64>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let before = self.read().await?.get(route).copied().unwrap_or(0);
        request().await?;
        let after = self.read().await?.get(route).copied().unwrap_or(0);
        Ok(after - before)
    }

    /// The least of three runs of a read-only request: a stray statement of another request
    /// (an event stream left by a helper, say) cannot inflate it.
    async fn measure_get(&self, route: &str, path: &str, ts: &TaskStack) -> Result<u64> {
        let mut least = u64::MAX;
        for _ in 0..3 {
            let url = ts.stack.url(path);
            let counted = self
                .measure(route, || async {
                    let status = self.http.get(&url).send().await?.status();
                    anyhow::ensure!(status.is_success(), "GET {path}: {status}");
                    Ok(())
                })
                .await?;
            least = least.min(counted);
        }
        Ok(least)
    }
}

/// Waits until `url` answers 200 (the API's metrics listener once the API is ready).
async fn wait_ready(http: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} never answered 200");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_statements_per_request() -> Result<()> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let ts =
        TaskStack::start_with_roles(SLOW_POLLS, &[("serve", "MAINLOOP_METRICS_LISTEN", &listen)])
            .await?;
    ts.stack.anthropic.set_default(asks_first);
    let meter = SqlMeter {
        url: format!("http://{listen}/metrics"),
        http: reqwest::Client::new(),
    };
    wait_ready(&meter.http, &format!("http://{listen}/readyz")).await?;
    let mut measured = Vec::new();
    let mut add = |route: &str, value: u64| measured.push((route.to_string(), value));

    let posted = meter
        .measure("POST /api/messages", || async {
            ts.stack
                .post("please add a greeting to acme/web", "task-1")
                .await
                .map(drop)
        })
        .await?;
    add("POST /api/messages", posted);
    let proposal = ts.proposal_id().await?;
    let confirmed = meter
        .measure("POST /api/proposals/{id}/confirm", || async {
            let (status, body) = ts
                .request(
                    "POST",
                    &format!("/api/proposals/{proposal}/confirm"),
                    Some(json!({})),
                )
                .await?;
            anyhow::ensure!(status == 202, "confirm: {status} {body}");
            Ok(())
        })
        .await?;
    add("POST /api/proposals/{id}/confirm", confirmed);
    let task = ts
        .stack
        .store
        .list_tasks(crate::harness::USER, None, 10)
        .await?;
    let id = task.first().context("no task")?.id.clone();
    ts.wait_status(&id, TaskStatus::WaitingQuestions).await?;

    for (route, path) in [
        ("GET /api/messages", "/api/messages".to_string()),
        ("GET /api/tasks", "/api/tasks".to_string()),
        ("GET /api/tasks/{id}", format!("/api/tasks/{id}")),
        ("GET /api/inbox", "/api/inbox".to_string()),
    ] {
        add(route, meter.measure_get(route, &path, &ts).await?);
    }
    let answered = meter
        .measure("POST /api/tasks/{id}/answer", || async {
            let (status, body) = ts
                .task_input(
                    &id,
                    "answer",
                    json!({"answers": {"greeting": "Hi", "module": "src/greet.rs"}}),
                )
                .await?;
            anyhow::ensure!(status == 202, "answer: {status} {body}");
            Ok(())
        })
        .await?;
    add("POST /api/tasks/{id}/answer", answered);
    // Connecting to the event stream: until its first event (the backlog from id 0) is read.
    let url = ts.stack.url("/api/events?after=0");
    let connected = meter
        .measure("GET /api/events", || async {
            let mut response = meter.http.get(&url).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "events: {}",
                response.status()
            );
            let first = tokio::time::timeout(WAIT, response.chunk()).await??;
            anyhow::ensure!(first.is_some(), "the event stream ended at once");
            Ok(())
        })
        .await?;
    add("GET /api/events", connected);
    check("sql_statements", &measured)
}
