//! Per-user isolation of every resource: alice's messages, proposals, tasks (with runs, logs
//! and inputs), inbox items, projects and events are seeded through the store; then bob, on
//! the same server, calls every route of the OpenAPI document. Lists show him none of it,
//! alice's ids answer 404 (never 403: the records do not exist for him), the event stream
//! never carries her events, his writes land in his own thread, and hers are untouched.
//!
//! The route table below must name every operation the OpenAPI document lists: a new route
//! without an isolation case fails this test.

use std::collections::BTreeSet;
use std::time::Duration;

use mainloop_api::openapi::ApiDoc;
use mainloop_api::ratelimit::{Clock, ManualClock};
use mainloop_api::{AuthMode, RateLimitSettings};
use mainloop_store::{
    ConfirmOverrides, InboxKind, NewInboxItem, NewProposal, NewTaskInput, Store, TaskProjection,
    TaskQuestion, TaskStatus,
};
use mainloop_testkit::sse::SseClient;
use reqwest::StatusCode;
use serde_json::{Value, json};
use utoipa::OpenApi;

mod common;

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "alice-secret-marker";

/// What alice owns, by id.
struct Alice {
    proposal: String,
    /// A task waiting for answers, one failed, one waiting for plan review.
    questions_task: String,
    failed_task: String,
    review_task: String,
    inbox_item: String,
    /// Every id and marker of hers that must never reach bob.
    secrets: Vec<String>,
}

async fn proposal(store: &Store, id: &str, reply_to: &str) -> anyhow::Result<()> {
    store
        .create_proposal(
            "alice",
            &NewProposal {
                id: id.into(),
                message_id: reply_to.into(),
                title: format!("{SECRET} title"),
                description: format!("{SECRET} description"),
                repo: "alice-org/alice-repo".into(),
                model: None,
                skip_planning: false,
            },
        )
        .await?;
    Ok(())
}

/// A task of alice's in `status`, with a run, log lines and an input.
async fn task(store: &Store, proposal_id: &str, status: TaskStatus) -> anyhow::Result<String> {
    let (_, task) = store
        .confirm_proposal(
            "alice",
            proposal_id,
            &ConfirmOverrides::default(),
            "main-thread/alice",
        )
        .await?;
    store
        .start_task_run("alice", &task.id, "plan-1", "plan")
        .await?;
    store
        .append_task_logs(
            "alice",
            &task.id,
            "plan-1",
            &[(1, "agent".into(), format!("{SECRET} log line"))],
        )
        .await?;
    let questions = if status == TaskStatus::WaitingQuestions {
        vec![TaskQuestion {
            id: "q1".into(),
            header: "Which".into(),
            question: format!("{SECRET} question"),
            options: Vec::new(),
            multi_select: false,
        }]
    } else {
        Vec::new()
    };
    let projection = TaskProjection {
        status: Some(status),
        detail: format!("{SECRET} detail"),
        questions,
        ..TaskProjection::default()
    };
    let item = NewInboxItem {
        id: format!("{}/{}", task.id, status.as_str()),
        kind: InboxKind::Failed,
        title: format!("{SECRET} inbox"),
        body: String::new(),
        url: None,
        resolved: false,
    };
    store
        .record_task("alice", &task.id, &projection, Some(&item))
        .await?;
    store
        .add_task_input(
            "alice",
            &task.id,
            &NewTaskInput {
                id: format!("{}-input", task.id),
                kind: "cancel",
                payload: json!({ "reason": format!("{SECRET} reason") }),
            },
            &[status],
        )
        .await?;
    Ok(task.id)
}

async fn seed_alice(store: &Store) -> anyhow::Result<Alice> {
    let asked = store
        .accept_user_message("alice", "a1", &format!("{SECRET} ask"), "main-thread/alice")
        .await?
        .message;
    let reply = store.start_reply("alice", &asked.id).await?.message;
    store
        .append_reply_text("alice", &reply.id, 1, &format!("{SECRET} reply"))
        .await?;
    for id in [
        "alice-p-open",
        "alice-p-q",
        "alice-p-failed",
        "alice-p-review",
    ] {
        proposal(store, id, &reply.id).await?;
    }
    let questions_task = task(store, "alice-p-q", TaskStatus::WaitingQuestions).await?;
    let failed_task = task(store, "alice-p-failed", TaskStatus::Failed).await?;
    let review_task = task(store, "alice-p-review", TaskStatus::WaitingPlanReview).await?;
    let inbox_item = format!("{failed_task}/failed");
    let secrets = vec![
        SECRET.to_string(),
        "alice".to_string(),
        asked.id.clone(),
        reply.id.clone(),
        questions_task.clone(),
        failed_task.clone(),
        review_task.clone(),
    ];
    Ok(Alice {
        proposal: "alice-p-open".into(),
        questions_task,
        failed_task,
        review_task,
        inbox_item,
        secrets,
    })
}

/// Every (method, path template) in the OpenAPI document, and the document itself.
fn documented_operations() -> BTreeSet<(String, String)> {
    let document = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations.insert(("GET".into(), "/api/openapi.json".into()));
    operations
}

/// What bob must see on each route.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200, and nothing of alice's in the body.
    Clean,
    /// 404 `not_found`, nothing of alice's in the body.
    NotFound,
    /// Bob's own write: accepted, and only bob's records change (checked after the table).
    Own,
    /// The event stream (checked on its own below).
    Stream,
    /// No user data behind it (health, documents, session, login, webhook); still nothing of
    /// alice's may appear.
    Public,
}

/// Every documented operation, with the path bob calls (alice's ids filled in).
fn cases(alice: &Alice) -> Vec<(&'static str, &'static str, String, Expect)> {
    let task = |t: &str, rest: &str| format!("/api/tasks/{t}{rest}");
    vec![
        (
            "GET",
            "/api/messages",
            "/api/messages".into(),
            Expect::Clean,
        ),
        ("POST", "/api/messages", "/api/messages".into(), Expect::Own),
        (
            "POST",
            "/api/proposals/{id}/reject",
            format!("/api/proposals/{}/reject", alice.proposal),
            Expect::NotFound,
        ),
        (
            "POST",
            "/api/proposals/{id}/confirm",
            format!("/api/proposals/{}/confirm", alice.proposal),
            Expect::NotFound,
        ),
        ("GET", "/api/tasks", "/api/tasks".into(), Expect::Clean),
        (
            "GET",
            "/api/tasks/{id}",
            task(&alice.failed_task, ""),
            Expect::NotFound,
        ),
        (
            "GET",
            "/api/tasks/{id}/logs",
            task(&alice.failed_task, "/logs"),
            Expect::NotFound,
        ),
        (
            "POST",
            "/api/tasks/{id}/answer",
            task(&alice.questions_task, "/answer"),
            Expect::NotFound,
        ),
        (
            "POST",
            "/api/tasks/{id}/review-plan",
            task(&alice.review_task, "/review-plan"),
            Expect::NotFound,
        ),
        (
            "POST",
            "/api/tasks/{id}/retry",
            task(&alice.failed_task, "/retry"),
            Expect::NotFound,
        ),
        (
            "POST",
            "/api/tasks/{id}/budget",
            task(&alice.review_task, "/budget"),
            Expect::NotFound,
        ),
        (
            "POST",
            "/api/tasks/{id}/cancel",
            task(&alice.review_task, "/cancel"),
            Expect::NotFound,
        ),
        ("GET", "/api/inbox", "/api/inbox".into(), Expect::Clean),
        (
            "POST",
            "/api/inbox/read-all",
            "/api/inbox/read-all".into(),
            Expect::Own,
        ),
        (
            "POST",
            "/api/inbox/{id}/read",
            format!("/api/inbox/{}/read", alice.inbox_item),
            Expect::NotFound,
        ),
        (
            "GET",
            "/api/projects",
            "/api/projects".into(),
            Expect::Clean,
        ),
        ("GET", "/api/events", "/api/events".into(), Expect::Stream),
        ("GET", "/api/config", "/api/config".into(), Expect::Clean),
        ("GET", "/api/session", "/api/session".into(), Expect::Clean),
        ("POST", "/api/login", "/api/login".into(), Expect::Public),
        ("POST", "/api/logout", "/api/logout".into(), Expect::Public),
        ("GET", "/healthz", "/healthz".into(), Expect::Public),
        ("GET", "/readyz", "/readyz".into(), Expect::Public),
        (
            "GET",
            "/api/openapi.json",
            "/api/openapi.json".into(),
            Expect::Public,
        ),
        (
            "POST",
            "/api/github/webhook",
            "/api/github/webhook".into(),
            Expect::Public,
        ),
    ]
}

/// A body each POST accepts when the record is the caller's, so a 404 can only mean "not
/// yours".
fn body_for(template: &str) -> Value {
    match template {
        "/api/messages" => json!({ "content": "bob's own message" }),
        "/api/tasks/{id}/answer" => json!({ "answers": { "q1": "yes" } }),
        "/api/tasks/{id}/review-plan" => json!({ "action": "approve" }),
        "/api/tasks/{id}/budget" => json!({ "raise_tokens": 1000 }),
        "/api/login" => json!({ "token": "whatever" }),
        _ => json!({}),
    }
}

fn assert_clean(text: &str, alice: &Alice, what: &str) {
    for secret in &alice.secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} shows bob alice's {secret:?}: {text}"
        );
    }
}

#[tokio::test]
async fn bob_sees_and_touches_nothing_of_alices() -> anyhow::Result<()> {
    let served = common::serve(AuthMode::Tailscale { proxies: vec![] }, "me", |_, _| {}).await;
    let store = served.store.clone();
    let alice = seed_alice(&store).await?;
    let alice_events_before = store.events_after("alice", 0, 1000).await?.len();
    let alice_outbox_before = usize::try_from(store.outbox_backlog().await?)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()?;
    let as_bob = |method: &str, path: &str| {
        let url = format!("{}{path}", served.base());
        let request = match method {
            "GET" => http.get(url),
            _ => http.post(url),
        };
        request.header("tailscale-user-login", "bob")
    };

    // Every operation documented has a case, and no case is for an undocumented one.
    let table = cases(&alice);
    let covered: BTreeSet<(String, String)> = table
        .iter()
        .map(|(method, template, _, _)| (method.to_string(), template.to_string()))
        .collect();
    assert_eq!(
        covered,
        documented_operations(),
        "every route needs an isolation case (and every case a route)"
    );

    // Bob's event stream, replaying everything: it must carry none of alice's events.
    let mut events = SseClient::connect(
        &format!("{}/api/events?after=0", served.base()),
        &[("tailscale-user-login", "bob")],
        None,
    )
    .await?;

    for (method, template, path, expect) in &table {
        if matches!(expect, Expect::Stream) {
            continue;
        }
        let mut request = as_bob(method, path);
        if *method == "POST" {
            request = request.json(&body_for(template));
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let what = format!("{method} {path}");
        assert_clean(&text, &alice, &what);
        if *method == "GET" && *template == "/api/messages" {
            // Not even how much alice has done: bob's stream position counts only his events.
            let page: Value = serde_json::from_str(&text)?;
            assert_eq!(page["last_event_id"], 0, "{text}");
        }
        match expect {
            Expect::Clean => assert_eq!(status, StatusCode::OK, "{what}: {text}"),
            Expect::NotFound => {
                assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {text}");
                let body: Value = serde_json::from_str(&text)?;
                assert_eq!(body["error"]["code"], "not_found", "{what}");
            }
            Expect::Own => assert!(status.is_success(), "{what}: {status} {text}"),
            Expect::Stream | Expect::Public => {}
        }
    }

    // Bob's message went to his own thread.
    let bobs = store.list_messages("bob", None, 10).await?;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].content, "bob's own message");
    let outbox = store
        .claim_outbox("test-relay", 100, Duration::from_secs(60))
        .await?;
    let bob_items: Vec<_> = outbox.iter().filter(|i| i.user_id == "bob").collect();
    assert_eq!(bob_items.len(), 1, "{outbox:?}");
    assert_eq!(bob_items[0].workflow_id, "main-thread/bob");
    // Nothing bob did queued anything but his own message.
    assert_eq!(outbox.len(), alice_outbox_before + 1, "{outbox:?}");
    // Alice's records are as she left them.
    assert_eq!(
        store.get_proposal("alice", &alice.proposal).await?.status,
        mainloop_store::ProposalStatus::Pending
    );
    for id in [
        &alice.questions_task,
        &alice.failed_task,
        &alice.review_task,
    ] {
        assert_eq!(store.task_inputs("alice", id).await?.len(), 1, "{id}");
    }
    let inbox = store.list_inbox("alice", 100).await?;
    assert!(!inbox.is_empty());
    assert!(inbox.iter().all(|item| item.unread), "{inbox:?}");
    assert_eq!(store.list_messages("alice", None, 10).await?.len(), 2);

    // The stream: a live event of alice's, then one of bob's; bob sees only his.
    store
        .accept_user_message(
            "alice",
            "a2",
            &format!("{SECRET} live"),
            "main-thread/alice",
        )
        .await?;
    store
        .accept_user_message("bob", "b-last", "bob's last", "main-thread/bob")
        .await?;
    let seen = events
        .collect_until(WAIT, |event| event.data.contains("bob's last"))
        .await?;
    for event in &seen {
        assert_clean(&event.data, &alice, "the event stream");
    }
    assert!(seen.len() >= 2, "bob's message events: {seen:?}");
    assert_eq!(
        store.events_after("alice", 0, 1000).await?.len(),
        alice_events_before + 1
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Rate limits, per identity
// ---------------------------------------------------------------------------------------

/// A limit of 3 at once, refilled at one a minute, on a clock the test moves.
async fn limited() -> (common::Served, ManualClock) {
    let (clock, hand) = Clock::manual();
    let served = common::serve(
        AuthMode::Tailscale { proxies: vec![] },
        "me",
        |settings, _| {
            settings.rate_limit = RateLimitSettings {
                per_minute: 1,
                burst: 3,
                clock,
            };
        },
    )
    .await;
    (served, hand)
}

async fn get_as(http: &reqwest::Client, served: &common::Served, user: &str) -> reqwest::Response {
    http.get(format!("{}/api/tasks", served.base()))
        .header("tailscale-user-login", user)
        .send()
        .await
        .expect("GET")
}

#[tokio::test]
async fn each_user_has_their_own_budget_and_it_refills() -> anyhow::Result<()> {
    let (served, hand) = limited().await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()?;
    for _ in 0..3 {
        assert_eq!(
            get_as(&http, &served, "alice").await.status(),
            StatusCode::OK
        );
    }
    let refused = get_as(&http, &served, "alice").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(retry_after, Some(60));
    let body: Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited");
    // Bob is not slowed down by alice.
    assert_eq!(get_as(&http, &served, "bob").await.status(), StatusCode::OK);
    // Writes count too, and a refused one stores nothing.
    let post = http
        .post(format!("{}/api/messages", served.base()))
        .header("tailscale-user-login", "alice")
        .json(&json!({ "content": "x" }))
        .send()
        .await?;
    assert_eq!(post.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        served
            .store
            .list_messages("alice", None, 10)
            .await?
            .is_empty()
    );
    // Almost a minute is not enough; a minute is.
    hand.advance(Duration::from_secs(59));
    assert_eq!(
        get_as(&http, &served, "alice").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    hand.advance(Duration::from_secs(1));
    assert_eq!(
        get_as(&http, &served, "alice").await.status(),
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn an_event_stream_costs_one_request_however_long_it_runs() -> anyhow::Result<()> {
    let (served, _hand) = limited().await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()?;
    let mut stream = SseClient::connect(
        &format!("{}/api/events", served.base()),
        &[("tailscale-user-login", "alice")],
        None,
    )
    .await?;
    for n in 0..5 {
        served
            .store
            .accept_user_message(
                "alice",
                &format!("k{n}"),
                &format!("hi {n}"),
                "main-thread/alice",
            )
            .await?;
    }
    let events = stream
        .collect_until(WAIT, |e| {
            e.event == "message.created" && e.data.contains("hi 4")
        })
        .await?;
    assert_eq!(events.len(), 5);
    // The stream took one of three; two requests are left.
    assert_eq!(
        get_as(&http, &served, "alice").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as(&http, &served, "alice").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as(&http, &served, "alice").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    Ok(())
}

#[tokio::test]
async fn unauthenticated_requests_are_limited_by_address() -> anyhow::Result<()> {
    let (served, _hand) = limited().await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()?;
    // Failed authentication costs the address: guessing stops at the burst.
    for _ in 0..3 {
        assert_eq!(
            http.get(format!("{}/api/tasks", served.base()))
                .send()
                .await?
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = http
        .get(format!("{}/api/tasks", served.base()))
        .send()
        .await?;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    // So do logins and webhook deliveries, which have no user.
    for path in ["/api/login", "/api/github/webhook"] {
        let response = http
            .post(format!("{}{path}", served.base()))
            .json(&json!({ "token": "x" }))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
    }
    // An authenticated user behind the same address still has their own budget; health
    // checks are never limited.
    assert_eq!(
        get_as(&http, &served, "carol").await.status(),
        StatusCode::OK
    );
    for _ in 0..10 {
        let health = http
            .get(format!("{}/healthz", served.base()))
            .send()
            .await?;
        assert_eq!(health.status(), StatusCode::OK);
    }
    Ok(())
}
