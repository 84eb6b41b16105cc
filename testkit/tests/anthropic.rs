//! The fake Anthropic API over real HTTP: wire shapes, validation, scripting and recording.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use mainloop_testkit::anthropic::{FakeAnthropic, Reply, StopReason};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);
const MODEL: &str = "claude-sonnet-4-5";

fn request(text: &str) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
    })
}

fn streaming(text: &str) -> Value {
    let mut body = request(text);
    body["stream"] = json!(true);
    body
}

fn propose_task_tool() -> Value {
    json!({
        "name": "propose_task",
        "description": "Propose a task",
        "input_schema": {
            "type": "object",
            "properties": {"title": {"type": "string"}},
            "required": ["title"],
        },
    })
}

/// A POST with the headers a well-behaved client sends.
fn post(fake: &FakeAnthropic, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}{path}", fake.base_url()))
        .header("x-api-key", fake.api_key())
        .header("anthropic-version", "2023-06-01")
}

async fn send(fake: &FakeAnthropic, body: &Value) -> anyhow::Result<reqwest::Response> {
    Ok(post(fake, "/v1/messages").json(body).send().await?)
}

/// The `(event, data)` pairs of a complete SSE response.
async fn events(response: reqwest::Response) -> anyhow::Result<Vec<(String, Value)>> {
    ensure!(response.status() == 200, "status {}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        content_type.starts_with("text/event-stream"),
        "content-type {content_type}"
    );
    let mut stream = response.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event?;
        let data: Value = serde_json::from_str(&event.data)?;
        ensure!(
            data["type"] == event.event.as_str(),
            "data type {} under event {}",
            data["type"],
            event.event
        );
        out.push((event.event, data));
    }
    Ok(out)
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

fn text_deltas(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(_, data)| data["delta"]["type"] == "text_delta")
        .filter_map(|(_, data)| data["delta"]["text"].as_str())
        .collect()
}

async fn error_of(response: reqwest::Response) -> anyhow::Result<(u16, String, String)> {
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await?;
    ensure!(body["type"] == "error", "not an error body: {body}");
    ensure!(
        body["request_id"].as_str() == request_id.as_deref(),
        "request_id {} does not match header {request_id:?}",
        body["request_id"]
    );
    let kind = body["error"]["type"]
        .as_str()
        .context("error.type")?
        .to_owned();
    let message = body["error"]["message"]
        .as_str()
        .context("error.message")?
        .to_owned();
    Ok((status, kind, message))
}

#[tokio::test]
async fn streams_text_as_the_real_event_sequence() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    fake.push(Reply::text("Hello there, how are you doing today?"));

    let response = send(&fake, &streaming("Hi")).await?;
    ensure!(
        response
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|id| id.starts_with("req_")),
        "request-id header"
    );
    let events = events(response).await?;
    let names = names(&events);
    ensure!(
        names[..3] == ["message_start", "content_block_start", "ping"],
        "{names:?}"
    );
    ensure!(
        names[names.len() - 3..] == ["content_block_stop", "message_delta", "message_stop"],
        "{names:?}"
    );
    ensure!(
        names[3..names.len() - 3]
            .iter()
            .all(|n| *n == "content_block_delta"),
        "{names:?}"
    );
    ensure!(names.len() - 6 > 1, "text should arrive in several deltas");
    ensure!(text_deltas(&events) == "Hello there, how are you doing today?");

    let start = &events[0].1["message"];
    ensure!(
        start["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("msg_"))
    );
    ensure!(start["model"] == MODEL);
    ensure!(start["role"] == "assistant" && start["type"] == "message");
    ensure!(start["content"] == json!([]) && start["stop_reason"].is_null());
    ensure!(
        start["usage"]["input_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    ensure!(events[1].1["content_block"] == json!({"type": "text", "text": ""}));
    let delta = &events[events.len() - 2].1;
    ensure!(delta["delta"]["stop_reason"] == "end_turn");
    ensure!(
        delta["usage"]["output_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    Ok(())
}

#[tokio::test]
async fn streams_tool_use_as_input_json_deltas() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    let input = json!({"title": "Fix the flaky test", "details": {"files": ["a.rs", "b.rs"], "priority": 2}});
    let reply = Reply::tool_use("propose_task", input.clone()).with_text("Let me propose that.");
    let ids = reply.tool_use_ids();
    fake.push(reply);

    let mut body = streaming("Propose a task");
    body["tools"] = json!([propose_task_tool()]);
    let events = events(send(&fake, &body).await?).await?;

    ensure!(text_deltas(&events) == "Let me propose that.");
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "content_block_start")
        .map(|(_, data)| data)
        .collect();
    ensure!(starts.len() == 2, "{starts:?}");
    let tool = &starts[1]["content_block"];
    ensure!(tool["type"] == "tool_use" && tool["name"] == "propose_task");
    ensure!(tool["id"].as_str() == ids.first().map(String::as_str));
    ensure!(
        tool["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("toolu_"))
    );
    ensure!(tool["input"] == json!({}));

    let partial: Vec<&str> = events
        .iter()
        .filter(|(_, data)| data["index"] == 1 && data["delta"]["type"] == "input_json_delta")
        .filter_map(|(_, data)| data["delta"]["partial_json"].as_str())
        .collect();
    ensure!(partial.len() > 2, "input should arrive in several chunks");
    let assembled: Value = serde_json::from_str(&partial.concat())?;
    ensure!(assembled == input);

    let delta = events
        .iter()
        .find(|(name, _)| name == "message_delta")
        .context("message_delta")?;
    ensure!(delta.1["delta"]["stop_reason"] == "tool_use");
    Ok(())
}

#[tokio::test]
async fn answers_non_streaming_requests_with_a_message() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    fake.push(
        Reply::tool_use("propose_task", json!({"title": "x"}))
            .with_text("Sure.")
            .with_usage(123, 45),
    );
    let response = send(&fake, &request("Go")).await?;
    ensure!(response.status() == 200);
    let message: Value = response.json().await?;
    ensure!(message["type"] == "message" && message["role"] == "assistant");
    ensure!(message["model"] == MODEL);
    ensure!(
        message["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("msg_"))
    );
    ensure!(message["stop_reason"] == "tool_use" && message["stop_sequence"].is_null());
    ensure!(message["content"][0] == json!({"type": "text", "text": "Sure."}));
    ensure!(message["content"][1]["type"] == "tool_use");
    ensure!(message["content"][1]["input"] == json!({"title": "x"}));
    ensure!(message["usage"]["input_tokens"] == 123 && message["usage"]["output_tokens"] == 45);

    fake.push(Reply::text("Truncated").with_stop_reason(StopReason::MaxTokens));
    let message: Value = send(&fake, &request("Go on")).await?.json().await?;
    ensure!(message["stop_reason"] == "max_tokens");
    Ok(())
}

#[tokio::test]
async fn counts_tokens() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello, world"}]});
    let response = post(&fake, "/v1/messages/count_tokens")
        .json(&body)
        .send()
        .await?;
    ensure!(response.status() == 200);
    let counted: Value = response.json().await?;
    ensure!(
        counted["input_tokens"].as_u64().is_some_and(|n| n > 0),
        "{counted}"
    );

    // max_tokens belongs to generation, not to counting.
    let response = post(&fake, "/v1/messages/count_tokens")
        .json(&request("Hello"))
        .send()
        .await?;
    let (status, _, message) = error_of(response).await?;
    ensure!(status == 400 && message == "max_tokens: Extra inputs are not permitted");
    ensure!(fake.pending_replies() == 0);
    Ok(())
}

#[tokio::test]
async fn authenticates_with_the_api_key_or_the_oauth_token() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());

    let missing = client
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .json(&request("Hi"))
        .send()
        .await?;
    let (status, kind, _) = error_of(missing).await?;
    ensure!(status == 401 && kind == "authentication_error");

    let wrong = client
        .post(&url)
        .header("x-api-key", "sk-wrong")
        .header("anthropic-version", "2023-06-01")
        .json(&request("Hi"))
        .send()
        .await?;
    let (status, kind, _) = error_of(wrong).await?;
    ensure!(status == 401 && kind == "authentication_error");

    let wrong_bearer = client
        .post(&url)
        .bearer_auth("not-the-token")
        .header("anthropic-version", "2023-06-01")
        .json(&request("Hi"))
        .send()
        .await?;
    ensure!(wrong_bearer.status() == 401);

    let bearer = client
        .post(format!("{url}?beta=true"))
        .bearer_auth(fake.oauth_token())
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "oauth-2025-04-20")
        .json(&request("Hi"))
        .send()
        .await?;
    ensure!(bearer.status() == 200);
    let message: Value = bearer.json().await?;
    ensure!(message["content"][0]["text"] == "Echo: Hi");

    let recorded = fake.requests();
    ensure!(recorded.iter().map(|r| r.status).collect::<Vec<_>>() == [401, 401, 401, 200]);
    ensure!(
        recorded[3].path == "/v1/messages" && recorded[3].query.as_deref() == Some("beta=true")
    );
    ensure!(recorded[3].header("Anthropic-Beta") == Some("oauth-2025-04-20"));
    Ok(())
}

#[tokio::test]
async fn custom_credentials_are_configurable() -> anyhow::Result<()> {
    let fake = FakeAnthropic::builder()
        .api_key("sk-custom")
        .oauth_token("oauth-custom")
        .start()
        .await?;
    ensure!(fake.api_key() == "sk-custom" && fake.oauth_token() == "oauth-custom");
    ensure!(send(&fake, &request("Hi")).await?.status() == 200);
    Ok(())
}

#[tokio::test]
async fn rejects_bad_headers_and_bodies() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    fake.push(Reply::text("kept for the valid request"));
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", fake.base_url());

    let no_version = client
        .post(&url)
        .header("x-api-key", fake.api_key())
        .json(&request("Hi"))
        .send()
        .await?;
    let (status, kind, message) = error_of(no_version).await?;
    ensure!(
        status == 400 && kind == "invalid_request_error",
        "{message}"
    );
    ensure!(message.contains("anthropic-version"), "{message}");

    let bad_json = post(&fake, "/v1/messages")
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await?;
    let (status, kind, _) = error_of(bad_json).await?;
    ensure!(status == 400 && kind == "invalid_request_error");

    let not_json = post(&fake, "/v1/messages")
        .header("content-type", "text/plain")
        .body(request("Hi").to_string())
        .send()
        .await?;
    ensure!(error_of(not_json).await?.0 == 400);

    let not_found = post(&fake, "/v1/complete")
        .json(&request("Hi"))
        .send()
        .await?;
    let (status, kind, _) = error_of(not_found).await?;
    ensure!(status == 404 && kind == "not_found_error");

    ensure!(send(&fake, &request("Hi")).await?.status() == 200);
    let recorded = fake.requests();
    ensure!(recorded.iter().map(|r| r.status).collect::<Vec<_>>() == [400, 400, 400, 404, 200]);
    ensure!(
        recorded[1].body.is_null(),
        "unparseable bodies are recorded as null"
    );
    ensure!(
        recorded[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("anthropic-version"))
    );
    Ok(())
}

/// Each case is a request body and a fragment of the message the real API answers with.
#[tokio::test]
async fn rejects_what_the_real_api_rejects() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    let tool_use =
        json!({"type": "tool_use", "id": "toolu_1", "name": "propose_task", "input": {}});
    let tool_result = json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"});
    let mut unknown_field = request("Hi");
    unknown_field["frobnicate"] = json!(true);
    let mut no_max_tokens = request("Hi");
    no_max_tokens
        .as_object_mut()
        .context("object")?
        .remove("max_tokens");
    let mut zero_max_tokens = request("Hi");
    zero_max_tokens["max_tokens"] = json!(0);
    let mut bad_tool_name = request("Hi");
    bad_tool_name["tools"] = json!([{"name": "has space", "input_schema": {"type": "object"}}]);
    let mut duplicate_tools = request("Hi");
    duplicate_tools["tools"] = json!([propose_task_tool(), propose_task_tool()]);
    let mut schema_not_object = request("Hi");
    schema_not_object["tools"] = json!([{"name": "t", "input_schema": {"type": "string"}}]);

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown field",
            unknown_field,
            "frobnicate: Extra inputs are not permitted",
        ),
        (
            "missing max_tokens",
            no_max_tokens,
            "max_tokens: Field required",
        ),
        (
            "zero max_tokens",
            zero_max_tokens,
            "max_tokens: Input should be greater than or equal to 1",
        ),
        (
            "missing model",
            json!({"max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}),
            "model: Field required",
        ),
        (
            "empty messages",
            json!({"model": MODEL, "max_tokens": 10, "messages": []}),
            "messages",
        ),
        (
            "bad role",
            json!({"model": MODEL, "max_tokens": 10, "messages": [{"role": "system", "content": "Hi"}]}),
            "messages.0.role",
        ),
        (
            "unknown block type",
            json!({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
            "Input tag 'video'",
        ),
        (
            "first message from the assistant",
            json!({"model": MODEL, "max_tokens": 10, "messages": [
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Hi"},
            ]}),
            "first message must use the \"user\" role",
        ),
        (
            "tool_result without a tool_use",
            json!({"model": MODEL, "max_tokens": 10, "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": [tool_result]},
            ]}),
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_1",
        ),
        (
            "unanswered tool_use",
            json!({"model": MODEL, "max_tokens": 10, "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [tool_use]},
                {"role": "user", "content": "never mind"},
            ]}),
            "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
        ),
        (
            "tool_result after text",
            json!({"model": MODEL, "max_tokens": 10, "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [tool_use]},
                {"role": "user", "content": [{"type": "text", "text": "here"}, tool_result]},
            ]}),
            "Did not find 1 tool_result block(s) at the beginning",
        ),
        (
            "empty text block",
            json!({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}),
            "text content blocks must be non-empty",
        ),
        (
            "invalid tool name",
            bad_tool_name,
            "tools.0.custom.name: String should match pattern",
        ),
        (
            "duplicate tool names",
            duplicate_tools,
            "Tool names must be unique",
        ),
        (
            "input_schema not an object schema",
            schema_not_object,
            "input_schema.type",
        ),
    ];

    let mut expected_log = 0;
    for (case, body, fragment) in cases {
        let (status, kind, message) = error_of(send(&fake, &body).await?).await?;
        ensure!(
            status == 400 && kind == "invalid_request_error",
            "{case}: {status} {kind} {message}"
        );
        ensure!(
            message.contains(fragment),
            "{case}: {message:?} lacks {fragment:?}"
        );
        expected_log += 1;
    }
    ensure!(fake.requests().len() == expected_log);
    Ok(())
}

#[tokio::test]
async fn accepts_what_the_cli_sends() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    let ids = {
        let reply = Reply::tool_use("Bash", json!({"command": "ls"}))
            .and_tool_use("Read", json!({"path": "a"}));
        let ids = reply.tool_use_ids();
        fake.push(reply);
        ids
    };
    ensure!(ids.len() == 2 && ids[0] != ids[1]);
    let first: Value = send(&fake, &request("List files")).await?.json().await?;
    let assistant_content = first["content"].clone();

    let body = json!({
        "model": MODEL,
        "max_tokens": 32000,
        "stream": true,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be terse."},
        ],
        "tools": [
            propose_task_tool(),
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "user_abc"},
        "thinking": {"type": "enabled", "budget_tokens": 4000},
        "temperature": 1,
        "context_management": {"edits": []},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>context</system-reminder>"},
                {"type": "text", "text": "List files", "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "assistant", "content": assistant_content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": ids[0], "content": [{"type": "text", "text": "a.rs"}]},
                {"type": "tool_result", "tool_use_id": ids[1], "content": "fn main() {}", "is_error": false},
                {"type": "text", "text": "Now summarise."},
            ]},
        ],
    });
    fake.push(Reply::text("Two files.").with_thinking("The user wants a summary."));
    let events = events(send(&fake, &body).await?).await?;
    ensure!(text_deltas(&events) == "Two files.");
    ensure!(
        events
            .iter()
            .any(|(_, d)| d["delta"]["type"] == "thinking_delta")
    );
    ensure!(
        events
            .iter()
            .any(|(_, d)| d["delta"]["type"] == "signature_delta")
    );

    let recorded = fake.requests();
    let last = recorded.last().context("recorded")?;
    ensure!(last.status == 200 && last.is_streaming());
    ensure!(last.system_text() == "You are Claude Code.\nBe terse.");
    ensure!(last.tool_names() == ["propose_task", "web_search"]);
    ensure!(last.last_user_text().as_deref() == Some("Now summarise."));
    let all = last.all_text();
    ensure!(all.contains("List files") && all.contains("a.rs") && all.contains("fn main() {}"));
    Ok(())
}

#[tokio::test]
async fn error_replies_carry_status_body_and_retry_after() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    fake.push(Reply::error(429, "rate_limit_error", "slow down").retry_after(7));
    fake.push(Reply::overloaded());

    let response = send(&fake, &streaming("Hi")).await?;
    ensure!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            == Some("7")
    );
    let (status, kind, message) = error_of(response).await?;
    ensure!(status == 429 && kind == "rate_limit_error" && message == "slow down");

    let (status, kind, _) = error_of(send(&fake, &request("Hi")).await?).await?;
    ensure!(status == 529 && kind == "overloaded_error");
    ensure!(fake.requests().iter().map(|r| r.status).collect::<Vec<_>>() == [429, 529]);
    Ok(())
}

#[tokio::test]
async fn stream_error_frames_end_the_stream() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    fake.push(Reply::stream_error_after(3, "overloaded_error"));
    let events = events(send(&fake, &streaming("Hi")).await?).await?;
    let names = names(&events);
    ensure!(names.first() == Some(&"message_start"));
    ensure!(
        names
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count()
            == 3,
        "{names:?}"
    );
    ensure!(!names.contains(&"message_stop"), "{names:?}");
    let (last, data) = events.last().context("events")?;
    ensure!(last == "error");
    ensure!(data["error"]["type"] == "overloaded_error");
    ensure!(fake.requests()[0].status == 200);

    // Without streaming there is no stream to break: the error is the HTTP answer.
    fake.push(Reply::stream_error_after(3, "overloaded_error"));
    let (status, kind, _) = error_of(send(&fake, &request("Hi")).await?).await?;
    ensure!(status == 529 && kind == "overloaded_error");
    Ok(())
}

#[tokio::test]
async fn hang_ups_leave_the_stream_incomplete() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    fake.push(Reply::hang_up_after(2));
    let response = send(&fake, &streaming("Hi")).await?;
    ensure!(response.status() == 200);
    let mut stream = response.bytes_stream().eventsource();
    let mut names = Vec::new();
    let mut broke = false;
    while let Some(event) = tokio::time::timeout(WAIT, stream.next()).await? {
        match event {
            Ok(event) => names.push(event.event),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    ensure!(
        broke,
        "the body should end in a transport error, got {names:?}"
    );
    ensure!(
        names.iter().filter(|n| *n == "content_block_delta").count() == 2,
        "{names:?}"
    );
    ensure!(!names.iter().any(|n| n == "message_stop"));

    // Without streaming, the connection goes before any response.
    fake.push(Reply::hang_up_after(2));
    ensure!(send(&fake, &request("Hi")).await.is_err());
    ensure!(fake.requests().iter().map(|r| r.status).collect::<Vec<_>>() == [200, 0]);
    Ok(())
}

#[tokio::test]
async fn replies_come_from_the_queue_then_the_default() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    fake.push(Reply::text("first"));
    fake.push(Reply::text("second"));
    let mut texts = Vec::new();
    for prompt in ["a", "b", "c"] {
        let message: Value = send(&fake, &request(prompt)).await?.json().await?;
        texts.push(
            message["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ensure!(texts == ["first", "second", "Echo: c"], "{texts:?}");

    fake.set_default(|request| Reply::text(format!("tools: {}", request.tool_names().join(","))));
    let mut body = request("d");
    body["tools"] = json!([propose_task_tool()]);
    let message: Value = send(&fake, &body).await?.json().await?;
    ensure!(message["content"][0]["text"] == "tools: propose_task");
    Ok(())
}

#[tokio::test]
async fn rejected_requests_do_not_consume_replies() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    fake.push(Reply::text("scripted"));
    let mut bad = request("Hi");
    bad["bogus"] = json!(1);
    ensure!(send(&fake, &bad).await?.status() == 400);
    ensure!(fake.pending_replies() == 1);
    let message: Value = send(&fake, &request("Hi")).await?.json().await?;
    ensure!(message["content"][0]["text"] == "scripted");
    Ok(())
}

#[tokio::test]
async fn waits_for_requests_without_polling() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    let sender = fake.clone();
    let task = tokio::spawn(async move {
        for prompt in ["one", "two"] {
            send(&sender, &request(prompt)).await?;
        }
        anyhow::Ok(())
    });
    let recorded = fake.wait_for_requests(2, WAIT).await?;
    ensure!(recorded.len() == 2);
    ensure!(recorded[0].last_user_text().as_deref() == Some("one"));
    ensure!(recorded[1].last_user_text().as_deref() == Some("two"));
    task.await??;

    fake.clear_requests();
    ensure!(fake.requests().is_empty());
    let Err(error) = fake.wait_for_requests(1, Duration::from_millis(50)).await else {
        bail!("waiting for a request that never comes should time out");
    };
    ensure!(error.to_string().contains("timed out"), "{error}");
    Ok(())
}

#[tokio::test]
async fn delays_pace_the_stream() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    fake.set_first_token_delay(Duration::from_millis(150));
    fake.push(Reply::text("a b c").with_token_delay(Duration::from_millis(30)));

    let started = Instant::now();
    let response = send(&fake, &streaming("Hi")).await?;
    let mut stream = response.bytes_stream().eventsource();
    let mut first_delta_at = None;
    while let Some(event) = stream.next().await {
        if event?.event == "content_block_delta" && first_delta_at.is_none() {
            first_delta_at = Some(started.elapsed());
        }
    }
    let first = first_delta_at.context("no delta")?;
    ensure!(
        first >= Duration::from_millis(150),
        "first delta after {first:?}"
    );
    ensure!(
        started.elapsed() >= Duration::from_millis(210),
        "whole stream in {:?}",
        started.elapsed()
    );

    // A non-streaming answer takes as long as its stream would have.
    fake.push(Reply::text("x").with_first_token_delay(Duration::from_millis(100)));
    let started = Instant::now();
    ensure!(send(&fake, &request("Hi")).await?.status() == 200);
    ensure!(started.elapsed() >= Duration::from_millis(100));
    Ok(())
}

#[tokio::test]
async fn dropping_the_last_handle_cuts_open_streams() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    let base_url = fake.base_url();
    ensure!(base_url.starts_with("http://127.0.0.1:") && !base_url.ends_with('/'));

    // Dropping a clone leaves the server running.
    drop(fake.clone());
    ensure!(send(&fake, &request("still there?")).await?.status() == 200);

    fake.push(Reply::text("never finished").with_first_token_delay(Duration::from_secs(3600)));
    let response = send(&fake, &streaming("Hi")).await?;
    ensure!(response.status() == 200);
    let mut stream = response.bytes_stream().eventsource();
    let mut names = Vec::new();
    // message_start, content_block_start, ping: then the stream waits for its first token.
    while names.len() < 3 {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await?
            .context("stream ended early")??;
        names.push(event.event);
    }
    ensure!(
        names == ["message_start", "content_block_start", "ping"],
        "{names:?}"
    );

    drop(fake);
    let rest = tokio::time::timeout(WAIT, stream.next()).await?;
    ensure!(
        matches!(rest, None | Some(Err(_))),
        "the stream should be cut, got {rest:?}"
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_the_socket() -> anyhow::Result<()> {
    let fake = FakeAnthropic::start().await?;
    ensure!(send(&fake, &request("Hi")).await?.status() == 200);
    fake.shutdown().await;
    ensure!(
        send(&fake, &request("Hi")).await.is_err(),
        "the port should be closed"
    );
    Ok(())
}
