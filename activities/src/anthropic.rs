//! A client for the Anthropic Messages API: streaming with tool use, and plain completions.
//! It classifies every failure as retryable (rate limits, overload, server errors, broken
//! connections) or permanent (the request itself is wrong), which is what the activities
//! need to decide between a Temporal retry and a visible error.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pricing::Tokens;

/// The API version this client speaks.
const API_VERSION: &str = "2023-06-01";

#[derive(Clone)]
pub struct AnthropicClient {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    /// Longest silence tolerated while a response streams.
    idle_timeout: Duration,
}

impl std::fmt::Debug for AnthropicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("AnthropicClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub model: String,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub system: String,
    pub messages: Vec<ApiMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiMessage {
    pub role: ApiRole,
    pub content: Vec<Block>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    User,
    Assistant,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// A finished response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub content: Vec<Block>,
    pub stop_reason: Option<String>,
    /// Uncached input tokens.
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_write_tokens: i64,
    pub cache_read_tokens: i64,
}

impl Completion {
    pub fn tokens(&self) -> Tokens {
        Tokens {
            input: self.input_tokens,
            output: self.output_tokens,
            cache_write: self.cache_write_tokens,
            cache_read: self.cache_read_tokens,
        }
    }

    /// Takes the token counts of a `usage` object; counts it lacks stay as they were (the
    /// stream reports some at its start and the rest at its end).
    fn read_usage(&mut self, usage: &Value) {
        let read = |field: &str| usage.get(field).and_then(Value::as_i64);
        if let Some(n) = read("input_tokens") {
            self.input_tokens = n;
        }
        if let Some(n) = read("output_tokens") {
            self.output_tokens = n;
        }
        if let Some(n) = read("cache_creation_input_tokens") {
            self.cache_write_tokens = n;
        }
        if let Some(n) = read("cache_read_input_tokens") {
            self.cache_read_tokens = n;
        }
    }

    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|b| match b {
                Block::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("")
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// Worth retrying: rate limited, overloaded, a server error, a dropped connection.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
        /// The API said the rate limit was hit (429 `rate_limit_error`): every worker should
        /// wait, not just this call (see `governor`).
        rate_limited: bool,
    },
    /// Retrying the same request cannot help (bad key, unknown model, invalid request).
    #[error("{message}")]
    Permanent { status: u16, message: String },
}

impl ModelError {
    fn retryable(message: impl Into<String>) -> ModelError {
        ModelError::Retryable {
            message: message.into(),
            retry_after: None,
            rate_limited: false,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

impl AnthropicClient {
    pub fn new(
        base_url: &str,
        api_key: &str,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<AnthropicClient, ModelError> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .build()
            .map_err(|e| ModelError::Permanent {
                status: 0,
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(AnthropicClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            idle_timeout,
        })
    }

    async fn send(&self, request: &Request, stream: bool) -> Result<reqwest::Response, ModelError> {
        let mut body = serde_json::to_value(request).map_err(|e| ModelError::Permanent {
            status: 0,
            message: format!("cannot encode the request: {e}"),
        })?;
        if stream && let Value::Object(map) = &mut body {
            map.insert("stream".into(), Value::Bool(true));
        }
        let response = self
            .http
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", API_VERSION)
            .json(&body)
            .send()
            .await
            .map_err(|e| ModelError::retryable(format!("cannot reach the model API: {e}")))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_from_response(response).await)
    }

    /// Sends `request` without streaming.
    pub async fn complete(&self, request: &Request) -> Result<Completion, ModelError> {
        let response = self.send(request, false).await?;
        let body: Value = tokio::time::timeout(self.idle_timeout, response.json())
            .await
            .map_err(|_| ModelError::retryable("the model API stopped responding"))?
            .map_err(|e| ModelError::retryable(format!("reading the model's reply: {e}")))?;
        let content: Vec<Block> = body
            .get("content")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .ok_or_else(|| ModelError::retryable("the model's reply had no readable content"))?;
        let mut completion = Completion {
            content,
            stop_reason: body
                .get("stop_reason")
                .and_then(Value::as_str)
                .map(str::to_string),
            ..Completion::default()
        };
        completion.read_usage(&body["usage"]);
        Ok(completion)
    }

    /// Sends `request` with streaming, handing each piece of text to `on_text` as it arrives
    /// (it may return an error to abort). Tool inputs are assembled and returned whole.
    pub async fn stream<F, Fut>(
        &self,
        request: &Request,
        mut on_text: F,
    ) -> Result<Completion, StreamError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<(), anyhow::Error>>,
    {
        let response = self.send(request, true).await.map_err(StreamError::Model)?;
        let mut events = response.bytes_stream().eventsource();
        let mut completion = Completion::default();
        // Blocks by index, with tool inputs still as JSON text.
        let mut partial: Vec<PartialBlock> = Vec::new();
        loop {
            let next = tokio::time::timeout(self.idle_timeout, events.next())
                .await
                .map_err(|_| {
                    StreamError::Model(ModelError::retryable(format!(
                        "the model API sent nothing for {:?}",
                        self.idle_timeout
                    )))
                })?;
            let Some(event) = next else {
                return Err(StreamError::Model(ModelError::retryable(
                    "the model API closed the stream before the reply was complete",
                )));
            };
            let event = event.map_err(|e| {
                StreamError::Model(ModelError::retryable(format!("reading the stream: {e}")))
            })?;
            let data: Value = match serde_json::from_str(&event.data) {
                Ok(data) => data,
                Err(_) if event.data.is_empty() => continue,
                Err(e) => {
                    return Err(StreamError::Model(ModelError::retryable(format!(
                        "the model API sent malformed data: {e}"
                    ))));
                }
            };
            match event.event.as_str() {
                "message_start" => completion.read_usage(&data["message"]["usage"]),
                "content_block_start" => {
                    let block = &data["content_block"];
                    partial.push(match block["type"].as_str() {
                        Some("tool_use") => PartialBlock::ToolUse {
                            id: block["id"].as_str().unwrap_or_default().to_string(),
                            name: block["name"].as_str().unwrap_or_default().to_string(),
                            json: String::new(),
                        },
                        Some("text") => PartialBlock::Text(
                            block["text"].as_str().unwrap_or_default().to_string(),
                        ),
                        _ => PartialBlock::Other,
                    });
                }
                "content_block_delta" => {
                    let delta = &data["delta"];
                    match (delta["type"].as_str(), partial.last_mut()) {
                        (Some("text_delta"), Some(PartialBlock::Text(text))) => {
                            let piece = delta["text"].as_str().unwrap_or_default().to_string();
                            text.push_str(&piece);
                            if !piece.is_empty() {
                                on_text(piece).await.map_err(StreamError::Sink)?;
                            }
                        }
                        (Some("input_json_delta"), Some(PartialBlock::ToolUse { json, .. })) => {
                            json.push_str(delta["partial_json"].as_str().unwrap_or_default());
                        }
                        _ => {}
                    }
                }
                "message_delta" => {
                    if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                        completion.stop_reason = Some(reason.to_string());
                    }
                    completion.read_usage(&data["usage"]);
                }
                "message_stop" => break,
                "error" => {
                    let kind = data["error"]["type"].as_str().unwrap_or("error");
                    let message = data["error"]["message"].as_str().unwrap_or_default();
                    let text = format!("the model API failed mid-reply: {kind}: {message}");
                    return Err(StreamError::Model(if is_retryable_kind(kind) {
                        ModelError::Retryable {
                            message: text,
                            retry_after: None,
                            rate_limited: kind == "rate_limit_error",
                        }
                    } else {
                        ModelError::Permanent {
                            status: 200,
                            message: text,
                        }
                    }));
                }
                _ => {}
            }
        }
        for block in partial {
            match block {
                PartialBlock::Text(text) => completion.content.push(Block::Text { text }),
                PartialBlock::ToolUse { id, name, json } => {
                    let input = if json.trim().is_empty() {
                        Value::Object(Default::default())
                    } else {
                        serde_json::from_str(&json).map_err(|e| {
                            StreamError::Model(ModelError::retryable(format!(
                                "the model sent an unreadable tool input: {e}"
                            )))
                        })?
                    };
                    completion.content.push(Block::ToolUse { id, name, input });
                }
                PartialBlock::Other => {}
            }
        }
        Ok(completion)
    }
}

enum PartialBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        json: String,
    },
    Other,
}

/// Why a streamed response ended early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Model(ModelError),
    /// The consumer of the text failed (e.g. the store was unreachable).
    #[error("{0}")]
    Sink(anyhow::Error),
}

fn is_retryable_kind(kind: &str) -> bool {
    matches!(
        kind,
        "overloaded_error" | "rate_limit_error" | "api_error" | "timeout_error"
    )
}

async fn error_from_response(response: reqwest::Response) -> ModelError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(|secs| Duration::from_secs_f64(secs.min(3600.0)));
    let text = response.text().await.unwrap_or_default();
    let (kind, detail) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.error.kind, body.error.message),
        Err(_) => ("error".to_string(), truncate(&text, 300)),
    };
    let message = format!("{status} {kind}: {detail}");
    if status == 429 || status == 408 || status == 409 || status >= 500 {
        ModelError::Retryable {
            rate_limited: status == 429 || kind == "rate_limit_error",
            message,
            retry_after,
        }
    } else {
        ModelError::Permanent { status, message }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
