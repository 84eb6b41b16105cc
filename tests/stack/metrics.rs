//! The metrics listeners of a real worker and a real API (`MAINLOOP_METRICS_LISTEN`): after
//! one task has gone through planning, implementation, one CI failure and its fix to a merge,
//! each process's `/metrics` shows what it did, the worker's with the Temporal SDK's own
//! metrics beside ours, and the probes answer.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use mainloop_store::TaskStatus;
use mainloop_testkit::github::CiScript;
use mainloop_testkit::ports::free_port;
use serde_json::json;

use crate::tasks::{REPO, TaskStack, approve_plan};

/// The value of the series `series` (name and labels exactly as exposed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|rest| rest.trim().parse().ok())
}

fn expect(text: &str, series: &str) -> Result<f64> {
    value(text, series).with_context(|| format!("no {series} in:\n{text}"))
}

async fn get(url: &str) -> Result<(u16, String)> {
    let response = reqwest::get(url).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// Waits until `url` answers 200. The worker becomes ready when its SDK worker starts, which
/// only the probe can tell.
async fn wait_ready(url: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if let Ok((200, _)) = get(url).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} never answered 200: {:?}", get(url).await);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merged_task_shows_in_the_metrics_of_the_worker_and_the_api() -> Result<()> {
    let worker = format!("127.0.0.1:{}", free_port()?);
    let api = format!("127.0.0.1:{}", free_port()?);
    let ts = TaskStack::start_with_roles(
        &[],
        &[
            ("worker", "MAINLOOP_METRICS_LISTEN", &worker),
            ("serve", "MAINLOOP_METRICS_LISTEN", &api),
        ],
    )
    .await?;
    let (status, _) = get(&format!("http://{worker}/healthz")).await?;
    assert_eq!(status, 200);
    wait_ready(&format!("http://{worker}/readyz")).await?;
    wait_ready(&format!("http://{api}/readyz")).await?;

    ts.github.set_ci(REPO, CiScript::FailTimes(1))?;
    let id = ts.confirmed_task(json!({})).await?;
    approve_plan(&ts, &id).await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    ts.github
        .merge_pr(REPO, task.pr_number.context("no PR")? as u64)
        .await?;
    ts.wait_status(&id, TaskStatus::Merged).await?;

    let (status, text) = get(&format!("http://{worker}/metrics")).await?;
    assert_eq!(status, 200, "{text}");
    // The SDK's own metrics, through the same registry.
    for sdk in [
        "temporal_request{",
        "temporal_workflow_task_execution_latency_bucket{",
        "temporal_activity_execution_latency_bucket{",
    ] {
        assert!(text.contains(sdk), "no {sdk} in:\n{text}");
    }
    for mode in ["plan", "implement", "fix"] {
        let series =
            format!("mainloop_job_duration_seconds_count{{mode=\"{mode}\",outcome=\"succeeded\"}}");
        assert_eq!(expect(&text, &series)?, 1.0, "{series}");
    }
    assert_eq!(expect(&text, "mainloop_ci_fix_attempts_total")?, 1.0);
    assert_eq!(expect(&text, "mainloop_jobs_running")?, 0.0);
    assert!(
        expect(
            &text,
            "mainloop_tokens_total{kind=\"input\",source=\"job\"}"
        )? > 0.0
    );
    assert!(
        expect(
            &text,
            "mainloop_tokens_total{kind=\"output\",source=\"chat\"}"
        )? > 0.0
    );
    assert!(expect(&text, "mainloop_chat_turns_total{outcome=\"answered\"}")? >= 1.0);
    // Tasks are counted by the API only, so that a sum over processes counts each once.
    assert!(!text.contains("mainloop_tasks{"), "{text}");

    let (status, text) = get(&format!("http://{api}/metrics")).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(expect(&text, "mainloop_tasks{status=\"merged\"}")?, 1.0);
    assert_eq!(expect(&text, "mainloop_tasks{status=\"failed\"}")?, 0.0);
    assert_eq!(
        expect(
            &text,
            "mainloop_http_requests_total{method=\"POST\",route=\"/api/proposals/{id}/confirm\",status=\"202\"}"
        )?,
        1.0
    );
    assert!(
        expect(
            &text,
            "mainloop_http_request_duration_seconds_count{method=\"POST\",route=\"/api/tasks/{id}/review-plan\"}"
        )? >= 1.0
    );
    assert!(
        !text.contains(&id),
        "a raw path leaked into a label:\n{text}"
    );
    // The API's Temporal client reports its calls (the outbox relay's signals).
    assert!(text.contains("temporal_request{"), "{text}");
    Ok(())
}
