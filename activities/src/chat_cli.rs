//! The chat's subscription backend: a turn run by the Claude Code CLI, for users who have a
//! Claude subscription token (`CLAUDE_CODE_OAUTH_TOKEN`) and no API key.
//!
//! The CLI runs in print mode with streaming JSON output and nothing of its own: no built-in
//! tools (the chat must not touch the worker's machine), no settings, sessions or MCP servers
//! but ours. Its one tool is `propose_task`, served by `mainloop mcp` (module `mcp`) and so
//! named `mcp__mainloop__propose_task`. The system prompt and the conversation are the ones
//! the API path builds; the conversation goes in as a rendered transcript on stdin.
//!
//! The activity reads the CLI's stream: text deltas are written into the reply with the same
//! writer as the API path, each `propose_task` call is validated and stored here with the
//! API path's `propose` (the MCP server only validates, so the model gets its answer; it has
//! no database), and the tokens come from the final `result` line. The CLI is killed when the
//! activity ends early (cancelled, timed out, failed).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use mainloop_store::TurnContext;
use serde_json::{Value, json};
use temporalio_sdk::activities::ActivityError;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::anthropic::{ApiMessage, ApiRole, Block};
use crate::chat::{
    ChatActivities, Outcome, PROPOSE_TASK, PROPOSED_WITHOUT_A_WORD, api_messages, failure_type,
    spawn_text_writer, system_prompt,
};
use crate::errors::{permanent, retryable, store_error};
use crate::pricing::Tokens;
use mainloop_agent::cli_result::CliResult as Finished;
use mainloop_agent::protocol::Usage;

/// The name `mainloop mcp` is registered under in the CLI's MCP configuration.
pub const MCP_SERVER: &str = "mainloop";

/// How the CLI names the propose tool: `mcp__<server>__<tool>`.
pub fn propose_tool_name() -> String {
    format!("mcp__{MCP_SERVER}__{PROPOSE_TASK}")
}

/// How many of the CLI's last stderr lines go into an error message.
const STDERR_TAIL: usize = 12;

/// How to run the Claude Code CLI for the chat.
#[derive(Clone)]
pub struct ClaudeCliSettings {
    /// The CLI (`MAINLOOP_CLAUDE_BIN`, default `claude` on `PATH`).
    pub bin: PathBuf,
    /// The subscription token (`CLAUDE_CODE_OAUTH_TOKEN`).
    pub oauth_token: String,
    /// `ANTHROPIC_BASE_URL` for the CLI, when it is not the real API.
    pub base_url: Option<String>,
    /// The `mainloop` binary, run as `mainloop mcp` by the CLI.
    pub mcp_server: PathBuf,
    /// A private directory for the CLI: its `HOME` and working directory are made in it.
    pub dir: PathBuf,
    /// Longest silence tolerated from the CLI.
    pub idle_timeout: Duration,
    /// `PATH` for the CLI (it and `mainloop mcp` need nothing else from the environment).
    pub path: String,
}

impl std::fmt::Debug for ClaudeCliSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("ClaudeCliSettings")
            .field("bin", &self.bin)
            .field("base_url", &self.base_url)
            .field("mcp_server", &self.mcp_server)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The Claude Code CLI as a model for the chat.
#[derive(Debug, Clone)]
pub struct ClaudeCli {
    settings: Arc<ClaudeCliSettings>,
}

impl ClaudeCli {
    /// Makes the CLI's private directories.
    ///
    /// # Errors
    /// When they cannot be created.
    pub fn new(settings: ClaudeCliSettings) -> std::io::Result<ClaudeCli> {
        use std::os::unix::fs::PermissionsExt as _;
        for sub in ["home", "workspace", "prompts"] {
            std::fs::create_dir_all(settings.dir.join(sub))?;
        }
        // Conversation summaries pass through here: for this user only.
        std::fs::set_permissions(&settings.dir, std::fs::Permissions::from_mode(0o700))?;
        // Prompt files a killed worker left behind.
        for entry in std::fs::read_dir(settings.dir.join("prompts"))?.flatten() {
            if let Err(error) = std::fs::remove_file(entry.path()) {
                tracing::debug!(%error, path = %entry.path().display(), "cannot remove a prompt file");
            }
        }
        Ok(ClaudeCli {
            settings: Arc::new(settings),
        })
    }

    pub fn settings(&self) -> &ClaudeCliSettings {
        &self.settings
    }

    /// The command for one run: print mode, streaming JSON, the given model and system prompt
    /// (in a file: it may hold the conversation's summary, which the command line would show
    /// to every user of the machine), no tools but `mainloop mcp`'s propose tool when
    /// `propose` is set, and an environment with only what the CLI needs.
    fn command(
        &self,
        model: &str,
        system: &str,
        max_turns: usize,
        max_tokens: u32,
        propose: bool,
    ) -> Result<(Command, PromptFile), ActivityError> {
        let s = &self.settings;
        let file = PromptFile(
            s.dir
                .join("prompts")
                .join(format!("{}.md", uuid::Uuid::new_v4())),
        );
        std::fs::write(&file.0, system).map_err(|e| {
            retryable(
                format!("writing the system prompt to {}: {e}", file.0.display()),
                None,
            )
        })?;
        let mut command = Command::new(&s.bin);
        command.args([
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--model",
            model,
            "--system-prompt-file",
            &file.0.display().to_string(),
            "--max-turns",
            &max_turns.to_string(),
            // A fast chat, as on the API path.
            "--thinking",
            "disabled",
            // No built-in tool at all: no Bash, no file tools, no web, no agents.
            "--tools",
            "",
            // Only our MCP server (none at all without `propose`), and no settings files.
            "--strict-mcp-config",
            "--setting-sources",
            "",
            // Anything that would ask for permission is denied.
            "--permission-mode",
            "dontAsk",
            "--no-session-persistence",
            "--disable-slash-commands",
        ]);
        if propose {
            let config = json!({
                "mcpServers": {
                    MCP_SERVER: {
                        "type": "stdio",
                        "command": s.mcp_server,
                        "args": ["mcp"],
                    }
                }
            });
            command
                .arg("--mcp-config")
                .arg(config.to_string())
                .arg("--allowedTools")
                .arg(propose_tool_name());
        }
        let home = s.dir.join("home");
        command
            .current_dir(s.dir.join("workspace"))
            .env_clear()
            .env("PATH", &s.path)
            .env("HOME", &home)
            .env("CLAUDE_CODE_OAUTH_TOKEN", &s.oauth_token)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            // Temporal retries the turn, as on the API path. The CLI's own retries (ten, with
            // long waits) would hold a failing turn up, and one after some text was streamed
            // would stream it again.
            .env("CLAUDE_CODE_MAX_RETRIES", "0")
            .env("CLAUDE_CODE_MAX_OUTPUT_TOKENS", max_tokens.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(url) = &s.base_url {
            command.env("ANTHROPIC_BASE_URL", url);
        }
        Ok((command, file))
    }

    /// Starts the CLI with `prompt` on its stdin.
    fn start(
        &self,
        (mut command, prompt_file): (Command, PromptFile),
        prompt: String,
    ) -> Result<Run, ActivityError> {
        let mut child = command.spawn().map_err(|error| {
            let message = format!(
                "cannot start the Claude Code CLI `{}` ({error}): install it or set \
                 MAINLOOP_CLAUDE_BIN",
                self.settings.bin.display()
            );
            match error.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    permanent(failure_type::MODEL_NOT_CONFIGURED, message)
                }
                _ => retryable(message, None),
            }
        })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(retryable(
                "the Claude Code CLI started without its pipes",
                None,
            ));
        };
        // Written beside the reading, so a long prompt cannot dead-lock against the output.
        tokio::spawn(async move {
            if let Err(error) = stdin.write_all(prompt.as_bytes()).await {
                tracing::debug!(%error, "cannot write the prompt to Claude Code");
            }
            // Dropping stdin closes it: the prompt is complete.
        });
        let stderr = tokio::spawn(async move {
            let mut tail = VecDeque::new();
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim().is_empty() {
                    continue;
                }
                tracing::debug!(target: "mainloop_activities::chat_cli", "claude: {line}");
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Vec::from(tail)
        });
        Ok(Run {
            child,
            _prompt_file: prompt_file,
            lines: BufReader::new(stdout).lines(),
            stderr,
            idle_timeout: self.settings.idle_timeout,
            parser: StreamParser::default(),
        })
    }

    /// A plain completion (no tools): the summaries of compaction.
    pub(crate) async fn complete(
        &self,
        model: &str,
        system: &str,
        prompt: String,
    ) -> Result<String, ActivityError> {
        let mut run = self.start(self.command(model, system, 1, 1500, false)?, prompt)?;
        let mut text = String::new();
        while let Some(event) = run.next().await? {
            if let Event::Text(piece) = event {
                text.push_str(&piece);
            }
        }
        run.finish().await?;
        Ok(text)
    }
}

/// A system prompt file, removed when the run ends.
struct PromptFile(PathBuf);

impl Drop for PromptFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.0) {
            tracing::debug!(%error, path = %self.0.display(), "cannot remove a prompt file");
        }
    }
}

/// One running CLI. Dropping it kills the CLI.
struct Run {
    child: Child,
    _prompt_file: PromptFile,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<Vec<String>>,
    idle_timeout: Duration,
    parser: StreamParser,
}

impl Run {
    /// The next event, or `None` once the CLI's output has ended.
    async fn next(&mut self) -> Result<Option<Event>, ActivityError> {
        loop {
            if let Some(event) = self.parser.pending.pop_front() {
                return Ok(Some(event));
            }
            let line = tokio::time::timeout(self.idle_timeout, self.lines.next_line())
                .await
                .map_err(|_| {
                    retryable(
                        format!("Claude Code sent nothing for {:?}", self.idle_timeout),
                        None,
                    )
                })?
                .map_err(|e| retryable(format!("reading Claude Code's output: {e}"), None))?;
            let Some(line) = line else { return Ok(None) };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(message) => self.parser.handle(&message),
                Err(_) => tracing::debug!("claude (not JSON): {line}"),
            }
            if let Some(broken) = &self.parser.broken {
                return Err(retryable(broken.clone(), None));
            }
        }
    }

    /// Waits for the CLI to exit and says how the run ended: its `result`, or the error.
    async fn finish(mut self) -> Result<Finished, ActivityError> {
        // Drain what is left, so the CLI is never blocked on a full pipe.
        while self.next().await?.is_some() {}
        let status = tokio::time::timeout(self.idle_timeout, self.child.wait())
            .await
            .map_err(|_| retryable("Claude Code did not exit after its result", None))?
            .map_err(|e| retryable(format!("waiting for Claude Code: {e}"), None))?;
        let tail = self.stderr.await.unwrap_or_default().join("\n");
        match self.parser.finished.take() {
            Some(finished) if !finished.is_error || finished.subtype == "error_max_turns" => {
                Ok(finished)
            }
            Some(finished) => Err(classify(finished.api_error_status, &finished.text)),
            None => {
                let message = if tail.is_empty() {
                    format!("Claude Code exited with {status} without a result")
                } else {
                    format!("Claude Code exited with {status} without a result: {tail}")
                };
                Err(classify(None, &message))
            }
        }
    }
}

/// How a failed run is retried, or not: from the HTTP status of the API error that ended it
/// (`api_error_status`), else from what the CLI said.
fn classify(status: Option<u16>, text: &str) -> ActivityError {
    let lower = text.to_lowercase();
    let says = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    let auth = match status {
        Some(401 | 403) => true,
        Some(_) => false,
        None => says(&[
            "failed to authenticate",
            "authentication_error",
            "invalid api key",
            "oauth token",
            "/login",
            "not logged in",
        ]),
    };
    if auth {
        return permanent(
            failure_type::MODEL_REJECTED,
            format!(
                "Claude Code could not sign in with CLAUDE_CODE_OAUTH_TOKEN (make one with \
                 `claude setup-token`): {}",
                one_line(text)
            ),
        );
    }
    // Claude Code has retried it already; now every worker waits (see `governor`).
    if status == Some(429) || crate::governor::says_rate_limited(text) {
        return crate::errors::rate_limited(format!("Claude Code failed: {}", one_line(text)));
    }
    // The request itself is wrong (an unknown model, say): asking again will not help.
    if matches!(status, Some(400 | 404 | 413 | 422)) {
        return permanent(failure_type::MODEL_REJECTED, one_line(text));
    }
    retryable(format!("Claude Code failed: {}", one_line(text)), None)
}

fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 500 {
        let cut: String = line.chars().take(500).collect();
        format!("{cut}…")
    } else {
        line
    }
}

/// What the CLI's stream says, as the turn needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// Reply text, with the blank line between model calls already in place.
    Text(String),
    /// A complete tool call of the main conversation.
    ToolUse { name: String, input: Value },
}

/// Reads the CLI's stream-json lines into [`Event`]s.
///
/// With `--include-partial-messages` the text arrives as `stream_event` lines carrying the
/// Messages API's own events (`message_start`, `content_block_delta`, …), and each content
/// block is then repeated whole in an `assistant` line; tool calls are taken from those, where
/// their input is complete. Text of a message that came without partial events (the CLI falls
/// back to a non-streaming request when a stream fails) is taken from its `assistant` lines.
///
/// A stream that breaks off after some text was given out cannot be taken back: the CLI
/// abandons those blocks (`abandoned_blocks`) and asks again, so the reply would hold the
/// text twice. The parser then reports the run as broken, and the turn is retried whole.
///
/// Left out: messages of subagents (`parent_tool_use_id` set; there should be none, as the
/// CLI has no agent tool here) and the CLI's synthetic messages (model `<synthetic>`: its
/// error messages, which the `result` line repeats).
#[derive(Debug, Default)]
pub(crate) struct StreamParser {
    pending: VecDeque<Event>,
    /// The message whose partial events are arriving.
    streaming: Option<String>,
    /// Text given out per message: (from partial events, confirmed by `assistant` lines).
    texts: Vec<(String, String, String)>,
    /// The message the last text came from.
    last_text_message: Option<String>,
    /// The MCP server's status at start-up, if not connected.
    pub mcp_problem: Option<String>,
    /// Text was given out that the CLI then abandoned.
    pub broken: Option<String>,
    pub finished: Option<Finished>,
}

impl StreamParser {
    pub(crate) fn handle(&mut self, message: &Value) {
        let top_level = message.get("parent_tool_use_id").is_none_or(Value::is_null);
        match str_at(message, "type") {
            "system" if str_at(message, "subtype") == "init" => self.init(message),
            "stream_event" if top_level => self.stream_event(message),
            "assistant" if top_level => self.assistant(message),
            "result" => {
                self.check_confirmed();
                self.finished = Some(Finished::parse(message));
            }
            _ => {}
        }
    }

    fn init(&mut self, message: &Value) {
        let servers = message
            .get("mcp_servers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for server in servers {
            let status = str_at(server, "status");
            if str_at(server, "name") == MCP_SERVER && status != "connected" {
                self.mcp_problem = Some(status.to_owned());
            }
        }
    }

    fn stream_event(&mut self, message: &Value) {
        let event = message.get("event").unwrap_or(&Value::Null);
        match str_at(event, "type") {
            "message_start" => {
                let id = event
                    .pointer("/message/id")
                    .and_then(Value::as_str)
                    .or_else(|| message.get("api_message_id").and_then(Value::as_str))
                    .unwrap_or_default();
                self.streaming = Some(id.to_owned());
            }
            "content_block_delta" => {
                let delta = event.get("delta").unwrap_or(&Value::Null);
                if str_at(delta, "type") == "text_delta" {
                    let id = message
                        .get("api_message_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or_else(|| self.streaming.clone())
                        .unwrap_or_default();
                    let piece = str_at(delta, "text");
                    self.entry(&id).1.push_str(piece);
                    self.text(&id, piece);
                }
            }
            "message_stop" => {
                if message
                    .get("abandoned_blocks")
                    .is_some_and(|b| !b.is_null())
                {
                    self.check_confirmed();
                }
                self.streaming = None;
            }
            _ => {}
        }
    }

    fn assistant(&mut self, message: &Value) {
        let inner = message.get("message").unwrap_or(&Value::Null);
        if str_at(inner, "model") == "<synthetic>" {
            return;
        }
        let id = str_at(inner, "id").to_owned();
        let blocks = inner
            .get("content")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for block in blocks {
            match str_at(block, "type") {
                "text" => {
                    let text = str_at(block, "text");
                    let (_, streamed, confirmed) = self.entry(&id);
                    let unstreamed = streamed.is_empty();
                    confirmed.push_str(text);
                    if unstreamed {
                        self.text(&id, text);
                    }
                }
                "tool_use" => self.pending.push_back(Event::ToolUse {
                    name: str_at(block, "name").to_owned(),
                    input: block.get("input").cloned().unwrap_or_else(|| json!({})),
                }),
                _ => {}
            }
        }
    }

    /// The text given out for message `id`, from partial events and from `assistant` lines.
    fn entry(&mut self, id: &str) -> &mut (String, String, String) {
        let at = match self.texts.iter().position(|(m, _, _)| m == id) {
            Some(at) => at,
            None => {
                self.texts
                    .push((id.to_owned(), String::new(), String::new()));
                self.texts.len() - 1
            }
        };
        &mut self.texts[at]
    }

    /// Marks the run broken if text streamed for a message was not what the message said.
    fn check_confirmed(&mut self) {
        if self.broken.is_some() {
            return;
        }
        let abandoned = self
            .texts
            .iter()
            .find(|(_, streamed, confirmed)| !streamed.is_empty() && streamed != confirmed);
        if let Some((id, _, _)) = abandoned {
            self.broken = Some(format!(
                "Claude Code's reply broke off mid-stream (message {id}) and was asked again"
            ));
        }
    }

    fn text(&mut self, id: &str, piece: &str) {
        if piece.is_empty() {
            return;
        }
        let mut chunk = String::new();
        if self.last_text_message.as_deref() != Some(id) {
            if self.last_text_message.is_some() {
                // Text of separate model calls is separated by a blank line, as on the API
                // path.
                chunk.push_str("\n\n");
            }
            self.last_text_message = Some(id.to_owned());
        }
        chunk.push_str(piece);
        self.pending.push_back(Event::Text(chunk));
    }
}

/// The CLI's counts as the chat's. It caches its prompts: most of what the model read is in
/// the cache counts.
fn tokens(usage: &Usage) -> Tokens {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Tokens {
        input: count(usage.input_tokens),
        output: count(usage.output_tokens),
        cache_write: count(usage.cache_creation_input_tokens),
        cache_read: count(usage.cache_read_input_tokens),
    }
}

fn str_at<'v>(value: &'v Value, key: &str) -> &'v str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The conversation as one prompt: the history as a transcript (with the API path's notes of
/// proposals and merging), then the message to answer.
pub(crate) fn render_prompt(context: &TurnContext) -> String {
    let messages = api_messages(context);
    let text_of = |message: &ApiMessage| {
        message
            .content
            .iter()
            .filter_map(|b| match b {
                Block::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    let Some((last, history)) = messages.split_last() else {
        return context.message.content.clone();
    };
    if history.is_empty() {
        return text_of(last);
    }
    let mut prompt = String::from("The conversation so far:\n\n<conversation>\n");
    for message in history {
        let speaker = match message.role {
            ApiRole::User => "User",
            ApiRole::Assistant => "Assistant",
        };
        prompt.push_str(&format!("{speaker}: {}\n\n", text_of(message)));
    }
    prompt.push_str("</conversation>\n\nThe user's new message, to reply to now:\n\n");
    prompt.push_str(&text_of(last));
    prompt
}

/// The API path's system prompt, with the tool's name as the CLI gives it.
fn cli_system_prompt(context: &TurnContext) -> String {
    format!(
        "{}\n\nThe `{PROPOSE_TASK}` tool is called `{}` here. You have no other tools.",
        system_prompt(context),
        propose_tool_name()
    )
}

impl ChatActivities {
    /// One turn through the CLI, streaming its text into reply `reply_id` and storing its
    /// proposals. The text streamed is exactly the text returned.
    pub(crate) async fn converse_cli(
        &self,
        cli: &ClaudeCli,
        user: &str,
        reply_id: &str,
        attempt: i64,
        context: &TurnContext,
    ) -> Result<Outcome, ActivityError> {
        let settings = self.settings();
        let command = cli.command(
            &settings.model,
            &cli_system_prompt(context),
            settings.max_model_calls,
            settings.max_tokens,
            true,
        )?;
        let mut run = cli.start(command, render_prompt(context))?;
        let (writer, pieces) = spawn_text_writer(
            self.store().clone(),
            user.to_string(),
            reply_id.to_string(),
            attempt,
            settings.flush_interval,
            settings.flush_chars,
        );
        let tool = propose_tool_name();
        let mut text = String::new();
        let mut proposals = Vec::new();
        let mut result = Ok(());
        loop {
            let event = match run.next().await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            match event {
                Event::Text(piece) => {
                    text.push_str(&piece);
                    if pieces.send(piece).is_err() {
                        result = Err(retryable(
                            "the reply could not be written to the event log",
                            None,
                        ));
                        break;
                    }
                }
                Event::ToolUse { name, input } if name == tool => {
                    match self.propose(user, reply_id, proposals.len(), &input).await {
                        Ok(Ok(proposal)) => proposals.push(proposal),
                        // The MCP server gave the model the same reason.
                        Ok(Err(reason)) => {
                            tracing::debug!(%reason, "an invalid proposal was not stored");
                        }
                        Err(error) => {
                            result = Err(error);
                            break;
                        }
                    }
                }
                Event::ToolUse { name, .. } => {
                    tracing::warn!(tool = %name, "Claude Code used a tool the chat does not offer");
                }
            }
        }
        if let Some(status) = &run.parser.mcp_problem {
            tracing::warn!(
                %status,
                "the chat's MCP server (`mainloop mcp`) did not connect: the model could not \
                 propose tasks"
            );
        }
        let finished = match result {
            Ok(()) => run.finish().await,
            // Dropping the run kills the CLI.
            Err(error) => Err(error),
        };
        drop(pieces);
        let written = writer.await.map_err(|e| retryable(e.to_string(), None))?;
        let finished = finished?;
        written.map_err(store_error)?;
        tracing::debug!(usage = ?finished.usage, "chat turn through Claude Code");
        if text.trim().is_empty() && !proposals.is_empty() {
            text = PROPOSED_WITHOUT_A_WORD.to_string();
        }
        Ok(Outcome {
            text,
            proposals,
            tokens: tokens(&finished.usage),
            // 0 means the CLI reported none: priced from the tokens then.
            cost_usd: Some(finished.usage.cost_usd).filter(|cost| *cost > 0.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[Value]) -> StreamParser {
        let mut parser = StreamParser::default();
        for line in lines {
            parser.handle(line);
        }
        parser
    }

    fn stream(id: &str, event: Value) -> Value {
        json!({"type": "stream_event", "parent_tool_use_id": null, "api_message_id": id,
               "event": event})
    }

    fn start(id: &str) -> Value {
        stream(id, json!({"type": "message_start", "message": {"id": id}}))
    }

    fn delta(id: &str, text: &str) -> Value {
        stream(
            id,
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": text}}),
        )
    }

    fn assistant(id: &str, block: Value) -> Value {
        json!({"type": "assistant", "parent_tool_use_id": null,
               "message": {"id": id, "model": "claude-haiku-4-5", "content": [block]}})
    }

    fn events(parser: &StreamParser) -> Vec<Event> {
        parser.pending.iter().cloned().collect()
    }

    #[test]
    fn partial_text_streams_and_tool_calls_come_from_whole_messages() {
        let tool = propose_tool_name();
        let parser = parse(&[
            json!({"type": "system", "subtype": "init", "mcp_servers": [
                {"name": "mainloop", "status": "connected"}]}),
            start("msg_1"),
            delta("msg_1", "I'll "),
            delta("msg_1", "set that up."),
            assistant(
                "msg_1",
                json!({"type": "text", "text": "I'll set that up."}),
            ),
            assistant(
                "msg_1",
                json!({"type": "tool_use", "id": "toolu_1", "name": tool, "input": {"title": "t"}}),
            ),
            stream("msg_1", json!({"type": "message_stop"})),
            json!({"type": "user", "message": {"content": [{"type": "tool_result"}]}}),
            start("msg_2"),
            delta("msg_2", "Done."),
            // A subagent's text is not the reply.
            json!({"type": "stream_event", "parent_tool_use_id": "toolu_9", "event": {
                "type": "content_block_delta", "delta": {"type": "text_delta", "text": "no"}}}),
            assistant("msg_2", json!({"type": "text", "text": "Done."})),
            json!({"type": "result", "subtype": "success", "is_error": false, "result": "Done.",
                   "usage": {"input_tokens": 10, "cache_read_input_tokens": 5,
                             "output_tokens": 7}, "total_cost_usd": 0.25}),
        ]);
        assert_eq!(
            events(&parser),
            [
                Event::Text("I'll ".into()),
                Event::Text("set that up.".into()),
                Event::ToolUse {
                    name: tool,
                    input: json!({"title": "t"})
                },
                Event::Text("\n\nDone.".into()),
            ]
        );
        assert_eq!(parser.mcp_problem, None);
        assert_eq!(parser.broken, None);
        let finished = parser.finished.unwrap_or_else(|| panic!("no result"));
        assert!(!finished.is_error);
        let tokens = tokens(&finished.usage);
        assert_eq!((tokens.input, tokens.cache_read, tokens.output), (10, 5, 7));
        assert_eq!(finished.usage.cost_usd, 0.25);
    }

    #[test]
    fn text_without_partial_messages_comes_from_whole_messages() {
        let parser = parse(&[
            json!({"type": "system", "subtype": "init", "mcp_servers": [
                {"name": "mainloop", "status": "failed"}]}),
            assistant("msg_1", json!({"type": "text", "text": "One."})),
            assistant("msg_2", json!({"type": "text", "text": "Two."})),
            // The CLI's own error message, which the result repeats.
            json!({"type": "assistant", "message": {"id": "x", "model": "<synthetic>",
                "content": [{"type": "text", "text": "API Error: 500"}]}}),
            json!({"type": "result", "subtype": "error_during_execution", "is_error": true,
                   "errors": ["boom", "bang"], "api_error_status": 500}),
        ]);
        assert_eq!(
            events(&parser),
            [Event::Text("One.".into()), Event::Text("\n\nTwo.".into())]
        );
        assert_eq!(parser.mcp_problem.as_deref(), Some("failed"));
        let finished = parser.finished.unwrap_or_else(|| panic!("no result"));
        assert!(finished.is_error);
        assert_eq!(finished.text, "boom; bang");
        assert_eq!(finished.api_error_status, Some(500));
    }

    #[test]
    fn text_the_cli_abandons_breaks_the_run() {
        let parser = parse(&[
            start("msg_1"),
            delta("msg_1", "Working "),
            stream("msg_1", json!({"type": "message_stop"})),
        ]);
        assert_eq!(
            parser.broken, None,
            "a stop without abandoned blocks is no break"
        );
        let mut parser = parse(&[
            start("msg_1"),
            delta("msg_1", "Working "),
            json!({"type": "stream_event", "parent_tool_use_id": null, "api_message_id": "msg_1",
                   "event": {"type": "message_stop"},
                   "abandoned_blocks": {"api_message_id": "msg_1", "from_block_index": 0}}),
        ]);
        assert!(parser.broken.is_some());
        // Also when the CLI does not say so: text streamed that no message confirmed.
        parser = parse(&[
            start("msg_1"),
            delta("msg_1", "Working "),
            assistant(
                "msg_2",
                json!({"type": "text", "text": "Working through it."}),
            ),
            json!({"type": "result", "subtype": "success", "is_error": false}),
        ]);
        assert!(parser.broken.is_some());
    }

    #[test]
    fn failures_are_classified_for_retries() {
        let is_permanent = |status: Option<u16>, text: &str| match classify(status, text) {
            ActivityError::Application(failure) => failure.is_non_retryable(),
            _ => false,
        };
        assert!(is_permanent(
            Some(401),
            "Failed to authenticate. API Error: 401 invalid token"
        ));
        assert!(is_permanent(None, "Invalid API key · Please run /login"));
        assert!(is_permanent(Some(404), "API Error: 404 model not found"));
        assert!(!is_permanent(Some(529), "API Error: 529 Overloaded"));
        assert!(!is_permanent(Some(429), "rate limited"));
        let rate_limited = |status: Option<u16>, text: &str| {
            crate::errors::rate_limit_message(&classify(status, text)).is_some()
        };
        assert!(rate_limited(Some(429), "API Error: 429"));
        assert!(rate_limited(None, "API Error: Request rejected (429)"));
        assert!(!rate_limited(Some(529), "API Error: 529 Overloaded"));
        assert!(!is_permanent(
            None,
            "API Error: Connection dropped (ECONNRESET)"
        ));
    }

    #[test]
    fn the_prompt_is_the_message_alone_or_after_a_transcript() {
        use mainloop_store::{Message, MessageKind, MessageStatus, Role};
        let message = |role: Role, content: &str| Message {
            id: content.to_string(),
            seq: 0,
            role,
            kind: MessageKind::Chat,
            content: content.to_string(),
            status: MessageStatus::Complete,
            reply_to: None,
            created_at: chrono::Utc::now(),
            completed_at: None,
            usage: None,
            proposals: Vec::new(),
            task_id: None,
        };
        let mut context = TurnContext {
            message: message(Role::User, "and now?"),
            existing_reply: None,
            summary: String::new(),
            history: Vec::new(),
            recent_repos: Vec::new(),
        };
        assert_eq!(render_prompt(&context), "and now?");
        context.history = vec![message(Role::User, "hi"), message(Role::Assistant, "hello")];
        let prompt = render_prompt(&context);
        assert!(
            prompt.contains("<conversation>\nUser: hi\n\nAssistant: hello\n\n</conversation>"),
            "{prompt}"
        );
        assert!(prompt.ends_with("\n\nand now?"), "{prompt}");
    }
}
