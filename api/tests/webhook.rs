//! `POST /api/github/webhook` against the real router and a real SQLite store: a delivery
//! with no, a wrong, a foreign-body or a wrong-algorithm signature is refused and changes
//! nothing (no nudge queued, its delivery id not used up); a replayed delivery id is taken
//! once; hostile bodies are refused quickly.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use mainloop_api::AuthMode;
use mainloop_store::{ConfirmOverrides, NewProposal, Store, TaskProjection, TaskStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

mod common;
use common::{Served, serve};

const SECRET: &str = "webhook-s3cret";
const USER: &str = "me";

fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("an HMAC key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A task of `acme/web` with PR 13, and nothing left in the outbox.
async fn open_task(store: &Store) -> String {
    let message = store
        .accept_user_message(USER, "k-1", "add dark mode", "main-thread/me")
        .await
        .expect("a message")
        .message;
    let reply = store
        .start_reply(USER, &message.id)
        .await
        .expect("a reply")
        .message;
    store
        .create_proposal(
            USER,
            &NewProposal {
                id: "p-1".into(),
                message_id: reply.id,
                title: "Add dark mode".into(),
                description: "Follow the system theme".into(),
                repo: "acme/web".into(),
                model: None,
                skip_planning: false,
            },
        )
        .await
        .expect("a proposal");
    let (_, task) = store
        .confirm_proposal(USER, "p-1", &ConfirmOverrides::default(), "main-thread/me")
        .await
        .expect("confirmed");
    store
        .record_task(
            USER,
            &task.id,
            &TaskProjection {
                status: Some(TaskStatus::ReadyForReview),
                detail: "ready".into(),
                pr_number: Some(13),
                branch: Some("feature/1-dark-mode".into()),
                ..TaskProjection::default()
            },
            None,
        )
        .await
        .expect("recorded");
    for item in store
        .claim_outbox("test-relay", 50, Duration::from_secs(60))
        .await
        .expect("claim")
    {
        store.outbox_delivered(item.id).await.expect("delivered");
    }
    task.id
}

struct Hook {
    served: Served,
    http: reqwest::Client,
}

impl Hook {
    async fn start(secret: Option<&str>) -> Hook {
        let served = serve(AuthMode::None, USER, |settings, _| {
            settings.webhook_secret = secret.map(Into::into);
        })
        .await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        Hook { served, http }
    }

    /// Posts `body` with `signature` (none: no header) as delivery `delivery`.
    async fn post(
        &self,
        body: &[u8],
        signature: Option<&str>,
        delivery: &str,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/github/webhook", self.served.base()))
            .header("content-type", "application/json")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", delivery)
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn backlog(&self) -> i64 {
        self.served.store.outbox_backlog().await.expect("backlog")
    }
}

fn merged() -> Vec<u8> {
    json!({
        "action": "closed",
        "repository": {"full_name": "acme/web"},
        "pull_request": {"number": 13, "merged": true, "head": {"ref": "feature/1-dark-mode"}},
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn badly_signed_deliveries_are_401_and_change_nothing() {
    let hook = Hook::start(Some(SECRET)).await;
    open_task(&hook.served.store).await;
    let body = merged();
    let good = format!("sha256={}", hex_hmac(SECRET, &body));
    let other_body = format!("sha256={}", hex_hmac(SECRET, b"{\"zen\":\"hi\"}"));
    let other_secret = format!("sha256={}", hex_hmac("not-the-secret", &body));
    let wrong_algorithm = format!("sha1={}", hex_hmac(SECRET, &body));
    let upper_prefix = format!("SHA256={}", hex_hmac(SECRET, &body));
    let truncated = good[..good.len() - 2].to_string();
    let padded = format!("{good}00");
    let bare_hex = hex_hmac(SECRET, &body);
    let cases: [(&str, Option<&str>); 9] = [
        ("missing", None),
        ("empty", Some("")),
        ("another body's", Some(&other_body)),
        ("another secret's", Some(&other_secret)),
        ("sha1 prefix", Some(&wrong_algorithm)),
        ("upper-case prefix", Some(&upper_prefix)),
        ("truncated", Some(&truncated)),
        ("padded", Some(&padded)),
        ("no prefix", Some(&bare_hex)),
    ];
    for (what, signature) in cases {
        let (status, reply) = hook.post(&body, signature, "d-refused").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {reply}");
        assert_eq!(reply["error"]["code"], "invalid_signature", "{what}");
        assert_eq!(hook.backlog().await, 0, "{what} queued a nudge");
    }
    // The signed body with a byte changed after signing.
    let mut tampered = body.clone();
    tampered[2] ^= 0x01;
    let (status, _) = hook.post(&tampered, Some(&good), "d-refused").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // None of the refusals used up the delivery id: the genuine delivery is taken.
    let (status, reply) = hook.post(&body, Some(&good), "d-refused").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(reply, json!({"accepted": true, "tasks": 1}));
    assert_eq!(hook.backlog().await, 1);
}

#[tokio::test]
async fn a_replayed_delivery_is_taken_once() {
    let hook = Hook::start(Some(SECRET)).await;
    open_task(&hook.served.store).await;
    let body = merged();
    let signature = format!("sha256={}", hex_hmac(SECRET, &body));
    let (status, reply) = hook.post(&body, Some(&signature), "d-1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(reply, json!({"accepted": true, "tasks": 1}));
    // The same delivery again, verbatim (a replay by someone who captured it, or a
    // redelivery), and the same id with another validly signed body: both do nothing.
    let (status, reply) = hook.post(&body, Some(&signature), "d-1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(reply, json!({"accepted": false, "tasks": 0}));
    let mut other: Value = serde_json::from_slice(&body).expect("json");
    other["action"] = json!("reopened");
    let other = other.to_string().into_bytes();
    let other_signature = format!("sha256={}", hex_hmac(SECRET, &other));
    let (status, reply) = hook.post(&other, Some(&other_signature), "d-1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(reply, json!({"accepted": false, "tasks": 0}));
    assert_eq!(hook.backlog().await, 1, "one nudge for one delivery");
}

#[tokio::test]
async fn hostile_signed_bodies_are_refused_quickly_and_change_nothing() {
    let hook = Hook::start(Some(SECRET)).await;
    open_task(&hook.served.store).await;
    let deep = format!(
        r#"{{"repository":{{"full_name":"acme/web"}},"x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    for (what, body) in [
        ("nested 10,000 deep", deep.into_bytes()),
        ("not JSON", b"\x00\xff not json".to_vec()),
    ] {
        let signature = format!("sha256={}", hex_hmac(SECRET, &body));
        let started = Instant::now();
        let (status, reply) = hook.post(&body, Some(&signature), "d-hostile").await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {reply}");
        assert_eq!(reply["error"]["code"], "malformed_json", "{what}");
        assert!(took < Duration::from_millis(500), "{what}: {took:?}");
        println!("figure: signed webhook {what} -> 400 in {took:?}");
    }
    assert_eq!(hook.backlog().await, 0);
}

#[tokio::test]
async fn without_a_secret_webhooks_are_404_even_when_signed() {
    let hook = Hook::start(None).await;
    let body = merged();
    // Signed with an empty key, the one an unset secret might wrongly fall back to.
    let signature = format!("sha256={}", hex_hmac("", &body));
    let (status, reply) = hook.post(&body, Some(&signature), "d-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    assert_eq!(hook.backlog().await, 0);
}
