//! The task benchmarks, on one [`TaskStack`] in this order:
//! - F2: one task at a time through its whole lifecycle (plan, approval, implementation, CI,
//!   ready for review, merged); mainloop's overhead is the wall time minus the time inside
//!   jobs and inside the person's merge; and the task workflow's history length.
//! - F3 and F9: many tasks started at once (skipping planning) to merged: tasks per minute
//!   through the one worker, and the worker's CPU time per task.
//! - F4: many tasks parked on a person (waiting for plan review): the worker's resident
//!   memory per parked task.
//! - F5: a plan approval posted to the API → the task's workflow moves on (its new status on
//!   the event stream), for some of the parked tasks, one at a time.
//!
//! F4 and F5 then run again on a second stack whose worker caches fewer workflows than there
//! are parked tasks (`MAINLOOP_WORKFLOW_CACHE`): what a parked task costs once evicted, and
//! how fast an evicted one resumes (it is replayed from its history).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mainloop_store::TaskStatus;
use mainloop_testkit::sse::SseClient;
use mainloop_testkit::temporal::DevServer;
use serde_json::json;

use crate::stack::{REPO, TaskStack, WAIT};
use crate::support::{
    Bound, Probe, Row, Stats, cpu_time, cpu_time_of_command, cpu_time_with_children,
    machine_cpu_time, rss_kib, setting,
};

pub async fn run(temporal: &DevServer) -> Result<Vec<Row>> {
    let stack = TaskStack::start(temporal, "tasks", &[]).await?;
    let mut rows = Vec::new();
    rows.extend(lifecycle(&stack, temporal).await?);
    rows.extend(throughput(&stack, temporal).await?);
    rows.extend(parked(&stack, temporal, None).await?);
    drop(stack);
    let cache = setting("F4_CACHE", 50);
    let evicting = TaskStack::start(
        temporal,
        "evicting",
        &[("MAINLOOP_WORKFLOW_CACHE", &cache.to_string())],
    )
    .await?;
    rows.extend(parked(&evicting, temporal, Some(cache)).await?);
    Ok(rows)
}

/// What [`drive`] saw of each task.
#[derive(Default)]
struct Driven {
    /// Time spent inside the fake GitHub's merges: the person's time, not mainloop's.
    merges: HashMap<String, Duration>,
    /// Each status change, when the person first saw it.
    seen: HashMap<String, Vec<(TaskStatus, Instant)>>,
}

/// What the person does to tasks: approves plans and merges pull requests as soon as they
/// are asked to, until every task in `ids` is merged.
async fn drive(stack: &TaskStack, ids: &[String]) -> Result<Driven> {
    let mut wake = stack.store.subscribe_events();
    let mut approved = HashSet::new();
    let mut merged: HashMap<String, Duration> = HashMap::new();
    let mut seen: HashMap<String, Vec<(TaskStatus, Instant)>> = HashMap::new();
    let mut merging = tokio::task::JoinSet::new();
    // One merge at a time, as one person merges (and the fake's merges of one repository
    // must not race each other for `main`).
    let one_at_a_time = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    let wanted: HashSet<&String> = ids.iter().collect();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let tasks = stack.store.list_tasks(&stack.user, None, 100_000).await?;
        let now = Instant::now();
        let mut done = 0;
        for task in tasks.iter().filter(|t| wanted.contains(&t.id)) {
            let changes = seen.entry(task.id.clone()).or_default();
            if changes.last().map(|(status, _)| *status) != Some(task.status) {
                changes.push((task.status, now));
            }
            match task.status {
                TaskStatus::WaitingPlanReview if approved.insert(task.id.clone()) => {
                    stack
                        .post(
                            &format!("/api/tasks/{}/review-plan", task.id),
                            json!({"action": "approve"}),
                        )
                        .await?;
                }
                TaskStatus::ReadyForReview if !merged.contains_key(&task.id) => {
                    let pr = task.pr_number.context("no PR")? as u64;
                    let github = stack.github.clone();
                    let id = task.id.clone();
                    merged.insert(id.clone(), Duration::ZERO);
                    let lock = one_at_a_time.clone();
                    merging.spawn(async move {
                        let _turn = lock.lock().await;
                        let start = Instant::now();
                        github.merge_pr(REPO, pr).await?;
                        anyhow::Ok((id, start.elapsed()))
                    });
                }
                TaskStatus::Merged => done += 1,
                TaskStatus::Failed => bail!("task {} failed: {:?}", task.id, task.error),
                _ => {}
            }
        }
        while let Some(finished) = merging.try_join_next() {
            let (id, took) = finished??;
            merged.insert(id, took);
        }
        if done == ids.len() {
            while let Some(finished) = merging.join_next().await {
                let (id, took) = finished??;
                merged.insert(id, took);
            }
            return Ok(Driven {
                merges: merged,
                seen,
            });
        }
        match tokio::time::timeout_at(deadline, wake.recv()).await {
            Err(_) => bail!(
                "{done}/{} tasks merged in time; worker log:\n{}",
                ids.len(),
                stack.worker.log_tail(30)
            ),
            Ok(_) => {
                // Many changes arrive together: look once for all of them.
                while wake.try_recv().is_ok() {}
            }
        }
    }
}

/// How long a task took from `start` (the confirmation) to its first status seen, then how
/// long it stayed in each status it went through. The last status (merged)
/// has no end and is left out.
fn time_in_each_status(
    start: Instant,
    changes: &[(TaskStatus, Instant)],
) -> Vec<(&'static str, Duration)> {
    let mut times = Vec::new();
    if let Some((_, first)) = changes.first() {
        times.push(("confirm→seen", first.saturating_duration_since(start)));
    }
    for pair in changes.windows(2) {
        let ((status, from), (_, to)) = (pair[0], pair[1]);
        times.push((status.as_str(), to.saturating_duration_since(from)));
    }
    times
}

/// Time task `id`'s jobs ran, from their recorded runs.
async fn job_time(stack: &TaskStack, id: &str) -> Result<Duration> {
    let runs = stack.store.task_runs(&stack.user, id).await?;
    Ok(runs
        .iter()
        .filter_map(|r| Some((r.finished_at? - r.started_at).to_std().unwrap_or_default()))
        .sum())
}

/// The run ids of task `id`'s workflow, oldest first: a task continues as new when it leaves
/// the intake queue (and when its history grows long), and its lifecycle is all of them.
async fn run_ids(temporal: &DevServer, id: &str) -> Result<Vec<String>> {
    let out = temporal
        .cli(&[
            "workflow",
            "list",
            "--query",
            &format!("WorkflowId = 'task/{id}'"),
            "--output",
            "json",
        ])
        .await?;
    let listed: serde_json::Value = serde_json::from_str(&out)?;
    let mut runs: Vec<(String, String)> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|run| {
            Some((
                run["startTime"].as_str()?.to_string(),
                run["execution"]["runId"].as_str()?.to_string(),
            ))
        })
        .collect();
    runs.sort();
    if runs.is_empty() {
        bail!("no runs of task/{id} listed: {out}");
    }
    Ok(runs.into_iter().map(|(_, run)| run).collect())
}

/// The events of every run of task `id`'s workflow: `(run length, event types)` per run,
/// oldest first.
async fn task_history(temporal: &DevServer, id: &str) -> Result<Vec<Vec<String>>> {
    // The workflow records its end after the merged status: wait for it to have closed.
    temporal
        .cli(&["workflow", "result", "--workflow-id", &format!("task/{id}")])
        .await?;
    let mut runs = Vec::new();
    for run in run_ids(temporal, id).await? {
        runs.push(
            run_events(temporal, id, Some(&run))
                .await?
                .iter()
                .map(|event| {
                    let kind = event["eventType"].as_str().unwrap_or("?");
                    kind.trim_start_matches("EVENT_TYPE_").to_lowercase()
                })
                .collect(),
        );
    }
    Ok(runs)
}

/// The history events of one run of task `id`'s workflow (`None`: its latest run), as
/// `temporal workflow show` prints them.
async fn run_events(
    temporal: &DevServer,
    id: &str,
    run: Option<&str>,
) -> Result<Vec<serde_json::Value>> {
    let workflow = format!("task/{id}");
    let mut args = vec!["workflow", "show", "--workflow-id", &workflow];
    if let Some(run) = run {
        args.extend(["--run-id", run]);
    }
    args.extend(["--output", "json"]);
    let mut history: serde_json::Value = serde_json::from_str(&temporal.cli(&args).await?)?;
    match history["events"].take() {
        serde_json::Value::Array(events) => Ok(events),
        _ => bail!("no events in the history of {workflow}"),
    }
}

/// How many events of each type `runs` hold together, most frequent first.
fn history_breakdown(runs: &[Vec<String>]) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for kind in runs.iter().flatten() {
        *counts.entry(kind.clone()).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

async fn lifecycle(stack: &TaskStack, temporal: &DevServer) -> Result<Vec<Row>> {
    let iterations = setting("F2_TASKS", 10);
    let mut overhead = Vec::new();
    let mut totals = Vec::new();
    let mut jobs = Vec::new();
    let mut events = Vec::new();
    let mut longest_run = Vec::new();
    let mut last: Vec<Vec<String>> = Vec::new();
    let mut phases: Vec<(&'static str, Vec<Duration>)> = Vec::new();
    // One warm-up task: the first job and the first workflow of a worker pay for caches.
    for i in 0..=iterations {
        let proposal = stack.proposal(false).await?;
        let start = Instant::now();
        let id = stack.confirm(&proposal).await?;
        let driven = drive(stack, std::slice::from_ref(&id)).await?;
        let total = start.elapsed();
        let job = job_time(stack, &id).await?;
        let merge = driven.merges.get(&id).copied().unwrap_or_default();
        if i > 0 {
            let changes = driven.seen.get(&id).map(Vec::as_slice).unwrap_or_default();
            for (status, took) in time_in_each_status(start, changes) {
                match phases.iter_mut().find(|(s, _)| *s == status) {
                    Some((_, samples)) => samples.push(took),
                    None => phases.push((status, vec![took])),
                }
            }
            overhead.push(total.saturating_sub(job + merge));
            totals.push(total);
            jobs.push(job);
            let runs = task_history(temporal, &id).await?;
            events.push(runs.iter().map(Vec::len).sum::<usize>() as f64);
            longest_run.push(runs.iter().map(Vec::len).max().unwrap_or(0) as f64);
            last = runs;
        }
    }
    let overhead = Stats::of(overhead);
    let totals = Stats::of(totals);
    let jobs = Stats::of(jobs);
    events.sort_by(f64::total_cmp);
    let events_p50 = events.get(events.len() / 2).copied().unwrap_or(f64::NAN);
    let events_max = events.last().copied().unwrap_or(f64::NAN);
    let phases = phases
        .into_iter()
        .map(|(phase, samples)| format!("{phase} {:.0}", Stats::of(samples).p50_ms))
        .collect::<Vec<_>>()
        .join(", ");
    longest_run.sort_by(f64::total_cmp);
    let longest_run_max = longest_run.last().copied().unwrap_or(f64::NAN);
    let last_runs = last
        .iter()
        .map(|run| run.len().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let breakdown = history_breakdown(&last)
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(vec![
        Row {
            id: "F2",
            what: "task lifecycle overhead (plan → approve → PR → CI → merged), p50".into(),
            figure: overhead.p50_ms,
            unit: "ms",
            bound: Bound::AtMost(250.0),
            probe: Some(Probe::NoopWorkflow),
            note: format!(
                "n={}; wall p50 {:.0} ms minus jobs p50 {:.0} ms (instant agent: 4 jobs, git \
                 push) and the merge; p99 {:.0} ms; wall p50 in each status, ms, from confirm \
                 (jobs and the merge inside): {phases}",
                overhead.n, totals.p50_ms, jobs.p50_ms, overhead.p99_ms
            ),
        },
        Row {
            id: "F2",
            what: "task workflow history events per lifecycle (all its runs)".into(),
            figure: events_max,
            unit: "events",
            bound: Bound::AtMost(120.0),
            probe: None,
            note: format!(
                "max of n={}, p50 {events_p50:.0}; the longest single run {longest_run_max:.0} \
                 events; the last task's runs {last_runs}: {breakdown}",
                events.len()
            ),
        },
    ])
}

async fn throughput(stack: &TaskStack, temporal: &DevServer) -> Result<Vec<Row>> {
    let count = setting("F3_TASKS", 60);
    let mut proposals = Vec::new();
    for _ in 0..count {
        proposals.push(stack.proposal(true).await?);
    }
    let worker = stack.worker_pid()?;
    let api = stack.api_pid()?;
    let server = temporal
        .pid()
        .context("the Temporal dev server is not running")?;
    let bench = std::process::id();
    let (worker_before, api_before) = (cpu_time(worker)?, cpu_time(api)?);
    let (server_before, machine_before) = (cpu_time(server)?, machine_cpu_time()?);
    let (jobs_before, postgres_before, bench_before) = (
        cpu_time_with_children(worker)?,
        cpu_time_of_command("postgres")?,
        cpu_time_with_children(bench)?,
    );
    let start = Instant::now();
    let mut ids = Vec::new();
    for proposal in &proposals {
        ids.push(stack.confirm(proposal).await?);
    }
    drive(stack, &ids).await?;
    let elapsed = start.elapsed();
    let worker_cpu = cpu_time(worker)?.saturating_sub(worker_before);
    let api_cpu = cpu_time(api)?.saturating_sub(api_before);
    let server_cpu = cpu_time(server)?.saturating_sub(server_before);
    let machine_cpu = machine_cpu_time()?.saturating_sub(machine_before);
    // The worker's ended children are its jobs (it waits for each).
    let jobs_cpu = cpu_time_with_children(worker)?
        .saturating_sub(jobs_before)
        .saturating_sub(worker_cpu);
    let postgres_cpu = cpu_time_of_command("postgres")?.saturating_sub(postgres_before);
    let bench_cpu = cpu_time_with_children(bench)?.saturating_sub(bench_before);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let busy = machine_cpu.as_secs_f64() / (elapsed.as_secs_f64() * cores as f64) * 100.0;
    let per_minute = count as f64 / elapsed.as_secs_f64() * 60.0;
    let per_task = |d: Duration| d.as_secs_f64() * 1000.0 / count as f64;
    Ok(vec![
        Row {
            id: "F3",
            what: "tasks per minute through one worker (skip planning, to merged)".into(),
            figure: per_minute,
            unit: "tasks/min",
            bound: Bound::AtLeast(300.0),
            probe: None,
            note: format!(
                "{count} tasks started at once, {:.1} s; default MAINLOOP_MAX_JOBS (3); jobs are the \
                 instant agent; the machine's {cores} cores {busy:.0}% busy, CPU-ms per task: all \
                 processes {:.0}, the Temporal dev server {:.0}, the jobs {:.0}, PostgreSQL {:.0}, \
                 the worker {:.0}, the API {:.0}, this process (the fake GitHub with its git, \
                 the person) {:.0}",
                elapsed.as_secs_f64(),
                per_task(machine_cpu),
                per_task(server_cpu),
                per_task(jobs_cpu),
                per_task(postgres_cpu),
                per_task(worker_cpu),
                per_task(api_cpu),
                per_task(bench_cpu),
            ),
        },
        Row {
            id: "F9",
            what: "worker CPU time per task".into(),
            figure: per_task(worker_cpu),
            unit: "CPU-ms",
            bound: Bound::AtMost(150.0),
            probe: None,
            note: format!(
                "during F3, worker process only (jobs are its children, not counted); the API \
                 used {:.0} CPU-ms per task",
                per_task(api_cpu)
            ),
        },
    ])
}

/// Confirms `count` new tasks and waits until each waits for its plan review. Returns the
/// worker's resident memory just before the confirmations, and the tasks' ids.
async fn park(stack: &TaskStack, worker: u32, count: usize) -> Result<(u64, Vec<String>)> {
    let mut proposals = Vec::new();
    for _ in 0..count {
        proposals.push(stack.proposal(false).await?);
    }
    let before = rss_kib(worker)?;
    let mut ids = Vec::new();
    for proposal in &proposals {
        ids.push(stack.confirm(proposal).await?);
    }
    let wanted: HashSet<&String> = ids.iter().collect();
    stack
        .wait_for(|| async {
            let tasks = stack.store.list_tasks(&stack.user, None, 100_000).await?;
            let waiting = tasks
                .iter()
                .filter(|t| wanted.contains(&t.id) && t.status == TaskStatus::WaitingPlanReview)
                .count();
            Ok((waiting == ids.len()).then_some(()))
        })
        .await?;
    Ok((before, ids))
}

/// F4 and F5; `cache`: the worker's workflow cache, when it was set below the parked count.
async fn parked(stack: &TaskStack, temporal: &DevServer, cache: Option<usize>) -> Result<Vec<Row>> {
    let count = setting("F4_TASKS", 200);
    let resumes = setting("F5_ITERATIONS", 30).min(count);
    let worker = stack.worker_pid()?;
    if cache.is_some() {
        // This worker is fresh, and a fresh worker's heap grows with its first tasks: a first
        // batch fills the cache and the heap, so the measured one shows what each parked task
        // adds once the cache is full.
        park(stack, worker, count).await?;
    }
    let (before, ids) = park(stack, worker, count).await?;
    let after = rss_kib(worker)?;
    let per_task_kib = after.saturating_sub(before) as f64 / count as f64;
    let (parked_how, resumed_how) = match cache {
        None => (String::new(), String::new()),
        Some(cache) => (
            format!(", a workflow cache of {cache}"),
            format!(" (evicted from a cache of {cache}, replayed)"),
        ),
    };
    let mut rows = vec![Row {
        id: "F4",
        what: format!("worker memory per task parked on a person{parked_how}"),
        figure: per_task_kib,
        unit: "KiB",
        bound: Bound::AtMost(64.0),
        probe: None,
        note: format!(
            "worker RSS {before} → {after} KiB with {count} tasks waiting for plan review"
        ),
    }];

    // F5 on the parked tasks, one at a time, each followed to the next quiet point.
    let after_id = stack.store.last_event_id().await?;
    let mut events = SseClient::connect(
        &format!("{}/api/events?after={after_id}", stack.base),
        &[],
        None,
    )
    .await?;
    let mut samples = Vec::new();
    let mut accepted = Vec::new();
    let mut stages = ResumeStages::default();
    for id in ids.iter().take(resumes) {
        let posted_at = chrono::Utc::now();
        let start = Instant::now();
        stack
            .post(
                &format!("/api/tasks/{id}/review-plan"),
                json!({"action": "approve"}),
            )
            .await?;
        accepted.push(start.elapsed());
        events
            .collect_until(WAIT, |e| {
                e.event == "task.updated"
                    && e.json().is_ok_and(|t| {
                        t["id"] == id.as_str() && t["status"] != "waiting_plan_review"
                    })
            })
            .await?;
        samples.push(start.elapsed());
        // To merged, so that no task of an earlier sample still polls its PR.
        drive(stack, std::slice::from_ref(id)).await?;
        stages.add(temporal, id, posted_at).await?;
    }
    let resumed = Stats::of(samples);
    let accepted = Stats::of(accepted);
    rows.push(Row {
        id: "F5",
        what: format!(
            "plan approval posted → task workflow resumes (status on SSE){resumed_how}, p50"
        ),
        figure: resumed.p50_ms,
        unit: "ms",
        bound: Bound::AtMost(15.0),
        probe: Some(Probe::EchoUpdate),
        note: format!(
            "n={}, p99 {:.1} ms; of which the POST's 202 p50 {:.1} ms; API → outbox → signal \
             → worker → store → SSE, PostgreSQL, {count} tasks parked; p50 from the POST, ms \
             (the task's history): {}",
            resumed.n,
            resumed.p99_ms,
            accepted.p50_ms,
            stages.summary()
        ),
    });
    Ok(rows)
}

/// Where an F5 sample's time went, from the task workflow's history: when Temporal recorded
/// the approval's signal, when the worker picked up the workflow task it caused, and when
/// that workflow task completed (the status was recorded inside it), each measured from the
/// POST. The server's clock is this machine's.
#[derive(Default)]
struct ResumeStages {
    signaled: Vec<Duration>,
    started: Vec<Duration>,
    completed: Vec<Duration>,
}

impl ResumeStages {
    async fn add(
        &mut self,
        temporal: &DevServer,
        id: &str,
        posted_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let history = run_events(temporal, id, None).await?;
        let events: Vec<(String, chrono::DateTime<chrono::Utc>, &serde_json::Value)> = history
            .iter()
            .filter_map(|event| {
                let kind = event["eventType"]
                    .as_str()?
                    .trim_start_matches("EVENT_TYPE_");
                let at = chrono::DateTime::parse_from_rfc3339(event["eventTime"].as_str()?).ok()?;
                Some((kind.to_owned(), at.to_utc(), event))
            })
            .collect();
        let signal = events
            .iter()
            .position(|(kind, _, event)| {
                kind == "WORKFLOW_EXECUTION_SIGNALED"
                    && event["workflowExecutionSignaledEventAttributes"]["signalName"]
                        == "plan_review"
            })
            .with_context(|| format!("task/{id} has no plan_review signal"))?;
        let after = |wanted: &str| {
            events[signal..]
                .iter()
                .find(|(kind, _, _)| kind == wanted)
                .map(|(_, at, _)| *at)
                .with_context(|| format!("task/{id}: no {wanted} after the approval"))
        };
        let since_post =
            |at: chrono::DateTime<chrono::Utc>| (at - posted_at).to_std().unwrap_or(Duration::ZERO);
        self.signaled.push(since_post(events[signal].1));
        self.started
            .push(since_post(after("WORKFLOW_TASK_STARTED")?));
        self.completed
            .push(since_post(after("WORKFLOW_TASK_COMPLETED")?));
        Ok(())
    }

    fn summary(&self) -> String {
        let p50 = |samples: &Vec<Duration>| Stats::of(samples.clone()).p50_ms;
        format!(
            "signal recorded {:.1}, workflow task started {:.1}, completed {:.1}",
            p50(&self.signaled),
            p50(&self.started),
            p50(&self.completed)
        )
    }
}
