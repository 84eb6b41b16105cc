//! `mainloop mcp`: a Model Context Protocol server on stdio that offers the chat's one tool,
//! `propose_task`, to the Claude Code CLI (the subscription chat backend, `chat_cli`).
//!
//! The protocol is JSON-RPC 2.0, one message per line. This server answers `initialize`,
//! `ping`, `tools/list` and `tools/call`, takes the `notifications/*` it is sent without a word,
//! and answers any other request with "method not found".
//!
//! It touches nothing: a call is only validated, with the same rules and the same answer as
//! the Messages API path. The proposal itself is stored by the `chat.respond` activity, which
//! reads the tool call from the CLI's output stream (and validates it again).

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};

use crate::chat::{PROPOSE_TASK, proposal_shown, propose_task_tool, validate_proposal};

/// The protocol revisions this server speaks, newest first.
pub const PROTOCOL_VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];

/// JSON-RPC error codes.
mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
}

/// Serves one client until its input ends.
///
/// # Errors
/// When reading the input or writing the output fails.
pub async fn serve<R, W>(input: R, mut output: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = BufReader::new(input).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(reply) = handle_line(&line) {
            let mut reply = reply.to_string();
            reply.push('\n');
            output.write_all(reply.as_bytes()).await?;
            output.flush().await?;
        }
    }
    Ok(())
}

/// The answer to one line of input, if it needs one (notifications and responses do not).
pub fn handle_line(line: &str) -> Option<Value> {
    if line.trim().is_empty() {
        return None;
    }
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Array(batch)) if !batch.is_empty() => {
            let replies: Vec<Value> = batch.iter().filter_map(handle_message).collect();
            (!replies.is_empty()).then_some(Value::Array(replies))
        }
        Ok(Value::Array(_)) => Some(error(
            Value::Null,
            code::INVALID_REQUEST,
            "empty batch".into(),
        )),
        Ok(message) => handle_message(&message),
        Err(e) => Some(error(
            Value::Null,
            code::PARSE_ERROR,
            format!("parse error: {e}"),
        )),
    }
}

/// The answer to one JSON-RPC message.
fn handle_message(message: &Value) -> Option<Value> {
    let Some(object) = message.as_object() else {
        return Some(error(
            Value::Null,
            code::INVALID_REQUEST,
            "a message must be an object".into(),
        ));
    };
    let id = object.get("id").cloned();
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        if id.is_some() && (object.contains_key("result") || object.contains_key("error")) {
            // A response to a request of ours; this server sends none.
            return None;
        }
        return Some(error(
            id.unwrap_or(Value::Null),
            code::INVALID_REQUEST,
            "no method".into(),
        ));
    };
    let Some(id) = id else {
        // A notification (`notifications/initialized`, `notifications/cancelled`, …): nothing
        // to say, whatever it is.
        return None;
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0")
        || !(id.is_string() || id.is_number())
    {
        return Some(error(
            if id.is_string() || id.is_number() {
                id
            } else {
                Value::Null
            },
            code::INVALID_REQUEST,
            "not a JSON-RPC 2.0 request".into(),
        ));
    }
    let params = object.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => Ok(initialize(&params)),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({ "tools": [tool_description()] })),
        "tools/call" => call_tool(&params),
        _ => Err((
            code::METHOD_NOT_FOUND,
            format!("method not found: {method}"),
        )),
    };
    Some(match result {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err((code, message)) => error(id, code, message),
    })
}

fn error(id: Value, code: i64, message: String) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

fn initialize(params: &Value) -> Value {
    // The client's revision if this server speaks it, else this server's newest (the client
    // then decides whether it can go on).
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    let version = asked
        .filter(|v| PROTOCOL_VERSIONS.contains(v))
        .unwrap_or(PROTOCOL_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": false } },
        "serverInfo": { "name": "mainloop", "version": env!("CARGO_PKG_VERSION") },
        "instructions": "Call propose_task to propose a worker task to the user; they confirm \
                         or reject it.",
    })
}

fn tool_description() -> Value {
    let tool = propose_task_tool();
    json!({
        "name": tool.name,
        "description": tool.description,
        "inputSchema": tool.input_schema,
    })
}

fn call_tool(params: &Value) -> Result<Value, (i64, String)> {
    let name = params.get("name").and_then(Value::as_str).ok_or((
        code::INVALID_PARAMS,
        "tools/call needs the tool's `name`".to_string(),
    ))?;
    if name != PROPOSE_TASK {
        return Err((code::INVALID_PARAMS, format!("unknown tool: {name}")));
    }
    let arguments = params
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let (text, is_error) = match validate_proposal(&arguments) {
        Ok(proposal) => (proposal_shown(None, &proposal.title, &proposal.repo), false),
        Err(reason) => (reason, true),
    };
    Ok(json!({
        "content": [{ "type": "text", "text": text }],
        "isError": is_error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives [`serve`] over in-memory pipes: one request per line in, the replies out.
    async fn exchange(requests: &[Value]) -> Vec<Value> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(server);
        let served = tokio::spawn(serve(server_read, server_write));
        let (client_read, mut client_write) = tokio::io::split(client);
        for request in requests {
            let line = format!("{request}\n");
            client_write
                .write_all(line.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        client_write
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(client_write);
        let mut replies = Vec::new();
        let mut lines = BufReader::new(client_read).lines();
        while let Some(line) = lines.next_line().await.unwrap_or_else(|e| panic!("{e}")) {
            replies.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}")));
        }
        served
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        replies
    }

    #[tokio::test]
    async fn a_session_initializes_lists_the_tool_and_validates_calls() {
        let replies = exchange(&[
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "claude-code", "version": "2.1.329"}}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "propose_task", "arguments": {
                    "title": "Add dark mode", "description": "Follow the system theme",
                    "repo": "https://github.com/acme/web"}}}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                "name": "propose_task", "arguments": {"title": "x", "description": "y"}}}),
            json!({"jsonrpc": "2.0", "id": "p", "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": 4, "method": "resources/list"}),
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
                "name": "Bash", "arguments": {"command": "ls"}}}),
        ])
        .await;
        // The notification gets no answer: one reply per request, in order.
        let ids: Vec<&Value> = replies.iter().map(|r| &r["id"]).collect();
        assert_eq!(
            ids,
            [
                &json!(0),
                &json!(1),
                &json!(2),
                &json!(3),
                &json!("p"),
                &json!(4),
                &json!(5)
            ]
        );
        assert!(replies.iter().all(|r| r["jsonrpc"] == "2.0"));

        let init = &replies[0]["result"];
        assert_eq!(init["protocolVersion"], "2025-06-18");
        assert_eq!(init["serverInfo"]["name"], "mainloop");
        assert!(init["capabilities"]["tools"].is_object());

        let tools = replies[1]["result"]["tools"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(tools.len(), 1);
        let api_tool = propose_task_tool();
        assert_eq!(tools[0]["name"], "propose_task");
        assert_eq!(tools[0]["description"], api_tool.description.as_str());
        assert_eq!(tools[0]["inputSchema"], api_tool.input_schema);

        let valid = &replies[2]["result"];
        assert_eq!(valid["isError"], false);
        assert_eq!(
            valid["content"][0]["text"],
            proposal_shown(None, "Add dark mode", "acme/web")
        );
        assert_eq!(valid["content"][0]["type"], "text");

        let invalid = &replies[3]["result"];
        assert_eq!(invalid["isError"], true);
        assert_eq!(invalid["content"][0]["text"], "`repo` is required.");

        assert_eq!(replies[4]["result"], json!({}));
        assert_eq!(replies[5]["error"]["code"], code::METHOD_NOT_FOUND);
        assert!(replies[5].get("result").is_none());
        assert_eq!(replies[6]["error"]["code"], code::INVALID_PARAMS);
    }

    #[test]
    fn malformed_input_gets_json_rpc_errors() {
        let parse = handle_line("{not json");
        assert_eq!(
            parse.map(|r| r["error"]["code"].clone()),
            Some(json!(code::PARSE_ERROR))
        );
        let no_method = handle_line(r#"{"jsonrpc": "2.0", "id": 7}"#);
        assert_eq!(
            no_method.map(|r| (r["id"].clone(), r["error"]["code"].clone())),
            Some((json!(7), json!(code::INVALID_REQUEST)))
        );
        let not_v2 = handle_line(r#"{"id": 1, "method": "ping"}"#);
        assert_eq!(
            not_v2.map(|r| r["error"]["code"].clone()),
            Some(json!(code::INVALID_REQUEST))
        );
        // Unknown notifications and responses are taken without a word.
        assert_eq!(
            handle_line(r#"{"jsonrpc": "2.0", "method": "notifications/whatever"}"#),
            None
        );
        assert_eq!(
            handle_line(r#"{"jsonrpc": "2.0", "id": 9, "result": {}}"#),
            None
        );
        assert_eq!(handle_line("   "), None);
        // An unknown protocol revision is answered with ours.
        let init = handle_line(
            r#"{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "1999-01-01"}}"#,
        );
        assert_eq!(
            init.map(|r| r["result"]["protocolVersion"].clone()),
            Some(json!(PROTOCOL_VERSIONS[0]))
        );
        let batch = handle_line(
            r#"[{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "notifications/initialized"}]"#,
        );
        assert_eq!(
            batch,
            Some(json!([{"jsonrpc": "2.0", "id": 1, "result": {}}]))
        );
    }
}
