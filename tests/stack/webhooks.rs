//! GitHub webhooks: a signed delivery makes the task concerned look at GitHub at once,
//! instead of at its next poll; unsigned, mis-signed and replayed deliveries change nothing.

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use mainloop_store::TaskStatus;
use mainloop_testkit::github::CiScript;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::tasks::{REPO, TaskStack};

pub(crate) const SECRET: &str = "webhook-secret-for-tests";

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Posts a delivery as GitHub would, signed with `secret`.
pub(crate) async fn deliver(
    ts: &TaskStack,
    secret: &str,
    event: &str,
    delivery: &str,
    payload: &Value,
) -> Result<(u16, Value)> {
    let body = serde_json::to_vec(payload)?;
    let response = reqwest::Client::new()
        .post(ts.stack.url("/api/github/webhook"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature(secret, &body))
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_webhook_ends_a_long_poll_and_bad_or_replayed_ones_change_nothing() -> Result<()> {
    // Polls so slow that only the webhook can make the task notice the merge in time.
    let ts = TaskStack::start_with(&[
        ("GITHUB_WEBHOOK_SECRET", SECRET),
        ("MAINLOOP_REVIEW_POLL", "10m"),
        ("MAINLOOP_REVIEW_POLL_MAX", "10m"),
    ])
    .await?;
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    let pr = task.pr_number.context("PR")?;
    let branch = task.branch.context("branch")?;
    ts.github.merge_pr(REPO, pr as u64).await?;
    let merged = json!({
        "action": "closed",
        "repository": {"full_name": REPO},
        "pull_request": {"number": pr, "merged": true, "head": {"ref": branch}},
    });

    // Steps no waiting task acts on wake nobody: a check run being created, the PR's own
    // opening, a comment mainloop wrote itself (on the PR, which the
    // issue-comment event calls an issue).
    let noise = [
        (
            "check_run",
            json!({"action": "created", "repository": {"full_name": REPO},
            "check_run": {"head_branch": branch, "pull_requests": [{"number": pr}]}}),
        ),
        (
            "pull_request",
            json!({"action": "opened", "repository": {"full_name": REPO},
            "pull_request": {"number": pr, "head": {"ref": branch}}}),
        ),
        (
            "issue_comment",
            json!({"action": "created", "repository": {"full_name": REPO},
            "issue": {"number": pr},
            "comment": {"body": format!("Plan\n<!-- mainloop:task:{id}:plan-1 -->")}}),
        ),
    ];
    for (n, (event, payload)) in noise.iter().enumerate() {
        let (status, body) = deliver(&ts, SECRET, event, &format!("noise-{n}"), payload).await?;
        assert_eq!(status, 202, "{event}: {body}");
        assert_eq!(body, json!({"accepted": true, "tasks": 0}), "{event}");
    }
    assert_eq!(ts.stack.store.outbox_backlog().await?, 0);

    // Unsigned by us: refused, and nothing is queued.
    let (status, body) = deliver(&ts, "not-the-secret", "pull_request", "d-1", &merged).await?;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_signature");
    assert_eq!(ts.stack.store.outbox_backlog().await?, 0);

    let (status, body) = deliver(&ts, SECRET, "pull_request", "d-2", &merged).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"accepted": true, "tasks": 1}));
    // The same delivery again (a redelivery, or a replay by someone who saw it) does nothing.
    let (status, body) = deliver(&ts, SECRET, "pull_request", "d-2", &merged).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"accepted": false, "tasks": 0}));

    ts.wait_status(&id, TaskStatus::Merged).await?;
    Ok(())
}

/// GitHub (the fake) delivers its webhooks to the API as a repository webhook would, and the
/// polls are ten minutes apart: the task goes from confirmed to merged on webhooks alone. Of
/// everything delivered (the PR opened, mainloop's own comments, CI, the merge), only CI's
/// verdict and the merge nudge the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_runs_to_its_merge_on_github_webhooks_alone() -> Result<()> {
    let ts = TaskStack::start_with(&[
        ("GITHUB_WEBHOOK_SECRET", SECRET),
        ("MAINLOOP_CI_POLL", "10m"),
        ("MAINLOOP_CI_POLL_MAX", "10m"),
        ("MAINLOOP_REVIEW_POLL", "10m"),
        ("MAINLOOP_REVIEW_POLL_MAX", "10m"),
    ])
    .await?;
    ts.github
        .deliver_webhooks_to(&ts.stack.url("/api/github/webhook"), SECRET);
    ts.github.set_ci(REPO, CiScript::AlwaysPass)?;
    let id = ts.confirmed_task(json!({ "skip_planning": true })).await?;
    let task = ts.wait_status(&id, TaskStatus::ReadyForReview).await?;
    ts.github
        .merge_pr(REPO, task.pr_number.context("PR")? as u64)
        .await?;
    ts.wait_status(&id, TaskStatus::Merged).await?;

    let workflow = format!("task/{id}");
    crate::histories::wait_closed(&ts.stack, &workflow).await?;
    let nudges = crate::histories_paths::github_signals(&ts.stack, &workflow).await?;
    let events: Vec<String> = ts.github.view(|v| {
        v.webhook_deliveries()
            .iter()
            .map(|d| format!("{} {}", d.event, d.status))
            .collect()
    });
    assert!(
        events.iter().any(|e| e == "issue_comment 202") && events.len() > nudges,
        "{events:?}"
    );
    assert_eq!(
        nudges, 2,
        "CI's verdict and the merge; deliveries: {events:?}"
    );
    Ok(())
}
