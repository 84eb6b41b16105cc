//! The main thread as a user sees it: streamed replies, idempotent posting, proposals, model
//! errors, and robustness to bad signals.

use std::time::Duration;

use anyhow::Result;
use mainloop_store::{MessageKind, Role};
use mainloop_testkit::anthropic::Reply;
use serde_json::json;

use crate::harness::{
    Stack, WAIT, asked, assert_one_reply_each, chat_requests, is_assistant_completion, replies_to,
    streamed_deltas,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_message_streams_over_sse_and_ends_as_one_stored_reply() -> Result<()> {
    let stack = Stack::start().await?;
    let text = "Hello! This reply arrives token by token, in several pieces.";
    stack.anthropic.push(
        Reply::text(text)
            .with_token_delay(Duration::from_millis(30))
            .with_usage(1_000, 200)
            .with_cache_usage(4_000, 10_000),
    );
    let mut events = stack.events(stack.last_event_id().await?).await?;
    let posted = stack.post("hi there", "k-1").await?;
    assert_eq!(posted["role"], "user");
    assert_eq!(posted["content"], "hi there");

    let received = events.collect_until(WAIT, is_assistant_completion).await?;
    let kinds: Vec<&str> = received.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message.created"));
    assert!(kinds.contains(&"message.started"), "{kinds:?}");
    let deltas = streamed_deltas(&received)?;
    assert!(deltas.len() >= 2, "the reply was not streamed: {deltas:?}");
    assert_eq!(deltas.concat(), text);
    let ids: Vec<i64> = received
        .iter()
        .map(|e| e.id_number())
        .collect::<Result<_>>()?;
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids out of order: {ids:?}"
    );
    let completed = received
        .last()
        .map(|e| e.json())
        .transpose()?
        .unwrap_or_default();
    assert_eq!(completed["content"], text);
    assert_eq!(completed["reply_to"], posted["id"]);
    assert_eq!(completed["usage"]["model"], "claude-haiku-4-5");
    // What the turn cost, at Haiku 4.5's list price: input, output, cache writes and reads.
    assert_eq!(completed["usage"]["input_tokens"], 1_000);
    assert_eq!(completed["usage"]["output_tokens"], 200);
    assert_eq!(completed["usage"]["cache_tokens"], 14_000);
    let cost = completed["usage"]["cost_usd"].as_f64().unwrap_or_default();
    let expected = (1_000.0 * 1.0 + 200.0 * 5.0 + 4_000.0 * 1.25 + 10_000.0 * 0.1) / 1e6;
    assert!((cost - expected).abs() < 1e-9, "{cost} != {expected}");

    let thread = stack.thread().await?;
    assert_eq!(thread.len(), 2);
    assert_one_reply_each(&thread);
    let requests = chat_requests(&stack.anthropic);
    assert_eq!(requests.len(), 1);
    assert!(requests[0].is_streaming());
    assert_eq!(requests[0].last_user_text().as_deref(), Some("hi there"));
    assert_eq!(requests[0].tool_names(), ["propose_task"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_stores_one_message_and_runs_one_turn() -> Result<()> {
    let stack = Stack::start().await?;
    let (first, second) = tokio::join!(
        stack.post("once", "same-key"),
        stack.post("once", "same-key")
    );
    let (first, second) = (first?, second?);
    assert_eq!(first["id"], second["id"]);
    let third = stack.post("once", "same-key").await?;
    assert_eq!(first["id"], third["id"]);
    // A later message: its turn runs after any turn a duplicate could have caused.
    stack.post("sentinel", "other-key").await?;
    let thread = stack.wait_for_replies(2, WAIT).await?;
    assert_eq!(thread.len(), 4, "{thread:#?}");
    assert_one_reply_each(&thread);
    let texts: Vec<_> = asked(&stack.anthropic);
    assert_eq!(texts, ["once", "sentinel"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proposal_is_stored_shown_and_can_be_rejected() -> Result<()> {
    let stack = Stack::start().await?;
    stack.anthropic.push(
        Reply::tool_use(
            "propose_task",
            json!({
                "title": "Add dark mode",
                "description": "Follow the system theme; add a toggle in settings.",
                "repo": "https://github.com/acme/web"
            }),
        )
        .with_text("I'll set that up."),
    );
    stack.anthropic.push(Reply::text(
        "Proposed: dark mode for acme/web. Confirm it to start.",
    ));
    let mut events = stack.events(0).await?;
    stack.post("Add dark mode to acme/web please", "k").await?;
    let received = events.collect_until(WAIT, is_assistant_completion).await?;
    let created: Vec<_> = received
        .iter()
        .filter(|e| e.event == "proposal.created")
        .collect();
    assert_eq!(created.len(), 1);
    let completed = received
        .last()
        .map(|e| e.json())
        .transpose()?
        .unwrap_or_default();
    assert_eq!(
        completed["content"],
        "I'll set that up.\n\nProposed: dark mode for acme/web. Confirm it to start."
    );
    let proposal = &completed["proposals"][0];
    assert_eq!(proposal["repo"], "acme/web");
    assert_eq!(proposal["status"], "pending");
    assert_eq!(proposal["title"], "Add dark mode");

    // The model got the tool's result and continued.
    let requests = chat_requests(&stack.anthropic);
    assert_eq!(requests.len(), 2);
    let follow_up = requests[1].body.to_string();
    assert!(follow_up.contains("tool_result"), "{follow_up}");
    assert!(follow_up.contains("Nothing runs until they press Confirm"));

    let id = proposal["id"].as_str().unwrap_or_default();
    let http = reqwest::Client::new();
    let rejected = http
        .post(stack.url(&format!("/api/proposals/{id}/reject")))
        .send()
        .await?;
    assert_eq!(rejected.status(), 200);
    let rejected: serde_json::Value = rejected.json().await?;
    assert_eq!(rejected["status"], "rejected");
    let again = http
        .post(stack.url(&format!("/api/proposals/{id}/reject")))
        .send()
        .await?;
    assert_eq!(again.status(), 409);
    let update = events
        .collect_until(WAIT, |e| e.event == "proposal.updated")
        .await?;
    assert_eq!(
        update
            .last()
            .map(|e| e.json())
            .transpose()?
            .unwrap_or_default()["status"],
        "rejected"
    );

    // The next turn tells the model what became of its proposal.
    stack.post("ok, never mind", "k2").await?;
    stack.wait_for_replies(2, WAIT).await?;
    let last = chat_requests(&stack.anthropic)
        .pop()
        .map(|r| r.all_text())
        .unwrap_or_default();
    assert!(last.contains("rejected by the user"), "{last}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn model_errors_are_retried_and_permanent_ones_become_a_visible_error() -> Result<()> {
    let stack = Stack::start_with(&[
        ("MAINLOOP_MODEL_IDLE_TIMEOUT", "1s"),
        ("MAINLOOP_TURN_RETRY_ATTEMPTS", "8"),
    ])
    .await?;
    // Transient: rate limited, overloaded, failing mid-stream, the connection dropped, the
    // model going silent; the sixth call works.
    stack
        .anthropic
        .push(Reply::error(429, "rate_limit_error", "slow down").retry_after(0));
    stack.anthropic.push(Reply::overloaded());
    stack
        .anthropic
        .push(Reply::stream_error_after(3, "overloaded_error"));
    stack.anthropic.push(Reply::hang_up_after(2));
    stack
        .anthropic
        .push(Reply::text("too late").with_first_token_delay(Duration::from_secs(3)));
    stack.anthropic.push(Reply::text("Finally, an answer."));
    let first = stack.post("are you there?", "k1").await?;
    let thread = stack.wait_for_replies(1, WAIT).await?;
    let reply = replies_to(&thread, first["id"].as_str().unwrap_or_default());
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].kind, MessageKind::Chat, "{}", reply[0].content);
    assert_eq!(reply[0].content, "Finally, an answer.");
    assert_eq!(chat_requests(&stack.anthropic).len(), 6);

    // Permanent: the API refuses the key. The turn ends in a visible error, not a silence.
    stack.anthropic.push(Reply::error(
        401,
        "authentication_error",
        "invalid x-api-key",
    ));
    let second = stack.post("and now?", "k2").await?;
    let thread = stack.wait_for_replies(2, WAIT).await?;
    let reply = replies_to(&thread, second["id"].as_str().unwrap_or_default());
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].kind, MessageKind::Error);
    assert!(reply[0].content.contains("refused"), "{}", reply[0].content);
    assert!(reply[0].content.contains("authentication_error"));
    assert_eq!(
        chat_requests(&stack.anthropic).len(),
        7,
        "a permanent error is not retried"
    );

    // The thread goes on, and the unanswered message stays in the model's context.
    stack.post("third time", "k3").await?;
    let thread = stack.wait_for_replies(3, WAIT).await?;
    let last = thread.last().map(|m| (m.kind, m.content.clone()));
    assert_eq!(
        last,
        Some((MessageKind::Chat, "Echo: and now?\nthird time".to_string()))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_signals_are_ignored_visibly_and_never_jam_the_thread() -> Result<()> {
    let stack = Stack::start().await?;
    stack.post("first", "k1").await?;
    stack.wait_for_replies(1, WAIT).await?;
    let mut events = stack.events(stack.last_event_id().await?).await?;
    for input in [
        r#"{"bogus": 1}"#,
        r#""just a string""#,
        r#"{"message_id": ""}"#,
        r#"{"message_id": "no-such-message"}"#,
    ] {
        stack.signal("message", Some(input)).await?;
    }
    stack.signal("message", None).await?;
    let mut notices = Vec::new();
    events
        .collect_until(WAIT, |e| {
            if e.event == "thread.notice" {
                notices.push(e.data.clone());
            }
            notices.len() == 5
        })
        .await?;
    assert!(
        notices.iter().all(|n| n.contains("Ignored")),
        "{notices:#?}"
    );
    // The thread still answers.
    stack.post("still there?", "k2").await?;
    let thread = stack.wait_for_replies(2, WAIT).await?;
    assert_one_reply_each(&thread);
    assert_eq!(thread.iter().filter(|m| m.role == Role::User).count(), 2);
    Ok(())
}
