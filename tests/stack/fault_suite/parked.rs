//! A thousand tasks parked on a human, the worker killed, every question answered while it is
//! down, the worker back: each answer is processed exactly once (one recorded input, one more
//! plan job, the plan quoting that task's own answer), and a task confirmed while the backlog
//! drains still starts promptly. Jobs run the stub CLI of [`super::temporal_kill`].

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mainloop_store::{NewProposal, TaskStatus};
use serde_json::json;

use super::figures;
use super::temporal_kill::{ASK, confirmed_tasks, stub_stack, wait_all};
use crate::harness::USER;
use crate::tasks::{REPO, TaskStack};

/// Confirms one more proposal while the backlog drains; returns confirm → the task's
/// workflow running (`planning`), and confirm → its first job recorded.
async fn fresh_task_starts(ts: &TaskStack, reply: &str) -> Result<(Duration, Duration, String)> {
    ts.stack
        .store
        .create_proposal(
            USER,
            &NewProposal {
                id: "fault-proposal-fresh".to_string(),
                message_id: reply.to_string(),
                title: "A fresh task".to_string(),
                description: "Add a farewell() function".to_string(),
                repo: REPO.to_string(),
                model: None,
                skip_planning: false,
            },
        )
        .await?;
    let confirmed = Instant::now();
    let (status, body) = ts
        .request(
            "POST",
            "/api/proposals/fault-proposal-fresh/confirm",
            Some(json!({})),
        )
        .await?;
    if status != 202 {
        bail!("confirm answered {status}: {body}");
    }
    let id = body["task"]["id"]
        .as_str()
        .context("no task id")?
        .to_string();
    ts.wait_for(|| async { Ok((ts.task(&id).await?.status != TaskStatus::Pending).then_some(())) })
        .await?;
    let running = confirmed.elapsed();
    ts.wait_for(|| async {
        Ok((!ts.stack.store.task_runs(USER, &id).await?.is_empty()).then_some(()))
    })
    .await?;
    Ok((running, confirmed.elapsed(), id))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: make test-faults"]
async fn a_thousand_parked_tasks_answered_while_the_worker_is_down_each_process_their_answer_once()
-> Result<()> {
    let n = figures::count("MAINLOOP_FAULT_PARKED", 1000);
    let started = Instant::now();
    let stub = tempfile::tempdir()?;
    let mut ts = stub_stack(stub.path(), 8).await?;
    let titles: Vec<String> = (0..n).map(|i| format!("Parked {i} {ASK}")).collect();
    let ids = confirmed_tasks(&ts, &titles, |_| false).await?;
    wait_all(&ts, &ids, |_| TaskStatus::WaitingQuestions).await?;
    let parked_after = started.elapsed();

    ts.stack.kill_worker().await?;
    let answering = Instant::now();
    for (c, chunk) in ids.chunks(32).enumerate() {
        let posts = chunk.iter().enumerate().map(|(j, id)| {
            let body = json!({ "answers": { "greeting": format!("Hi {}", c * 32 + j) } });
            ts.task_input(id, "answer", body)
        });
        for result in futures::future::join_all(posts).await {
            let (status, body) = result?;
            if status != 202 {
                bail!("answer answered {status}: {body}");
            }
        }
    }
    let answered_in = answering.elapsed();

    let restarted = Instant::now();
    ts.stack.start_worker().await?;
    let reply = ts
        .stack
        .thread()
        .await?
        .iter()
        .rev()
        .find(|m| !m.proposals.is_empty())
        .map(|m| m.id.clone())
        .context("no proposal message")?;
    let (fresh_running, fresh_job, fresh_id) = fresh_task_starts(&ts, &reply).await?;
    wait_all(&ts, &ids, |_| TaskStatus::WaitingPlanReview).await?;
    let drained = restarted.elapsed();

    // Each answer reached its own task once: one recorded input, one more plan job, and the
    // plan quotes that task's answer.
    let mut not_once = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let inputs = ts
            .stack
            .store
            .task_inputs(USER, id)
            .await?
            .into_iter()
            .filter(|input| input.kind == "answers")
            .count();
        let plans = ts.runs(id, "plan").await?;
        let plan = ts.task(id).await?.plan.unwrap_or_default();
        if inputs != 1 || plans != 2 || !plan.contains(&format!("returns: Hi {i}\n")) {
            not_once.push(format!(
                "{}: {inputs} inputs, {plans} plan jobs, plan {plan:?}",
                titles[i]
            ));
        }
    }
    let fresh_runs = ts.stack.store.task_runs(USER, &fresh_id).await?.len();
    figures::record(
        "parked",
        "1,000 tasks parked on a human, the worker killed, then all answered: every answer \
         processed once, a new task still starts promptly",
        1,
        json!({
            "parked": n,
            "answered": n,
            "processed_once": n - not_once.len(),
            "park_all_s": parked_after.as_secs(),
            "answers_posted_while_down_ms": answered_in.as_millis(),
            "restart_to_drained_ms": drained.as_millis(),
            "new_task_confirm_to_running_ms": fresh_running.as_millis(),
            "new_task_confirm_to_first_job_ms": fresh_job.as_millis(),
            "new_task_jobs": fresh_runs,
            "wall_s": started.elapsed().as_secs(),
        }),
    )?;
    assert!(
        not_once.is_empty(),
        "{} not processed once: {:#?}",
        not_once.len(),
        &not_once[..not_once.len().min(10)]
    );
    Ok(())
}
