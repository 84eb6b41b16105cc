//! Webhook deliveries, as GitHub sends them to a repository webhook once a test points the
//! fake at a receiver ([`super::FakeGitHub::deliver_webhooks_to`]): a JSON payload with the
//! `X-GitHub-Event`, a unique `X-GitHub-Delivery` and `X-Hub-Signature-256` (HMAC-SHA256 of
//! the body with the shared secret), posted one after another in the order things happened.
//!
//! What is sent, and when:
//! - `issue_comment` `created`: every comment, the bot's own included (GitHub does not spare
//!   the author);
//! - `pull_request_review` `submitted`: every review;
//! - `pull_request` `opened` when one is created, `closed` (with `merged`) when it is merged or
//!   closed;
//! - `check_suite` `completed` when CI on a pull request's head has a verdict: at once when the
//!   head moves (the PR is opened, or its branch pushed to) if the repository's CI reports no
//!   pending reads, otherwise on the read that ends the pending ones (CI here is judged when
//!   it is read; see `ci`).
//!
//! Payloads carry what receivers read (repository, numbers, branches, bodies, actions), not
//! every field GitHub sends.

use std::sync::Arc;

use serde_json::{Value, json};

use super::model::IssueState;
use super::state::{RepoRec, Shared, State};

/// A delivery made: the event and the receiver's status (0 when it could not be reached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event: String,
    pub status: u16,
}

/// Where deliveries go.
#[derive(Debug, Clone)]
pub(crate) struct Receiver {
    pub url: String,
    pub secret: String,
}

impl State {
    /// Queues a delivery of `event` about repository `key`, if a receiver is set.
    pub fn hook(&mut self, event: &str, key: &str, mut payload: Value) {
        if self.receiver.is_none() {
            return;
        }
        let Some(full_name) = self.repo(key).map(RepoRec::full_name) else {
            return;
        };
        payload["repository"] = json!({ "full_name": full_name });
        self.outgoing.push((event.to_owned(), payload));
    }

    /// Queues `check_suite` `completed` for `sha` of repository `key`, naming the open pull
    /// requests whose head it is; nothing if none is.
    pub fn hook_ci_completed(&mut self, key: &str, sha: &str, failed: bool) {
        let Some(repo) = self.repo(key) else {
            return;
        };
        let heads: Vec<(u64, String)> = repo
            .issues
            .values()
            .filter(|issue| issue.state == IssueState::Open)
            .filter_map(|issue| {
                let pull = issue.pull.as_ref()?;
                (pull.head_sha == sha).then(|| (issue.number, pull.head_ref.clone()))
            })
            .collect();
        let Some((_, branch)) = heads.first() else {
            return;
        };
        let payload = json!({
            "action": "completed",
            "check_suite": {
                "head_branch": branch,
                "head_sha": sha,
                "status": "completed",
                "conclusion": if failed { "failure" } else { "success" },
                "pull_requests": heads.iter().map(|(n, _)| json!({ "number": n })).collect::<Vec<_>>(),
            },
        });
        self.hook("check_suite", key, payload);
    }
}

/// Posts queued deliveries to the receiver, in order, until the fake stops.
pub(crate) async fn deliver(shared: Arc<Shared>) {
    let http = reqwest::Client::new();
    loop {
        let (batch, receiver) = {
            let mut st = shared.lock();
            (std::mem::take(&mut st.outgoing), st.receiver.clone())
        };
        let Some(receiver) = receiver.filter(|_| !batch.is_empty()) else {
            tokio::select! {
                () = shared.hooks_ready.notified() => continue,
                () = shared.stop.cancelled() => return,
            }
        };
        for (event, payload) in batch {
            let status = post(&http, &receiver, &event, &payload).await;
            shared.mutate(|st| st.deliveries.push(Delivery { event, status }));
        }
    }
}

async fn post(http: &reqwest::Client, receiver: &Receiver, event: &str, payload: &Value) -> u16 {
    let body = payload.to_string();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, receiver.secret.as_bytes());
    let signature: String = ring::hmac::sign(&key, body.as_bytes())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let sent = http
        .post(&receiver.url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", format!("sha256={signature}"))
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) => response.status().as_u16(),
        Err(error) => {
            tracing::debug!(%error, event, "webhook delivery failed");
            0
        }
    }
}
