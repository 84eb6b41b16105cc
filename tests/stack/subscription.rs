//! The chat on a Claude subscription: no API key, only `CLAUDE_CODE_OAUTH_TOKEN`. The turn
//! then runs through the real Claude Code CLI (against the fake Anthropic API), which gets the
//! `propose_task` tool from the real `mainloop mcp`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use mainloop_store::{MessageKind, Role};
use mainloop_testkit::anthropic::{DEFAULT_OAUTH_TOKEN, RecordedRequest, Reply, content_text};
use serde_json::{Value, json};

use crate::harness::{
    Stack, USER, WAIT, assert_one_reply_each, chat_requests, is_assistant_completion, is_summary,
    replies_to, streamed_deltas,
};
use crate::tasks::claude_bin;

/// How the CLI names the tool of `mainloop mcp`.
const TOOL: &str = "mcp__mainloop__propose_task";

/// The text of the tool result the model got, if it got one.
fn tool_result(request: &RecordedRequest) -> Option<(String, bool)> {
    let result = request.last_tool_result()?;
    Some((content_text(result), result["is_error"] == true))
}

/// A stack whose worker has no API key, only a subscription token, and a data directory of
/// its own (the CLI's HOME is made there).
async fn subscription_stack(
    token: &str,
    extra: &[(&str, &str)],
) -> Result<(Stack, tempfile::TempDir)> {
    let data = tempfile::Builder::new()
        .prefix("mainloop-subscription-")
        .tempdir()?;
    let data_dir = data.path().display().to_string();
    let claude = claude_bin().display().to_string();
    let mut env = vec![
        // No API key: the OAuth token selects the CLI.
        ("ANTHROPIC_API_KEY", ""),
        ("CLAUDE_CODE_OAUTH_TOKEN", token),
        ("MAINLOOP_CLAUDE_BIN", claude.as_str()),
        ("MAINLOOP_DATA_DIR", data_dir.as_str()),
    ];
    env.extend_from_slice(extra);
    let stack = Stack::start_with(&env).await?;
    Ok((stack, data))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_user_chats_through_claude_code_with_the_mcp_tool() -> Result<()> {
    // Two turns make four messages: the thread is then compacted, through the CLI too.
    let (stack, data) = subscription_stack(
        DEFAULT_OAUTH_TOKEN,
        &[
            ("MAINLOOP_COMPACTION_THRESHOLD", "3"),
            ("MAINLOOP_KEEP_RECENT", "1"),
        ],
    )
    .await?;
    stack.anthropic.set_default(|request: &RecordedRequest| {
        if is_summary(request) {
            return Reply::text("The user wants dark mode in acme/web; it was proposed.");
        }
        if !request.tool_names().iter().any(|t| t == TOOL) {
            return Reply::text("(not a chat request)");
        }
        if request.after_tool() {
            return Reply::text("Proposed: dark mode for acme/web. Confirm it to start.")
                .with_token_delay(std::time::Duration::from_millis(10));
        }
        if request.all_text().contains("Thanks") {
            return Reply::text("You're welcome.").with_usage(40, 4);
        }
        Reply::tool_use(
            TOOL,
            json!({
                "title": "Add dark mode",
                "description": "Follow the system theme; add a toggle in settings.",
                "repo": "https://github.com/acme/web"
            }),
        )
        .with_text("I'll set that up.")
        .with_token_delay(std::time::Duration::from_millis(10))
    });

    let mut events = stack.events(stack.last_event_id().await?).await?;
    let posted = stack.post("Add dark mode to acme/web please", "k1").await?;
    let received = events
        .collect_until(WAIT, is_assistant_completion)
        .await
        .with_context(|| stack.logs())?;

    // The reply streamed in pieces and ended as one stored reply with the proposal card.
    let deltas = streamed_deltas(&received)?;
    assert!(deltas.len() >= 2, "the reply was not streamed: {deltas:?}");
    let text = "I'll set that up.\n\nProposed: dark mode for acme/web. Confirm it to start.";
    assert_eq!(deltas.concat(), text);
    let created: Vec<Value> = received
        .iter()
        .filter(|e| e.event == "proposal.created")
        .map(|e| e.json())
        .collect::<Result<_>>()?;
    assert_eq!(created.len(), 1, "{created:?}");
    let completed = received
        .last()
        .map(|e| e.json())
        .transpose()?
        .unwrap_or_default();
    assert_eq!(completed["content"], text);
    assert_eq!(completed["reply_to"], posted["id"]);
    assert_eq!(completed["usage"]["model"], "claude-haiku-4-5");
    assert!(
        completed["usage"]["input_tokens"].as_i64() > Some(0),
        "{completed}"
    );
    // The cost is the one Claude Code reports for the turn.
    assert!(
        completed["usage"]["cost_usd"].as_f64() > Some(0.0),
        "{completed}"
    );
    let proposal = &completed["proposals"][0];
    assert_eq!(proposal["title"], "Add dark mode");
    assert_eq!(proposal["repo"], "acme/web");
    assert_eq!(proposal["status"], "pending");

    // What the fake saw: the CLI, signed in with the OAuth token, offering only our tool.
    let requests = chat_requests(&stack.anthropic);
    assert_eq!(requests.len(), 2, "{:?}", stack.anthropic.requests());
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {DEFAULT_OAUTH_TOKEN}").as_str())
        );
        assert_eq!(request.header("x-api-key"), None);
        assert_eq!(request.tool_names(), [TOOL]);
        assert_eq!(request.model(), Some("claude-haiku-4-5"));
        assert!(
            request
                .system_text()
                .contains("You are the assistant in mainloop")
        );
        assert!(request.is_streaming());
        assert_eq!(request.body["max_tokens"], 4096);
        assert!(
            request
                .body
                .get("thinking")
                .is_none_or(|t| t["type"] != "enabled"),
            "{}",
            request.body["thinking"]
        );
    }
    // The CLI kept its state in a HOME of its own, under the worker's data directory.
    let home = data.path().join("chat-claude/home");
    assert!(
        std::fs::read_dir(&home)?.next().is_some(),
        "nothing in {}",
        home.display()
    );
    // The system prompt went in a file (not on the command line), removed after the run.
    let prompts = data.path().join("chat-claude/prompts");
    assert!(std::fs::read_dir(&prompts)?.next().is_none());
    assert!(
        requests[0]
            .last_user_text()
            .is_some_and(|t| t.contains("Add dark mode to acme/web please")),
        "{:?}",
        requests[0].last_user_text()
    );
    // The MCP server answered the call as the API path would.
    let (result, is_error) = tool_result(&requests[1]).context("no tool result")?;
    assert!(!is_error, "{result}");
    assert!(
        result.contains("Nothing runs until they press Confirm"),
        "{result}"
    );
    // Nothing but the fake was contacted through ANTHROPIC_BASE_URL.
    let other: Vec<String> = stack
        .anthropic
        .requests()
        .iter()
        .filter(|r| r.path != "/v1/messages")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(other.is_empty(), "{other:?}");

    // The next turn has the conversation, with what became of the proposal.
    let second = stack.post("Thanks!", "k2").await?;
    let thread = stack.wait_for_replies(2, WAIT).await?;
    assert_one_reply_each(&thread);
    let reply = replies_to(&thread, second["id"].as_str().unwrap_or_default());
    assert_eq!(reply[0].content, "You're welcome.");
    assert_eq!(reply[0].kind, MessageKind::Chat);
    let last = chat_requests(&stack.anthropic)
        .pop()
        .context("no request")?;
    let asked = last.last_user_text().unwrap_or_default();
    assert!(
        asked.contains("User: Add dark mode to acme/web please"),
        "{asked}"
    );
    assert!(
        asked.contains("[Proposed task \"Add dark mode\" in acme/web: awaiting"),
        "{asked}"
    );
    assert!(asked.trim_end().ends_with("Thanks!"), "{asked}");
    assert_eq!(thread.iter().filter(|m| m.role == Role::User).count(), 2);

    // The summary was written by the CLI too: signed in the same way, with no tools at all.
    let deadline = tokio::time::Instant::now() + WAIT;
    let summary = loop {
        let (summary, _) = stack.store.summary(USER).await?;
        if !summary.is_empty() {
            break summary;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no summary: {}",
            stack.logs()
        );
        // Compaction writes no event; the store can only be asked again.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        summary,
        "The user wants dark mode in acme/web; it was proposed."
    );
    let summaries: Vec<RecordedRequest> = stack
        .anthropic
        .requests()
        .into_iter()
        .filter(is_summary)
        .collect();
    assert_eq!(summaries.len(), 1);
    assert_eq!(
        summaries[0].header("authorization"),
        Some(format!("Bearer {DEFAULT_OAUTH_TOKEN}").as_str())
    );
    assert!(summaries[0].tool_names().is_empty());
    assert!(
        summaries[0]
            .all_text()
            .contains("Add dark mode to acme/web please")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_oauth_token_ends_the_turn_in_a_visible_error() -> Result<()> {
    let (stack, _data) = subscription_stack("expired-token", &[]).await?;
    let posted = stack.post("hello?", "k1").await?;
    let thread = stack.wait_for_replies(1, WAIT).await?;
    let reply = replies_to(&thread, posted["id"].as_str().unwrap_or_default());
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].kind, MessageKind::Error);
    assert!(
        reply[0].content.contains("CLAUDE_CODE_OAUTH_TOKEN"),
        "{}",
        reply[0].content
    );
    // Permanent: the turn is not retried, so there was one run of the CLI (which itself
    // tries a refused token twice).
    let requests = stack.anthropic.requests();
    assert!(requests.iter().all(|r| r.status == 401));
    let mut sessions: Vec<&str> = requests
        .iter()
        .filter_map(|r| r.header("x-claude-code-session-id"))
        .collect();
    sessions.dedup();
    assert_eq!(sessions.len(), 1, "{requests:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_claude_code_ends_the_turn_in_an_error_that_says_so() -> Result<()> {
    // Later settings win: this one replaces the real CLI.
    let (stack, _data) = subscription_stack(
        DEFAULT_OAUTH_TOKEN,
        &[("MAINLOOP_CLAUDE_BIN", "/nonexistent/claude")],
    )
    .await?;
    let posted = stack.post("hello?", "k1").await?;
    let thread = stack.wait_for_replies(1, WAIT).await?;
    let reply = replies_to(&thread, posted["id"].as_str().unwrap_or_default());
    assert_eq!(reply[0].kind, MessageKind::Error);
    assert!(
        reply[0]
            .content
            .contains("cannot start the Claude Code CLI")
            && reply[0].content.contains("MAINLOOP_CLAUDE_BIN"),
        "{}",
        reply[0].content
    );
    assert!(stack.anthropic.requests().is_empty());
    Ok(())
}

/// `mainloop mcp` over its real stdio, as the CLI drives it.
#[test]
fn mainloop_mcp_speaks_json_rpc_on_stdio() -> Result<()> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mainloop"))
        .arg("mcp")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut ask = |request: Value| -> Result<Option<Value>> {
        writeln!(stdin, "{request}")?;
        stdin.flush()?;
        if request.get("id").is_none() {
            return Ok(None);
        }
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        Ok(Some(serde_json::from_str(&line).context(line)?))
    };
    let init = ask(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}}),
    )?
    .unwrap_or_default();
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    assert!(init["result"]["capabilities"]["tools"].is_object());
    ask(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
    let list = ask(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))?.unwrap_or_default();
    let tools = list["result"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["name"], "propose_task");
    assert_eq!(
        tools[0]["inputSchema"]["required"],
        json!(["title", "description", "repo"])
    );
    let valid = ask(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "propose_task",
        "arguments": {"title": "Add dark mode", "description": "d", "repo": "acme/web"}}}),
    )?
    .unwrap_or_default();
    assert_eq!(valid["result"]["isError"], false);
    let text = valid["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("\"Add dark mode\" in acme/web"), "{text}");
    let invalid = ask(
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
        "name": "propose_task",
        "arguments": {"title": "x", "description": "y", "repo": "../etc"}}}),
    )?
    .unwrap_or_default();
    assert_eq!(invalid["result"]["isError"], true);
    let reason = invalid["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("owner/name"), "{reason}");
    let unknown =
        ask(json!({"jsonrpc": "2.0", "id": 5, "method": "prompts/list"}))?.unwrap_or_default();
    assert_eq!(unknown["error"]["code"], -32601);
    // Closing stdin ends it, cleanly.
    drop(stdin);
    let status = child.wait()?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// Processes whose working directory is `dir`: the CLI runs of the chat.
fn processes_in(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd == dir))
        .map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_turn_temporal_gives_up_on_kills_its_claude_code() -> Result<()> {
    let (stack, data) =
        subscription_stack(DEFAULT_OAUTH_TOKEN, &[("MAINLOOP_TURN_TIMEOUT", "6s")]).await?;
    // The first attempt's model never answers; Temporal times the attempt out and retries.
    stack
        .anthropic
        .push(Reply::text("too late").with_first_token_delay(std::time::Duration::from_secs(3600)));
    stack.anthropic.push(Reply::text("Here now."));
    let posted = stack.post("hello?", "k1").await?;
    let thread = stack.wait_for_replies(1, WAIT).await?;
    let reply = replies_to(&thread, posted["id"].as_str().unwrap_or_default());
    assert_eq!(reply[0].content, "Here now.");
    assert_eq!(chat_requests(&stack.anthropic).len(), 2);
    // The first attempt's CLI, still waiting for its model, was killed.
    let workspace = data.path().join("chat-claude/workspace");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = processes_in(&workspace);
        if left.is_empty() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Claude Code still runs: {left:?}"
        );
        // Process exit is not observable from here but by looking again.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}
