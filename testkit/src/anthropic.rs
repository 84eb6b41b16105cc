//! A fake of the Anthropic Messages API (`https://api.anthropic.com`), faithful at the wire.
//!
//! This module owns:
//! - an HTTP server answering `POST /v1/messages` (a JSON `message`, or server-sent events when
//!   `"stream": true`) and `POST /v1/messages/count_tokens`, with the real shapes, headers and
//!   status codes, and the real error body for everything else;
//! - validation that rejects what the real API rejects (authentication, headers, body shape,
//!   tool-use pairing), so a client that passes against the fake does not fail against the
//!   real service for a malformed request;
//! - scripting: a FIFO of [`Reply`]s consumed one per accepted request, then a default
//!   responder, plus delays, mid-stream errors and abrupt hang-ups;
//! - a record of every request received, rejected ones included, that tests can wait on.
//!
//! It is used both by our own Messages client's tests and by runs of the real Claude Code CLI
//! pointed at it with `ANTHROPIC_BASE_URL`.

use crate::server::{self, Server};
use std::collections::VecDeque;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How logs and errors name this fake.
const NAME: &str = "the fake Anthropic API";

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The `x-api-key` the fake accepts unless told otherwise.
pub const DEFAULT_API_KEY: &str = "test-anthropic-key";
/// The `Authorization: Bearer` token the fake accepts unless told otherwise.
pub const DEFAULT_OAUTH_TOKEN: &str = "test-oauth-token";

/// The real API's limit for the Messages and token-counting endpoints.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// `anthropic-version` values the real API accepts.
const API_VERSIONS: [&str; 2] = ["2023-06-01", "2023-01-01"];

// ---------------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------------

/// A running fake Anthropic API. Clones share one server, which stops when the last clone is
/// dropped or on [`FakeAnthropic::shutdown`]; stopping cuts any response still streaming.
#[derive(Clone)]
pub struct FakeAnthropic {
    handle: Arc<ServerHandle>,
}

/// Owned only by [`FakeAnthropic`] clones (the server's tasks hold [`FakeState`] instead), so
/// its drop marks the moment no test can script or inspect the server any more.
struct ServerHandle {
    state: Arc<FakeState>,
    server: Server,
}

struct FakeState {
    api_key: String,
    oauth_token: String,
    stop: CancellationToken,
    script: Mutex<Script>,
    log: Mutex<Vec<RecordedRequest>>,
    /// How many requests `log` holds; a watch so waiters need no polling.
    logged: watch::Sender<usize>,
}

type Responder = dyn Fn(&RecordedRequest) -> Reply + Send + Sync;

struct Script {
    queue: VecDeque<Reply>,
    default: Arc<Responder>,
    first_token_delay: Duration,
    token_delay: Duration,
}

/// Configures a [`FakeAnthropic`] before it starts.
#[derive(Debug, Clone)]
pub struct FakeAnthropicBuilder {
    addr: SocketAddr,
    api_key: String,
    oauth_token: String,
}

impl Default for FakeAnthropicBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_key: DEFAULT_API_KEY.to_owned(),
            oauth_token: DEFAULT_OAUTH_TOKEN.to_owned(),
        }
    }
}

impl FakeAnthropicBuilder {
    /// Where to listen; port 0 picks a free port.
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The `x-api-key` to accept.
    #[must_use]
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = key.into();
        self
    }

    /// The `Authorization: Bearer` token to accept.
    #[must_use]
    pub fn oauth_token(mut self, token: impl Into<String>) -> Self {
        self.oauth_token = token.into();
        self
    }

    /// Binds and starts serving.
    ///
    /// # Errors
    /// If the address cannot be bound (e.g. a fixed port already in use).
    pub async fn start(self) -> anyhow::Result<FakeAnthropic> {
        let (listener, addr) = server::bind(NAME, self.addr).await?;
        let stop = CancellationToken::new();
        let (logged, _) = watch::channel(0);
        let state = Arc::new(FakeState {
            api_key: self.api_key,
            oauth_token: self.oauth_token,
            stop: stop.clone(),
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: Arc::new(echo_reply),
                first_token_delay: Duration::ZERO,
                token_delay: Duration::ZERO,
            }),
            log: Mutex::new(Vec::new()),
            logged,
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let server = Server::serve(NAME, listener, addr, app, stop);
        Ok(FakeAnthropic {
            handle: Arc::new(ServerHandle { state, server }),
        })
    }
}

impl FakeAnthropic {
    pub fn builder() -> FakeAnthropicBuilder {
        FakeAnthropicBuilder::default()
    }

    /// Starts on `127.0.0.1` at a free port, with the default credentials.
    ///
    /// # Errors
    /// If no port can be bound.
    pub async fn start() -> anyhow::Result<FakeAnthropic> {
        Self::builder().start().await
    }

    /// Starts on a fixed address, with the default credentials.
    ///
    /// # Errors
    /// If the address cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<FakeAnthropic> {
        Self::builder().addr(addr).start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.server.addr()
    }

    /// `http://HOST:PORT`, without a trailing slash or `/v1`, as `ANTHROPIC_BASE_URL` expects.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.handle.server.addr())
    }

    pub fn api_key(&self) -> &str {
        &self.handle.state.api_key
    }

    pub fn oauth_token(&self) -> &str {
        &self.handle.state.oauth_token
    }

    /// Queues a reply for the next accepted `POST /v1/messages`. Rejected requests and token
    /// counts do not consume replies.
    pub fn push(&self, reply: Reply) {
        lock(&self.handle.state.script).queue.push_back(reply);
    }

    /// How many pushed replies no request has consumed yet.
    pub fn pending_replies(&self) -> usize {
        lock(&self.handle.state.script).queue.len()
    }

    /// Answers accepted requests once the queue is empty. The request it is given is not yet
    /// answered, so its `status` is 0. The responder must not hold a [`FakeAnthropic`] clone:
    /// the server would then own its own handle and never stop.
    pub fn set_default(
        &self,
        responder: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) {
        lock(&self.handle.state.script).default = Arc::new(responder);
    }

    /// Delay between content deltas for replies that do not set their own.
    pub fn set_token_delay(&self, delay: Duration) {
        lock(&self.handle.state.script).token_delay = delay;
    }

    /// Delay before the first content delta for replies that do not set their own.
    pub fn set_first_token_delay(&self, delay: Duration) {
        lock(&self.handle.state.script).first_token_delay = delay;
    }

    /// Every request received since the start or the last [`clear_requests`], in the order
    /// they were answered, rejected ones included.
    ///
    /// [`clear_requests`]: FakeAnthropic::clear_requests
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.handle.state.log).clone()
    }

    pub fn clear_requests(&self) {
        let mut log = lock(&self.handle.state.log);
        log.clear();
        self.handle.state.logged.send_replace(0);
    }

    /// Waits until at least `n` requests are recorded (counting from the last
    /// [`clear_requests`](FakeAnthropic::clear_requests)) and returns them all.
    ///
    /// # Errors
    /// On timeout, naming the requests that did arrive.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RecordedRequest>> {
        let mut logged = self.handle.state.logged.subscribe();
        // The borrow `wait_for` returns is dropped at once: holding it while `requests` takes
        // the log lock would invert the order the recorder takes them in.
        let waited = tokio::time::timeout(timeout, async {
            logged.wait_for(|count| *count >= n).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(self.requests()),
            Ok(Err(_)) => {
                anyhow::bail!("the fake Anthropic API stopped while waiting for {n} requests")
            }
            Err(_) => {
                let seen = self.requests();
                let summary: Vec<String> = seen
                    .iter()
                    .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
                    .collect();
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {n} requests to the fake Anthropic API; \
                     got {}: {summary:?}",
                    seen.len()
                )
            }
        }
    }

    /// Stops the server now, cutting open streams, and waits for it to close its socket.
    pub async fn shutdown(&self) {
        self.handle.server.shutdown().await;
    }
}

impl fmt::Debug for FakeAnthropic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeAnthropic")
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock leaves data that is still consistent:
    // every critical section here is a single push, pop or clone.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn echo_reply(request: &RecordedRequest) -> Reply {
    Reply::text(format!(
        "Echo: {}",
        request.last_user_text().unwrap_or_default()
    ))
}

// ---------------------------------------------------------------------------------------------
// Scripting: replies
// ---------------------------------------------------------------------------------------------

/// Why the scripted message stopped, as reported in `stop_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    PauseTurn,
    Refusal,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::ToolUse => "tool_use",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::PauseTurn => "pause_turn",
            StopReason::Refusal => "refusal",
        }
    }
}

/// What the fake answers one accepted `POST /v1/messages` with.
#[derive(Debug, Clone)]
pub struct Reply {
    kind: ReplyKind,
    first_token_delay: Option<Duration>,
    token_delay: Option<Duration>,
    usage: Option<(u64, u64)>,
    /// Prompt-cache writes and reads.
    cache: (u64, u64),
    headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
enum ReplyKind {
    Message {
        blocks: Vec<Block>,
        stop_reason: StopReason,
    },
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
    /// Starts a message, streams `deltas` filler text deltas, then breaks off.
    Cut { deltas: usize, how: Cut },
}

#[derive(Debug, Clone)]
enum Cut {
    /// An `event: error` frame, then a clean end of the response.
    ErrorEvent { error_type: String },
    /// The connection is dropped with the body unfinished.
    HangUp,
}

#[derive(Debug, Clone)]
enum Block {
    Text(String),
    Thinking {
        thinking: String,
        signature: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

impl Reply {
    fn new(kind: ReplyKind) -> Self {
        Self {
            kind,
            first_token_delay: None,
            token_delay: None,
            usage: None,
            cache: (0, 0),
            headers: Vec::new(),
        }
    }

    /// An assistant text answer; `stop_reason` `end_turn`.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(ReplyKind::Message {
            blocks: vec![Block::Text(text.into())],
            stop_reason: StopReason::EndTurn,
        })
    }

    /// A `tool_use` block with a fresh `toolu_…` id; `stop_reason` `tool_use`.
    pub fn tool_use(name: impl Into<String>, input: Value) -> Self {
        Self::new(ReplyKind::Message {
            blocks: vec![tool_use_block(name.into(), input)],
            stop_reason: StopReason::ToolUse,
        })
    }

    /// An HTTP error with the real body shape, e.g. `(429, "rate_limit_error", "slow down")`.
    pub fn error(status: u16, error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ReplyKind::Error {
            status,
            error_type: error_type.into(),
            message: message.into(),
        })
    }

    /// HTTP 529 `overloaded_error`, as the real API answers under load.
    pub fn overloaded() -> Self {
        Self::error(529, "overloaded_error", "Overloaded")
    }

    /// Streams `n_tokens` text deltas, then an `event: error` frame of `error_type` (as the real
    /// API does when it fails after answering 200), then ends the response. A non-streaming
    /// request gets the HTTP error that `error_type` stands for instead.
    pub fn stream_error_after(n_tokens: usize, error_type: impl Into<String>) -> Self {
        Self::new(ReplyKind::Cut {
            deltas: n_tokens,
            how: Cut::ErrorEvent {
                error_type: error_type.into(),
            },
        })
    }

    /// Streams `n_tokens` text deltas, then drops the connection without `message_stop`. A
    /// non-streaming request has its connection dropped before any response.
    pub fn hang_up_after(n_tokens: usize) -> Self {
        Self::new(ReplyKind::Cut {
            deltas: n_tokens,
            how: Cut::HangUp,
        })
    }

    /// Adds a text block before the first `tool_use` block (or at the end if there is none).
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        if let ReplyKind::Message { blocks, .. } = &mut self.kind {
            let at = blocks
                .iter()
                .position(|b| matches!(b, Block::ToolUse { .. }))
                .unwrap_or(blocks.len());
            blocks.insert(at, Block::Text(text.into()));
        }
        self
    }

    /// Adds another `tool_use` block (parallel tool calls); `stop_reason` becomes `tool_use`.
    #[must_use]
    pub fn and_tool_use(mut self, name: impl Into<String>, input: Value) -> Self {
        if let ReplyKind::Message {
            blocks,
            stop_reason,
        } = &mut self.kind
        {
            blocks.push(tool_use_block(name.into(), input));
            *stop_reason = StopReason::ToolUse;
        }
        self
    }

    /// Puts a `thinking` block (with a made-up signature) first, as extended thinking does.
    #[must_use]
    pub fn with_thinking(mut self, thinking: impl Into<String>) -> Self {
        if let ReplyKind::Message { blocks, .. } = &mut self.kind {
            blocks.insert(
                0,
                Block::Thinking {
                    thinking: thinking.into(),
                    signature: format!("sig_{}", new_id("")),
                },
            );
        }
        self
    }

    #[must_use]
    pub fn with_stop_reason(mut self, reason: StopReason) -> Self {
        if let ReplyKind::Message { stop_reason, .. } = &mut self.kind {
            *stop_reason = reason;
        }
        self
    }

    /// Sets the `retry-after` header (seconds), as the real API does on 429 and 529.
    #[must_use]
    pub fn retry_after(self, secs: u64) -> Self {
        self.with_header("retry-after", secs.to_string())
    }

    /// Adds a response header (e.g. `anthropic-ratelimit-*`).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Delay before the first content delta (for a non-streaming request: before answering).
    #[must_use]
    pub fn with_first_token_delay(mut self, delay: Duration) -> Self {
        self.first_token_delay = Some(delay);
        self
    }

    /// Delay between content deltas (text is streamed one word-ish chunk per delta).
    #[must_use]
    pub fn with_token_delay(mut self, delay: Duration) -> Self {
        self.token_delay = Some(delay);
        self
    }

    /// Reports these token counts instead of the estimate from the characters sent.
    #[must_use]
    pub fn with_usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage = Some((input_tokens, output_tokens));
        self
    }

    /// Reports prompt-cache writes and reads (`cache_creation_input_tokens`,
    /// `cache_read_input_tokens`) besides the other tokens.
    #[must_use]
    pub fn with_cache_usage(mut self, written: u64, read: u64) -> Self {
        self.cache = (written, read);
        self
    }

    /// The text of this reply's text blocks, joined; empty for errors and cut streams.
    pub fn text_content(&self) -> String {
        match &self.kind {
            ReplyKind::Message { blocks, .. } => blocks
                .iter()
                .filter_map(|b| match b {
                    Block::Text(text) => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }

    /// `(name, input)` of this reply's `tool_use` blocks, in order.
    pub fn tool_uses(&self) -> Vec<(String, Value)> {
        match &self.kind {
            ReplyKind::Message { blocks, .. } => blocks
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { name, input, .. } => Some((name.clone(), input.clone())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The ids of this reply's `tool_use` blocks, for building the `tool_result`s that follow.
    pub fn tool_use_ids(&self) -> Vec<String> {
        match &self.kind {
            ReplyKind::Message { blocks, .. } => blocks
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn tool_use_block(name: String, input: Value) -> Block {
    Block::ToolUse {
        id: new_id("toolu_"),
        name,
        input,
    }
}

/// An id shaped like the real ones (`msg_01…`, `toolu_01…`, `req_01…`): base58 after `01`.
fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut bits = uuid::Uuid::new_v4().as_u128();
    let mut id = format!("{prefix}01");
    for _ in 0..22 {
        let digit = usize::try_from(bits % 58).unwrap_or(0);
        id.push(char::from(ALPHABET.get(digit).copied().unwrap_or(b'1')));
        bits /= 58;
    }
    id
}

// ---------------------------------------------------------------------------------------------
// Recorded requests
// ---------------------------------------------------------------------------------------------

/// One request as the fake received it, and how it answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path without the query string (the CLI calls `/v1/messages?beta=true`).
    pub path: String,
    pub query: Option<String>,
    /// Header names are lower-case; values that are not UTF-8 are decoded lossily.
    pub headers: Vec<(String, String)>,
    /// The parsed body, or `Null` if it was not JSON.
    pub body: Value,
    /// The HTTP status the fake answered with: 200 for streams that later broke off, 0 if it
    /// hung up without answering.
    pub status: u16,
    /// The error message the fake answered with, if it answered with an error.
    pub error: Option<String>,
    /// When the request arrived (wall clock, to compare with times the system under test
    /// stores, such as the end of a rate-limit block).
    pub received_at: std::time::SystemTime,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The text of the last `user` message: its string content, or its text blocks joined
    /// with newlines (tool results are not text). `None` if it has no text.
    pub fn last_user_text(&self) -> Option<String> {
        let last = self
            .messages()
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
        match last.get("content")? {
            Value::String(text) => Some(text.clone()),
            Value::Array(blocks) => {
                let texts: Vec<&str> = blocks.iter().filter_map(text_of_block).collect();
                (!texts.is_empty()).then(|| texts.join("\n"))
            }
            _ => None,
        }
    }

    /// The text of the first message: for a Claude Code session, the prompt it was started
    /// with.
    pub fn first_user_text(&self) -> String {
        self.messages()
            .first()
            .map(content_text)
            .unwrap_or_default()
    }

    /// The first `tool_result` block of the last message: what the model is told of the
    /// tool it called, if it is being told that.
    pub fn last_tool_result(&self) -> Option<&Value> {
        self.messages()
            .last()
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
            .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_result"))
    }

    /// Whether the model is being told the result of a tool it called.
    pub fn after_tool(&self) -> bool {
        self.last_tool_result().is_some()
    }

    /// The system prompt as one string (text blocks joined with newlines); empty if none.
    pub fn system_text(&self) -> String {
        text_or_blocks(self.body.get("system"))
    }

    pub fn is_streaming(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool) == Some(true)
    }

    pub fn tool_names(&self) -> Vec<String> {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t.get("name").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every text in the messages, tool results' text included, joined with newlines.
    pub fn all_text(&self) -> String {
        let mut texts = Vec::new();
        for message in self.messages() {
            match message.get("content") {
                Some(Value::String(text)) => texts.push(text.clone()),
                Some(Value::Array(blocks)) => {
                    for block in blocks {
                        collect_block_text(block, &mut texts);
                    }
                }
                _ => {}
            }
        }
        texts.join("\n")
    }
}

/// The text of a message or a `tool_result` block: its string content, or its text blocks
/// joined with newlines.
pub fn content_text(message: &Value) -> String {
    text_or_blocks(message.get("content"))
}

/// The API's two shapes of text: a string, or an array of blocks whose text blocks count.
fn text_or_blocks(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(text_of_block)
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn text_of_block(block: &Value) -> Option<&str> {
    if block.get("type").and_then(Value::as_str) == Some("text") {
        block.get("text").and_then(Value::as_str)
    } else {
        None
    }
}

fn collect_block_text(block: &Value, texts: &mut Vec<String>) {
    if let Some(text) = text_of_block(block) {
        texts.push(text.to_owned());
    } else if block.get("type").and_then(Value::as_str) == Some("tool_result") {
        match block.get("content") {
            Some(Value::String(text)) => texts.push(text.clone()),
            Some(Value::Array(inner)) => {
                texts.extend(inner.iter().filter_map(text_of_block).map(str::to_owned));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP handling
// ---------------------------------------------------------------------------------------------

/// An error answer in the real API's shape.
#[derive(Debug, Clone)]
struct ApiError {
    status: StatusCode,
    error_type: String,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error_type: "invalid_request_error".to_owned(),
            message: message.into(),
        }
    }

    fn authentication(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error_type: "authentication_error".to_owned(),
            message: message.into(),
        }
    }

    fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error_type: "not_found_error".to_owned(),
            message: "Not Found".to_owned(),
        }
    }

    fn too_large() -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error_type: "request_too_large".to_owned(),
            message: format!("Request exceeds the maximum size of {MAX_BODY_BYTES} bytes"),
        }
    }

    fn scripted(status: u16, error_type: String, message: String) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            error_type,
            message,
        }
    }

    fn body(&self, request_id: &str) -> Value {
        json!({
            "type": "error",
            "error": {"type": self.error_type, "message": self.message},
            "request_id": request_id,
        })
    }
}

enum Endpoint {
    Messages,
    CountTokens,
}

/// How the fake answers, decided (and recorded) before any delay or streaming starts.
enum Answer {
    Json {
        status: StatusCode,
        body: Value,
        headers: Vec<(String, String)>,
        delay: Duration,
    },
    Stream {
        body: Body,
        headers: Vec<(String, String)>,
    },
    /// No response: the connection is dropped.
    HangUp,
}

impl Answer {
    fn error(error: &ApiError, request_id: &str, headers: Vec<(String, String)>) -> Self {
        Answer::Json {
            status: error.status,
            body: error.body(request_id),
            headers,
            delay: Duration::ZERO,
        }
    }

    /// The status to record: 0 for no response at all.
    fn recorded_status(&self) -> u16 {
        match self {
            Answer::Json { status, .. } => status.as_u16(),
            Answer::Stream { .. } => StatusCode::OK.as_u16(),
            Answer::HangUp => 0,
        }
    }
}

async fn handle(State(state): State<Arc<FakeState>>, request: Request) -> Response {
    let request_id = new_id("req_");
    let (parts, body) = request.into_parts();
    let mut record = RecordedRequest {
        received_at: std::time::SystemTime::now(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: Value::Null,
        status: 0,
        error: None,
    };

    let answer = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Err(_) => Answer::error(&ApiError::too_large(), &request_id, Vec::new()),
        Ok(bytes) => {
            record.body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            match accept(
                &state,
                &parts.method,
                parts.uri.path(),
                &parts.headers,
                &bytes,
            ) {
                Err(error) => Answer::error(&error, &request_id, Vec::new()),
                Ok((Endpoint::CountTokens, body)) => Answer::Json {
                    status: StatusCode::OK,
                    body: json!({"input_tokens": estimate_input_tokens(&body)}),
                    headers: Vec::new(),
                    delay: Duration::ZERO,
                },
                Ok((Endpoint::Messages, body)) => {
                    let reply = next_reply(&state, &record);
                    answer_messages(&state, &body, reply, &request_id)
                }
            }
        }
    };

    record.status = answer.recorded_status();
    if let Answer::Json { status, body, .. } = &answer
        && !status.is_success()
    {
        record.error = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    tracing::debug!(
        method = %record.method,
        path = %record.path,
        status = record.status,
        error = record.error.as_deref(),
        "fake Anthropic API answered"
    );
    state.record(record);
    respond(answer, &request_id, &state.stop).await
}

/// Everything that must hold before a request may consume a reply, in the order the real API
/// checks it: route, credentials, version, then the body.
fn accept(
    state: &FakeState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<(Endpoint, Value), ApiError> {
    let endpoint = match path {
        "/v1/messages" => Endpoint::Messages,
        "/v1/messages/count_tokens" => Endpoint::CountTokens,
        _ => return Err(ApiError::not_found()),
    };
    if method != Method::POST {
        return Err(ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            error_type: "invalid_request_error".to_owned(),
            message: format!("Method {method} is not allowed for {path}; use POST"),
        });
    }
    validation::authenticate(headers, &state.api_key, &state.oauth_token)?;
    validation::check_version(headers)?;
    let body = validation::parse_json_body(headers, bytes)?;
    match endpoint {
        Endpoint::Messages => validation::messages_request(&body)?,
        Endpoint::CountTokens => validation::count_tokens_request(&body)?,
    }
    Ok((endpoint, body))
}

impl FakeState {
    fn record(&self, request: RecordedRequest) {
        let mut log = lock(&self.log);
        log.push(request);
        // Sent under the log lock so the count never runs backwards between two recorders.
        self.logged.send_replace(log.len());
    }
}

/// The next reply, with the fake-wide delays filled in where it sets none.
fn next_reply(state: &FakeState, record: &RecordedRequest) -> Reply {
    let (scripted, default, first, between) = {
        let mut script = lock(&state.script);
        (
            script.queue.pop_front(),
            Arc::clone(&script.default),
            script.first_token_delay,
            script.token_delay,
        )
    };
    // The responder runs outside the lock so it may be slow or script further replies.
    let mut reply = scripted.unwrap_or_else(|| default(record));
    reply.first_token_delay.get_or_insert(first);
    reply.token_delay.get_or_insert(between);
    reply
}

fn answer_messages(state: &FakeState, body: &Value, reply: Reply, request_id: &str) -> Answer {
    let first_token_delay = reply.first_token_delay.unwrap_or_default();
    let token_delay = reply.token_delay.unwrap_or_default();
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let (blocks, stop_reason, cut) = match reply.kind {
        ReplyKind::Error {
            status,
            error_type,
            message,
        } => {
            let error = ApiError::scripted(status, error_type, message);
            return Answer::error(&error, request_id, reply.headers);
        }
        ReplyKind::Message {
            blocks,
            stop_reason,
        } => (blocks, stop_reason, None),
        ReplyKind::Cut { deltas, how } => {
            if !streaming {
                return match how {
                    Cut::HangUp => Answer::HangUp,
                    Cut::ErrorEvent { error_type } => {
                        let status = status_for_error_type(&error_type);
                        let message = message_for_error_type(&error_type);
                        let error = ApiError::scripted(status, error_type, message);
                        Answer::error(&error, request_id, reply.headers)
                    }
                };
            }
            (
                vec![Block::Text(filler_text(deltas))],
                StopReason::EndTurn,
                Some((deltas, how)),
            )
        }
    };
    let (input_tokens, output_tokens) = reply
        .usage
        .unwrap_or_else(|| (estimate_input_tokens(body), estimate_output_tokens(&blocks)));
    let message = Generated {
        id: new_id("msg_"),
        model,
        blocks,
        stop_reason,
        input_tokens,
        output_tokens,
        cache: reply.cache,
    };
    if streaming {
        let plan = StreamPlan {
            message,
            first_token_delay,
            token_delay,
            cut,
        };
        Answer::Stream {
            body: sse::body(plan, state.stop.clone()),
            headers: reply.headers,
        }
    } else {
        let deltas = message
            .blocks
            .iter()
            .flat_map(sse::deltas)
            .filter(|d| d.counts)
            .count();
        let delay = if deltas == 0 {
            Duration::ZERO
        } else {
            first_token_delay + token_delay * u32::try_from(deltas - 1).unwrap_or(u32::MAX)
        };
        Answer::Json {
            status: StatusCode::OK,
            body: message.to_json(),
            headers: reply.headers,
            delay,
        }
    }
}

async fn respond(answer: Answer, request_id: &str, stop: &CancellationToken) -> Response {
    let (status, body, content_type, extra) = match answer {
        Answer::Json {
            status,
            body,
            headers,
            delay,
        } => {
            if !delay.is_zero() {
                tokio::select! {
                    () = stop.cancelled() => return hang_up_response(),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            (
                status,
                Body::from(body.to_string()),
                "application/json",
                headers,
            )
        }
        Answer::Stream { body, headers } => (
            StatusCode::OK,
            body,
            "text/event-stream; charset=utf-8",
            headers,
        ),
        Answer::HangUp => return hang_up_response(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if content_type.starts_with("text/event-stream") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("request-id"), value);
    }
    for (name, value) in extra {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::warn!(%name, %value, "skipping a scripted header that is not valid HTTP"),
        }
    }
    response
}

/// A body that fails before its first byte, which makes hyper drop the connection without
/// writing the response head.
fn hang_up_response() -> Response {
    let failing = futures::stream::once(async { Err::<Bytes, _>(hang_up_error()) });
    let mut response = Response::new(Body::from_stream(failing));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn hang_up_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the fake Anthropic API hung up as scripted",
    )
}

fn status_for_error_type(error_type: &str) -> u16 {
    match error_type {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

fn message_for_error_type(error_type: &str) -> String {
    match error_type {
        "overloaded_error" => "Overloaded",
        "rate_limit_error" => "Rate limited",
        "api_error" => "Internal server error",
        _ => "Error",
    }
    .to_owned()
}

/// Text for replies that break off: `n` words, one delta each.
fn filler_text(words: usize) -> String {
    const WORDS: [&str; 9] = [
        "Working ", "through ", "the ", "request ", "one ", "step ", "at ", "a ", "time. ",
    ];
    WORDS.iter().cycle().take(words).copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Token estimates
// ---------------------------------------------------------------------------------------------

/// Roughly four characters a token, as the real tokenizer averages on English and code.
fn tokens_for_chars(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX).max(1)
}

fn estimate_input_tokens(body: &Value) -> u64 {
    let chars: usize = ["system", "messages", "tools"]
        .iter()
        .filter_map(|key| body.get(*key))
        .map(|value| value.to_string().chars().count())
        .sum();
    tokens_for_chars(chars)
}

fn estimate_output_tokens(blocks: &[Block]) -> u64 {
    let chars: usize = blocks
        .iter()
        .map(|block| match block {
            Block::Text(text) => text.chars().count(),
            Block::Thinking { thinking, .. } => thinking.chars().count(),
            Block::ToolUse { name, input, .. } => name.len() + input.to_string().chars().count(),
        })
        .sum();
    tokens_for_chars(chars)
}

// ---------------------------------------------------------------------------------------------
// Responses: the message object and its server-sent-event encoding
// ---------------------------------------------------------------------------------------------

/// A complete assistant message, before it is encoded as JSON or as events.
struct Generated {
    id: String,
    model: String,
    blocks: Vec<Block>,
    stop_reason: StopReason,
    input_tokens: u64,
    output_tokens: u64,
    cache: (u64, u64),
}

impl Generated {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks.iter().map(Block::to_json).collect::<Vec<_>>(),
            "stop_reason": self.stop_reason.as_str(),
            "stop_sequence": null,
            "usage": {
                "input_tokens": self.input_tokens,
                "cache_creation_input_tokens": self.cache.0,
                "cache_read_input_tokens": self.cache.1,
                "output_tokens": self.output_tokens,
                "service_tier": "standard",
            },
        })
    }
}

impl Block {
    fn to_json(&self) -> Value {
        match self {
            Block::Text(text) => json!({"type": "text", "text": text}),
            Block::Thinking {
                thinking,
                signature,
            } => json!({"type": "thinking", "thinking": thinking, "signature": signature}),
            Block::ToolUse { id, name, input } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        }
    }
}

struct StreamPlan {
    message: Generated,
    first_token_delay: Duration,
    token_delay: Duration,
    /// Break off after this many content deltas, and how.
    cut: Option<(usize, Cut)>,
}

mod sse {
    //! Encodes a [`Generated`](super::Generated) message as the real API's event stream: `message_start`,
    //! per block `content_block_start` / `content_block_delta`… / `content_block_stop` (with a
    //! `ping` after the first start), then `message_delta` and `message_stop`.

    use super::{Block, Cut, StreamPlan, hang_up_error};
    use axum::body::{Body, Bytes};
    use serde_json::{Value, json};
    use tokio_util::sync::CancellationToken;

    /// Tool input is streamed in pieces of about this many characters.
    const JSON_CHUNK_CHARS: usize = 12;

    fn frame(event: &str, data: &Value) -> Bytes {
        Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
    }

    /// One content delta; `counts` is false for deltas that carry no generated tokens.
    pub(super) struct Delta {
        pub(super) delta: Value,
        pub(super) counts: bool,
    }

    pub(super) fn deltas(block: &Block) -> Vec<Delta> {
        match block {
            Block::Text(text) => word_chunks(text)
                .into_iter()
                .map(|chunk| Delta {
                    delta: json!({"type": "text_delta", "text": chunk}),
                    counts: true,
                })
                .collect(),
            Block::Thinking {
                thinking,
                signature,
            } => word_chunks(thinking)
                .into_iter()
                .map(|chunk| Delta {
                    delta: json!({"type": "thinking_delta", "thinking": chunk}),
                    counts: true,
                })
                .chain(std::iter::once(Delta {
                    delta: json!({"type": "signature_delta", "signature": signature}),
                    counts: false,
                }))
                .collect(),
            Block::ToolUse { input, .. } => {
                // The real API opens tool input with an empty partial, then streams the JSON.
                let empty = Delta {
                    delta: json!({"type": "input_json_delta", "partial_json": ""}),
                    counts: false,
                };
                std::iter::once(empty)
                    .chain(
                        char_chunks(&input.to_string(), JSON_CHUNK_CHARS)
                            .into_iter()
                            .map(|chunk| Delta {
                                delta: json!({"type": "input_json_delta", "partial_json": chunk}),
                                counts: true,
                            }),
                    )
                    .collect()
            }
        }
    }

    fn start_shape(block: &Block) -> Value {
        match block {
            Block::Text(_) => json!({"type": "text", "text": ""}),
            Block::Thinking { .. } => json!({"type": "thinking", "thinking": "", "signature": ""}),
            Block::ToolUse { id, name, .. } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": {}})
            }
        }
    }

    /// Splits text into words, each keeping the whitespace after it, so the chunks
    /// concatenate back to exactly the text.
    fn word_chunks(text: &str) -> Vec<String> {
        let mut chunks = Vec::new();
        let mut current = String::new();
        let mut after_space = false;
        for ch in text.chars() {
            if ch.is_whitespace() {
                after_space = true;
            } else {
                if after_space && !current.trim().is_empty() {
                    chunks.push(std::mem::take(&mut current));
                }
                after_space = false;
            }
            current.push(ch);
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        chunks
    }

    fn char_chunks(text: &str, size: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars
            .chunks(size.max(1))
            .map(|c| c.iter().collect())
            .collect()
    }

    pub(super) fn body(plan: StreamPlan, stop: CancellationToken) -> Body {
        let StreamPlan {
            message,
            first_token_delay,
            token_delay,
            cut,
        } = plan;
        let stream = async_stream::stream! {
            let mut start = message.to_json();
            start["content"] = json!([]);
            start["stop_reason"] = Value::Null;
            start["usage"]["output_tokens"] = json!(1);
            yield Ok(frame("message_start", &json!({"type": "message_start", "message": start})));
            if message.blocks.is_empty() {
                yield Ok(frame("ping", &json!({"type": "ping"})));
            }

            let mut sent = 0_usize;
            for (index, block) in message.blocks.iter().enumerate() {
                yield Ok(frame(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index, "content_block": start_shape(block)}),
                ));
                if index == 0 {
                    yield Ok(frame("ping", &json!({"type": "ping"})));
                }
                for delta in deltas(block) {
                    if delta.counts {
                        if let Some((after, _)) = &cut && sent >= *after {
                            break;
                        }
                        let wait = if sent == 0 { first_token_delay } else { token_delay };
                        if !wait.is_zero() {
                            tokio::select! {
                                () = stop.cancelled() => {
                                    yield Err(hang_up_error());
                                    return;
                                }
                                () = tokio::time::sleep(wait) => {}
                            }
                        }
                        sent += 1;
                    }
                    yield Ok(frame(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index, "delta": delta.delta}),
                    ));
                }
                if cut.is_some() {
                    break;
                }
                yield Ok(frame("content_block_stop", &json!({"type": "content_block_stop", "index": index})));
            }

            match cut {
                None => {
                    yield Ok(frame(
                        "message_delta",
                        &json!({
                            "type": "message_delta",
                            "delta": {"stop_reason": message.stop_reason.as_str(), "stop_sequence": null},
                            "usage": {"output_tokens": message.output_tokens},
                        }),
                    ));
                    yield Ok(frame("message_stop", &json!({"type": "message_stop"})));
                }
                Some((_, Cut::ErrorEvent { error_type })) => {
                    let message = super::message_for_error_type(&error_type);
                    yield Ok(frame(
                        "error",
                        &json!({"type": "error", "error": {"type": error_type, "message": message}}),
                    ));
                }
                Some((_, Cut::HangUp)) => {
                    // Hyper flushes its buffer whenever the body is pending; without this
                    // pause it would meet the failure with everything still buffered and drop
                    // the connection before the client saw a byte of the partial stream.
                    tokio::task::yield_now().await;
                    yield Err(hang_up_error());
                }
            }
        };
        Body::from_stream(stream)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

mod validation {
    //! The checks the real API makes before generating anything, with its error messages
    //! where they are known (field errors are worded as its validator words them).

    use super::{API_VERSIONS, ApiError};
    use axum::body::Bytes;
    use axum::http::{HeaderMap, header};
    use serde_json::{Map, Value};
    use std::collections::HashSet;

    type Check = Result<(), ApiError>;

    /// Every top-level field of `POST /v1/messages`, beta fields included (the CLI calls the
    /// beta variant, `?beta=true`).
    const MESSAGES_FIELDS: &[&str] = &[
        "model",
        "messages",
        "max_tokens",
        "system",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "cache_control",
        "inference_geo",
        "output_config",
        "output_format",
        "speed",
    ];

    const COUNT_TOKENS_FIELDS: &[&str] = &[
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "mcp_servers",
        "context_management",
        "cache_control",
        "output_config",
        "output_format",
    ];

    const BLOCK_TYPES: &[&str] = &[
        "text",
        "image",
        "document",
        "search_result",
        "thinking",
        "redacted_thinking",
        "tool_use",
        "tool_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    ];

    const TOOL_RESULT_CONTENT_TYPES: &[&str] = &[
        "text",
        "image",
        "document",
        "search_result",
        "tool_reference",
    ];

    pub(super) fn authenticate(headers: &HeaderMap, api_key: &str, oauth_token: &str) -> Check {
        if let Some(key) = headers.get("x-api-key") {
            return if key.as_bytes() == api_key.as_bytes() {
                Ok(())
            } else {
                Err(ApiError::authentication("invalid x-api-key"))
            };
        }
        if let Some(authorization) = headers.get(header::AUTHORIZATION) {
            let token = authorization
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "));
            return if token == Some(oauth_token) {
                Ok(())
            } else {
                Err(ApiError::authentication("Invalid bearer token"))
            };
        }
        Err(ApiError::authentication("x-api-key header is required"))
    }

    pub(super) fn check_version(headers: &HeaderMap) -> Check {
        let Some(version) = headers.get("anthropic-version") else {
            return Err(ApiError::invalid("anthropic-version: header is required"));
        };
        let version = version.to_str().unwrap_or_default();
        if API_VERSIONS.contains(&version) {
            Ok(())
        } else {
            Err(ApiError::invalid(format!(
                "anthropic-version: invalid version '{version}'; the supported versions are {}",
                API_VERSIONS.join(", ")
            )))
        }
    }

    pub(super) fn parse_json_body(headers: &HeaderMap, bytes: &Bytes) -> Result<Value, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::invalid(format!(
                "content-type: expected application/json, got '{content_type}'"
            )));
        }
        let body: Value = serde_json::from_slice(bytes).map_err(|error| {
            ApiError::invalid(format!("The request body is not valid JSON: {error}"))
        })?;
        if body.is_object() {
            Ok(body)
        } else {
            Err(ApiError::invalid("Input should be a valid dictionary"))
        }
    }

    pub(super) fn messages_request(body: &Value) -> Check {
        let top = object(body, "")?;
        reject_extra_fields(top, MESSAGES_FIELDS, "")?;
        check_model(top)?;
        let max_tokens = match top.get("max_tokens") {
            None => return Err(field_required("max_tokens")),
            Some(value) => value
                .as_i64()
                .ok_or_else(|| invalid_type("max_tokens", "integer"))?,
        };
        let max_tokens = u64::try_from(max_tokens)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                ApiError::invalid("max_tokens: Input should be greater than or equal to 1")
            })?;
        check_messages(top.get("messages"))?;
        check_system(top)?;
        check_tools(top)?;
        check_tool_choice(top)?;
        check_thinking(top, Some(max_tokens))?;
        check_sampling(top)?;
        Ok(())
    }

    pub(super) fn count_tokens_request(body: &Value) -> Check {
        let top = object(body, "")?;
        reject_extra_fields(top, COUNT_TOKENS_FIELDS, "")?;
        check_model(top)?;
        check_messages(top.get("messages"))?;
        check_system(top)?;
        check_tools(top)?;
        check_tool_choice(top)?;
        check_thinking(top, None)?;
        Ok(())
    }

    // --- helpers -------------------------------------------------------------------------

    fn at(path: &str, key: impl std::fmt::Display) -> String {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    }

    fn field_required(path: &str) -> ApiError {
        ApiError::invalid(format!("{path}: Field required"))
    }

    fn invalid_type(path: &str, kind: &str) -> ApiError {
        ApiError::invalid(format!("{path}: Input should be a valid {kind}"))
    }

    fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ApiError> {
        value.as_object().ok_or_else(|| {
            if path.is_empty() {
                ApiError::invalid("Input should be a valid dictionary")
            } else {
                invalid_type(path, "dictionary")
            }
        })
    }

    fn reject_extra_fields(map: &Map<String, Value>, allowed: &[&str], path: &str) -> Check {
        match map.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(extra) => Err(ApiError::invalid(format!(
                "{}: Extra inputs are not permitted",
                at(path, extra)
            ))),
            None => Ok(()),
        }
    }

    fn required_str<'a>(
        map: &'a Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<&'a str, ApiError> {
        match map.get(key) {
            None => Err(field_required(&at(path, key))),
            Some(value) => value
                .as_str()
                .ok_or_else(|| invalid_type(&at(path, key), "string")),
        }
    }

    /// A present, non-null field; optional fields sent as `null` count as absent.
    fn optional<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
        map.get(key).filter(|value| !value.is_null())
    }

    fn check_model(top: &Map<String, Value>) -> Check {
        if required_str(top, "model", "")?.is_empty() {
            return Err(ApiError::invalid(
                "model: String should have at least 1 character",
            ));
        }
        Ok(())
    }

    // --- messages ------------------------------------------------------------------------

    /// One content block, with where it sits for error messages.
    struct Located<'a> {
        message: usize,
        block: usize,
        value: &'a Value,
    }

    impl Located<'_> {
        fn kind(&self) -> &str {
            self.value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
        }

        fn str_field(&self, key: &str) -> &str {
            self.value
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
        }
    }

    /// Consecutive messages of one role, which the real API merges into one turn.
    struct Turn<'a> {
        role: &'a str,
        first_message: usize,
        last_message: usize,
        blocks: Vec<Located<'a>>,
    }

    fn check_messages(messages: Option<&Value>) -> Check {
        let messages = match messages {
            None => return Err(field_required("messages")),
            Some(value) => value
                .as_array()
                .ok_or_else(|| invalid_type("messages", "list"))?,
        };
        if messages.is_empty() {
            return Err(ApiError::invalid(
                "messages: at least one message is required",
            ));
        }
        let mut turns: Vec<Turn<'_>> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let path = format!("messages.{i}");
            let map = object(message, &path)?;
            reject_extra_fields(map, &["role", "content"], &path)?;
            let role = required_str(map, "role", &path)?;
            if role != "user" && role != "assistant" {
                return Err(ApiError::invalid(format!(
                    "{path}.role: Input should be 'user' or 'assistant'"
                )));
            }
            let is_final_assistant = i + 1 == messages.len() && role == "assistant";
            let blocks = check_content(map.get("content"), i, role, is_final_assistant)?;
            match turns.last_mut() {
                Some(turn) if turn.role == role => {
                    turn.last_message = i;
                    turn.blocks.extend(blocks);
                }
                _ => turns.push(Turn {
                    role,
                    first_message: i,
                    last_message: i,
                    blocks,
                }),
            }
        }
        if turns.first().map(|t| t.role) != Some("user") {
            return Err(ApiError::invalid(
                "messages: first message must use the \"user\" role",
            ));
        }
        check_tool_pairing(&turns)
    }

    fn check_content<'a>(
        content: Option<&'a Value>,
        message: usize,
        role: &str,
        is_final_assistant: bool,
    ) -> Result<Vec<Located<'a>>, ApiError> {
        let path = format!("messages.{message}.content");
        let empty = || {
            ApiError::invalid(format!(
                "messages.{message}: all messages must have non-empty content except for the \
                 optional final assistant message"
            ))
        };
        let trailing_whitespace = || {
            ApiError::invalid(
                "messages: final assistant content cannot end with trailing whitespace",
            )
        };
        match content {
            None => Err(field_required(&path)),
            Some(Value::String(text)) => {
                if text.is_empty() && !is_final_assistant {
                    return Err(empty());
                }
                if is_final_assistant && text.ends_with(char::is_whitespace) {
                    return Err(trailing_whitespace());
                }
                Ok(Vec::new())
            }
            Some(Value::Array(blocks)) => {
                if blocks.is_empty() && !is_final_assistant {
                    return Err(empty());
                }
                let mut located = Vec::with_capacity(blocks.len());
                for (j, block) in blocks.iter().enumerate() {
                    check_block(block, &format!("{path}.{j}"), role)?;
                    located.push(Located {
                        message,
                        block: j,
                        value: block,
                    });
                }
                if is_final_assistant
                    && let Some(last) = blocks.last()
                    && last.get("type").and_then(Value::as_str) == Some("text")
                    && last
                        .get("text")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.ends_with(char::is_whitespace))
                {
                    return Err(trailing_whitespace());
                }
                Ok(located)
            }
            Some(_) => Err(invalid_type(&path, "list")),
        }
    }

    fn check_block(block: &Value, path: &str, role: &str) -> Check {
        let map = object(block, path)?;
        let kind = required_str(map, "type", path)?;
        if !BLOCK_TYPES.contains(&kind) {
            return Err(unknown_tag(path, kind, BLOCK_TYPES));
        }
        match kind {
            "text" if required_str(map, "text", path)?.is_empty() => {
                return Err(ApiError::invalid(
                    "messages: text content blocks must be non-empty",
                ));
            }
            "image" | "document" => {
                let source = map
                    .get("source")
                    .ok_or_else(|| field_required(&at(path, "source")))?;
                let source = object(source, &at(path, "source"))?;
                required_str(source, "type", &at(path, "source"))?;
            }
            "thinking" => {
                required_str(map, "thinking", path)?;
                required_str(map, "signature", path)?;
            }
            "redacted_thinking" => {
                required_str(map, "data", path)?;
            }
            "tool_use" => {
                if role != "assistant" {
                    return Err(ApiError::invalid(format!(
                        "{path}: `tool_use` blocks can only be in `assistant` messages"
                    )));
                }
                required_str(map, "id", path)?;
                required_str(map, "name", path)?;
                match map.get("input") {
                    None => return Err(field_required(&at(path, "input"))),
                    Some(input) => {
                        object(input, &at(path, "input"))?;
                    }
                }
            }
            "tool_result" => {
                if role != "user" {
                    return Err(ApiError::invalid(format!(
                        "{path}: `tool_result` blocks can only be in `user` messages"
                    )));
                }
                required_str(map, "tool_use_id", path)?;
                if let Some(is_error) = optional(map, "is_error")
                    && !is_error.is_boolean()
                {
                    return Err(invalid_type(&at(path, "is_error"), "boolean"));
                }
                match optional(map, "content") {
                    None | Some(Value::String(_)) => {}
                    Some(Value::Array(inner)) => {
                        for (k, item) in inner.iter().enumerate() {
                            let item_path = format!("{path}.content.{k}");
                            let item_map = object(item, &item_path)?;
                            let item_kind = required_str(item_map, "type", &item_path)?;
                            if !TOOL_RESULT_CONTENT_TYPES.contains(&item_kind) {
                                return Err(unknown_tag(
                                    &item_path,
                                    item_kind,
                                    TOOL_RESULT_CONTENT_TYPES,
                                ));
                            }
                            if item_kind == "text" {
                                required_str(item_map, "text", &item_path)?;
                            }
                        }
                    }
                    Some(_) => return Err(invalid_type(&at(path, "content"), "list")),
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn unknown_tag(path: &str, kind: &str, expected: &[&str]) -> ApiError {
        let expected: Vec<String> = expected.iter().map(|t| format!("'{t}'")).collect();
        ApiError::invalid(format!(
            "{path}: Input tag '{kind}' found using 'type' does not match any of the expected \
             tags: {}",
            expected.join(", ")
        ))
    }

    /// Every `tool_use` must be answered by a `tool_result` at the start of the next user
    /// turn, and every `tool_result` must answer a `tool_use` of the turn just before.
    fn check_tool_pairing(turns: &[Turn<'_>]) -> Check {
        let mut asked: Vec<&str> = Vec::new();
        for (t, turn) in turns.iter().enumerate() {
            if turn.role == "assistant" {
                asked = turn
                    .blocks
                    .iter()
                    .filter(|b| b.kind() == "tool_use")
                    .map(|b| b.str_field("id"))
                    .collect();
                let mut unique = HashSet::new();
                if let Some(dup) = asked.iter().find(|id| !unique.insert(**id)) {
                    return Err(ApiError::invalid(format!(
                        "messages.{}: `tool_use` ids must be unique; found {dup} twice",
                        turn.first_message
                    )));
                }
                let answered: HashSet<&str> = turns
                    .get(t + 1)
                    .map(|next| {
                        next.blocks
                            .iter()
                            .filter(|b| b.kind() == "tool_result")
                            .map(|b| b.str_field("tool_use_id"))
                            .collect()
                    })
                    .unwrap_or_default();
                let missing: Vec<&str> = asked
                    .iter()
                    .copied()
                    .filter(|id| !answered.contains(id))
                    .collect();
                if !missing.is_empty() {
                    return Err(ApiError::invalid(format!(
                        "messages.{}: `tool_use` ids were found without `tool_result` blocks \
                         immediately after: {}. Each `tool_use` block must have a corresponding \
                         `tool_result` block in the next message.",
                        turn.last_message,
                        missing.join(", ")
                    )));
                }
                continue;
            }

            let mut answered = HashSet::new();
            let mut seen_other = false;
            for block in &turn.blocks {
                if block.kind() != "tool_result" {
                    seen_other = true;
                    continue;
                }
                let id = block.str_field("tool_use_id");
                if !asked.contains(&id) {
                    return Err(ApiError::invalid(format!(
                        "messages.{}.content.{}: unexpected `tool_use_id` found in `tool_result` \
                         blocks: {id}. Each `tool_result` block must have a corresponding \
                         `tool_use` block in the previous message.",
                        block.message, block.block
                    )));
                }
                if !answered.insert(id) {
                    return Err(ApiError::invalid(format!(
                        "messages.{}.content.{}: more than one `tool_result` block for \
                         `tool_use_id` {id}",
                        block.message, block.block
                    )));
                }
                if seen_other {
                    return Err(ApiError::invalid(format!(
                        "messages.{}: Did not find {} tool_result block(s) at the beginning of \
                         this message. Messages following tool_use blocks must begin with a \
                         matching number of tool_result blocks.",
                        turn.first_message,
                        asked.len()
                    )));
                }
            }
            asked.clear();
        }
        Ok(())
    }

    // --- system, tools, options ----------------------------------------------------------

    fn check_system(top: &Map<String, Value>) -> Check {
        match optional(top, "system") {
            None | Some(Value::String(_)) => Ok(()),
            Some(Value::Array(blocks)) => {
                for (i, block) in blocks.iter().enumerate() {
                    let path = format!("system.{i}");
                    let map = object(block, &path)?;
                    let kind = required_str(map, "type", &path)?;
                    if kind != "text" {
                        return Err(unknown_tag(&path, kind, &["text"]));
                    }
                    required_str(map, "text", &path)?;
                }
                Ok(())
            }
            Some(_) => Err(ApiError::invalid(
                "system: Input should be a valid string or a list of text blocks",
            )),
        }
    }

    fn valid_tool_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    fn check_tools(top: &Map<String, Value>) -> Check {
        let Some(tools) = optional(top, "tools") else {
            return Ok(());
        };
        let tools = tools
            .as_array()
            .ok_or_else(|| invalid_type("tools", "list"))?;
        let mut names = HashSet::new();
        for (i, tool) in tools.iter().enumerate() {
            let map = object(tool, &format!("tools.{i}"))?;
            let kind = optional(map, "type").and_then(Value::as_str);
            if kind.is_none() || kind == Some("custom") {
                let path = format!("tools.{i}.custom");
                let name = required_str(map, "name", &path)?;
                if !valid_tool_name(name) {
                    return Err(ApiError::invalid(format!(
                        "{path}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                    )));
                }
                if let Some(description) = optional(map, "description")
                    && !description.is_string()
                {
                    return Err(invalid_type(&format!("{path}.description"), "string"));
                }
                let schema = map
                    .get("input_schema")
                    .ok_or_else(|| field_required(&format!("{path}.input_schema")))?;
                let schema = object(schema, &format!("{path}.input_schema"))?;
                if schema.get("type").and_then(Value::as_str) != Some("object") {
                    return Err(ApiError::invalid(format!(
                        "{path}.input_schema.type: Input should be 'object'"
                    )));
                }
            }
            // Server and built-in tools (bash, text editor, web search, …) carry a versioned
            // `type`; their parameters are the real service's business, not the fake's.
            if let Some(name) = map.get("name").and_then(Value::as_str)
                && !names.insert(name)
            {
                return Err(ApiError::invalid("tools: Tool names must be unique."));
            }
        }
        Ok(())
    }

    fn check_tool_choice(top: &Map<String, Value>) -> Check {
        let Some(choice) = optional(top, "tool_choice") else {
            return Ok(());
        };
        let map = object(choice, "tool_choice")?;
        let kind = required_str(map, "type", "tool_choice")?;
        match kind {
            "auto" | "any" | "none" => Ok(()),
            "tool" => required_str(map, "name", "tool_choice.tool").map(|_| ()),
            other => Err(unknown_tag(
                "tool_choice",
                other,
                &["auto", "any", "tool", "none"],
            )),
        }
    }

    fn check_thinking(top: &Map<String, Value>, max_tokens: Option<u64>) -> Check {
        let Some(thinking) = optional(top, "thinking") else {
            return Ok(());
        };
        let map = object(thinking, "thinking")?;
        match required_str(map, "type", "thinking")? {
            "disabled" | "adaptive" => Ok(()),
            "enabled" => {
                let budget = match map.get("budget_tokens") {
                    None => return Err(field_required("thinking.enabled.budget_tokens")),
                    Some(value) => value
                        .as_u64()
                        .ok_or_else(|| invalid_type("thinking.enabled.budget_tokens", "integer"))?,
                };
                if budget < 1024 {
                    return Err(ApiError::invalid(
                        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
                    ));
                }
                if let Some(max_tokens) = max_tokens
                    && max_tokens <= budget
                {
                    return Err(ApiError::invalid(format!(
                        "`max_tokens` must be greater than `thinking.budget_tokens`. Please \
                         consult our documentation at \
                         https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size \
                         (max_tokens: {max_tokens}, budget_tokens: {budget})"
                    )));
                }
                Ok(())
            }
            other => Err(unknown_tag(
                "thinking",
                other,
                &["enabled", "disabled", "adaptive"],
            )),
        }
    }

    fn check_sampling(top: &Map<String, Value>) -> Check {
        if let Some(stream) = optional(top, "stream")
            && !stream.is_boolean()
        {
            return Err(invalid_type("stream", "boolean"));
        }
        for key in ["temperature", "top_p"] {
            if let Some(value) = optional(top, key) {
                let number = value.as_f64().ok_or_else(|| invalid_type(key, "number"))?;
                if !(0.0..=1.0).contains(&number) {
                    return Err(ApiError::invalid(format!(
                        "{key}: Input should be between 0 and 1"
                    )));
                }
            }
        }
        if let Some(top_k) = optional(top, "top_k")
            && !top_k.is_u64()
        {
            return Err(invalid_type("top_k", "integer"));
        }
        if let Some(stops) = optional(top, "stop_sequences") {
            let stops = stops
                .as_array()
                .ok_or_else(|| invalid_type("stop_sequences", "list"))?;
            if let Some(i) = stops.iter().position(|s| !s.is_string()) {
                return Err(invalid_type(&format!("stop_sequences.{i}"), "string"));
            }
        }
        if let Some(metadata) = optional(top, "metadata") {
            let map = object(metadata, "metadata")?;
            reject_extra_fields(map, &["user_id"], "metadata")?;
            if let Some(user_id) = optional(map, "user_id")
                && !user_id.is_string()
            {
                return Err(invalid_type("metadata.user_id", "string"));
            }
        }
        if let Some(tier) = optional(top, "service_tier") {
            let tier = tier.as_str().unwrap_or_default();
            if tier != "auto" && tier != "standard_only" {
                return Err(ApiError::invalid(
                    "service_tier: Input should be 'auto' or 'standard_only'",
                ));
            }
        }
        Ok(())
    }
}
