//! `POST /api/github/webhook`: GitHub tells us something happened (a comment, a review, CI
//! finished, a merge) so the task concerned looks now instead of at its next poll. Polling
//! stays the source of truth: a lost or refused delivery only costs latency.
//!
//! A delivery is taken only with a valid `X-Hub-Signature-256` (HMAC-SHA256 of the body with
//! `GITHUB_WEBHOOK_SECRET`) and only once per `X-GitHub-Delivery` id, so a replayed delivery
//! does nothing.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use mainloop_store::{WebhookOutcome, WebhookTarget};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody, code};

/// What became of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    /// False when the delivery id was seen before (nothing was done again).
    pub accepted: bool,
    /// Tasks told to look at GitHub now.
    pub tasks: usize,
}

/// Takes a GitHub webhook delivery.
#[utoipa::path(
    post,
    path = "/api/github/webhook",
    tag = "github",
    // Authenticated by the signature, not by the API's credentials.
    security(()),
    request_body(content = Object, description = "a GitHub webhook payload"),
    responses(
        (status = 202, body = WebhookReceipt, description = "taken (or seen before)"),
        (status = 400, body = ErrorBody, description = "invalid_header: a GitHub header is missing"),
        (status = 401, body = ErrorBody, description = "invalid_signature"),
        (status = 404, body = ErrorBody, description = "webhooks are not configured"),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<WebhookReceipt>), ApiError> {
    let Some(secret) = state.webhook_secret.as_deref() else {
        return Err(ApiError::not_found(
            "GitHub webhooks are not configured (set GITHUB_WEBHOOK_SECRET);",
        ));
    };
    // The signature first: nothing about an unsigned request is looked at.
    let signature = header(&headers, "x-hub-signature-256").ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::INVALID_SIGNATURE,
            "X-Hub-Signature-256 is missing",
        )
    })?;
    if !signature_valid(secret, &body, signature) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            code::INVALID_SIGNATURE,
            "the signature does not match the body",
        ));
    }
    let event = header(&headers, "x-github-event")
        .ok_or_else(|| ApiError::bad_request(code::INVALID_HEADER, "X-GitHub-Event is missing"))?;
    let delivery = header(&headers, "x-github-delivery")
        .filter(|d| !d.is_empty() && d.len() <= 200)
        .ok_or_else(|| {
            ApiError::bad_request(code::INVALID_HEADER, "X-GitHub-Delivery is missing")
        })?;
    let payload: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(code::MALFORMED_JSON, format!("the body is not JSON: {e}"))
    })?;
    let target = target(&payload).filter(|_| worth_a_look(event, &payload));
    let Some(target) = target else {
        // `ping`, an event about no repository, or one no waiting task acts on: nothing to
        // do, and nothing to remember.
        return Ok((
            StatusCode::ACCEPTED,
            Json(WebhookReceipt {
                accepted: true,
                tasks: 0,
            }),
        ));
    };
    let outcome = state
        .store
        .accept_github_delivery(delivery, event, &target)
        .await?;
    let receipt = match outcome {
        WebhookOutcome::Duplicate => WebhookReceipt {
            accepted: false,
            tasks: 0,
        },
        WebhookOutcome::Accepted { tasks } => {
            tracing::debug!(event, delivery, tasks = tasks.len(), "webhook taken");
            WebhookReceipt {
                accepted: true,
                tasks: tasks.len(),
            }
        }
    };
    Ok((StatusCode::ACCEPTED, Json(receipt)))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC of `body`, compared in constant time.
fn signature_valid(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a delivery is about something a waiting task acts on: an answer, a review or
/// feedback from a person, CI that finished, a PR closed, merged or reopened. GitHub sends an
/// event for every step of everything (a check run created, queued, started; a PR opened,
/// pushed to, labelled; each comment mainloop itself writes), and each nudge costs the task a
/// signal in its history, a workflow task and a read of GitHub, for nothing.
fn worth_a_look(event: &str, payload: &Value) -> bool {
    let action = payload["action"].as_str().unwrap_or_default();
    match event {
        "issue_comment" | "pull_request_review_comment" => {
            matches!(action, "created" | "edited") && !by_mainloop(&payload["comment"])
        }
        "pull_request_review" => action == "submitted" && !by_mainloop(&payload["review"]),
        "pull_request" => matches!(action, "closed" | "reopened"),
        "check_suite" | "check_run" | "workflow_run" => action == "completed",
        "status" => payload["state"]
            .as_str()
            .is_some_and(|state| state != "pending"),
        _ => false,
    }
}

/// Whether a comment or review is one mainloop wrote itself (the same test the task uses
/// when it reads replies).
fn by_mainloop(written: &Value) -> bool {
    written["body"]
        .as_str()
        .is_some_and(mainloop_activities::task_text::is_own_comment)
}

/// The repository and the issues, PRs and branches a payload names.
fn target(payload: &Value) -> Option<WebhookTarget> {
    let repo = payload["repository"]["full_name"].as_str()?.to_string();
    let mut numbers = Vec::new();
    let mut branches = Vec::new();
    for number in [
        &payload["issue"]["number"],
        &payload["pull_request"]["number"],
    ] {
        numbers.extend(number.as_i64());
    }
    // CI events: check suites and runs, workflow runs, and commit statuses.
    for holder in [
        &payload["check_suite"],
        &payload["check_run"],
        &payload["check_run"]["check_suite"],
        &payload["workflow_run"],
    ] {
        for pull in holder["pull_requests"].as_array().into_iter().flatten() {
            numbers.extend(pull["number"].as_i64());
        }
        branches.extend(holder["head_branch"].as_str().map(str::to_string));
    }
    for branch in payload["branches"].as_array().into_iter().flatten() {
        branches.extend(branch["name"].as_str().map(str::to_string));
    }
    if let Some(head) = payload["pull_request"]["head"]["ref"].as_str() {
        branches.push(head.to_string());
    }
    numbers.sort_unstable();
    numbers.dedup();
    branches.sort();
    branches.dedup();
    Some(WebhookTarget {
        repo,
        numbers,
        branches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(body);
        let bytes = mac.finalize().into_bytes();
        format!(
            "sha256={}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }

    #[test]
    fn only_the_right_secret_and_body_verify() {
        let body = br#"{"zen": "Keep it logically awesome."}"#;
        let good = sign("s3cret", body);
        assert!(signature_valid("s3cret", body, &good));
        assert!(!signature_valid("other", body, &good));
        assert!(!signature_valid("s3cret", b"{}", &good));
        assert!(!signature_valid(
            "s3cret",
            body,
            &good.replace("sha256=", "sha1=")
        ));
        assert!(!signature_valid("s3cret", body, "sha256=zz"));
        assert!(!signature_valid("s3cret", body, "sha256="));
    }

    #[test]
    fn only_what_a_waiting_task_acts_on_wakes_it() {
        let person = json!({"action": "created", "comment": {"body": "Yes, use Postgres."}});
        let ours = json!({"action": "created",
            "comment": {"body": "Plan v1\n<!-- mainloop:task:t1:plan-1 -->"}});
        assert!(worth_a_look("issue_comment", &person));
        assert!(worth_a_look("pull_request_review_comment", &person));
        assert!(!worth_a_look("issue_comment", &ours));
        assert!(!worth_a_look(
            "issue_comment",
            &json!({"action": "deleted", "comment": {"body": "x"}})
        ));
        assert!(worth_a_look(
            "pull_request_review",
            &json!({"action": "submitted", "review": {"body": null}})
        ));
        assert!(!worth_a_look(
            "pull_request_review",
            &json!({"action": "dismissed", "review": {"body": "x"}})
        ));
        for (action, wakes) in [
            ("closed", true),
            ("reopened", true),
            ("opened", false),
            ("synchronize", false),
            ("ready_for_review", false),
            ("labeled", false),
        ] {
            let pull = json!({"action": action});
            assert_eq!(worth_a_look("pull_request", &pull), wakes, "{action}");
        }
        for event in ["check_suite", "check_run", "workflow_run"] {
            assert!(
                worth_a_look(event, &json!({"action": "completed"})),
                "{event}"
            );
            for action in ["created", "requested", "in_progress", "rerequested"] {
                let step = json!({"action": action});
                assert!(!worth_a_look(event, &step), "{event} {action}");
            }
        }
        assert!(worth_a_look("status", &json!({"state": "failure"})));
        assert!(!worth_a_look("status", &json!({"state": "pending"})));
        assert!(!worth_a_look("push", &json!({"ref": "refs/heads/x"})));
        assert!(!worth_a_look("issues", &json!({"action": "opened"})));
    }

    #[test]
    fn targets_are_read_from_each_kind_of_event() {
        let review = json!({
            "repository": {"full_name": "acme/web"},
            "pull_request": {"number": 13, "head": {"ref": "feature/12-x"}},
        });
        let found = target(&review).expect("target");
        assert_eq!(found.numbers, [13]);
        assert_eq!(found.branches, ["feature/12-x"]);
        let suite = json!({
            "repository": {"full_name": "acme/web"},
            "check_suite": {"head_branch": "feature/12-x", "pull_requests": [{"number": 13}]},
        });
        assert_eq!(target(&suite).expect("target").numbers, [13]);
        let status = json!({
            "repository": {"full_name": "acme/web"},
            "branches": [{"name": "feature/12-x"}],
        });
        assert_eq!(target(&status).expect("target").branches, ["feature/12-x"]);
        let comment = json!({"repository": {"full_name": "acme/web"}, "issue": {"number": 12}});
        assert_eq!(target(&comment).expect("target").numbers, [12]);
        assert!(target(&json!({"zen": "ping"})).is_none());
    }
}
