//! The Claude Code CLI's final `result` line in `--output-format stream-json`: how the run
//! ended, its final text and what it used. The agent reads it at the end of a job, and the
//! chat reads it at the end of a turn run on a Claude subscription; both read it here.

use serde_json::Value;

use crate::protocol::Usage;

/// The final `result` message.
#[derive(Debug, Clone, PartialEq)]
pub struct CliResult {
    pub is_error: bool,
    /// `success`, `error_max_turns`, `error_during_execution`, …
    pub subtype: String,
    /// The final text (`result`), or the error messages.
    pub text: String,
    /// Tokens, and the cost the CLI reports (0 when it reports none).
    pub usage: Usage,
    /// The HTTP status of the API error that ended the run, if one did.
    pub api_error_status: Option<u16>,
}

impl CliResult {
    pub fn parse(message: &Value) -> CliResult {
        let usage = message.get("usage").unwrap_or(&Value::Null);
        let tokens = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
        let subtype = message
            .get("subtype")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let is_error = message.get("is_error").and_then(Value::as_bool) == Some(true)
            || (!subtype.is_empty() && subtype != "success");
        let text = match message.get("result").and_then(Value::as_str) {
            Some(text) => text.to_owned(),
            None => message
                .get("errors")
                .and_then(Value::as_array)
                .map(|errors| {
                    errors
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
        };
        CliResult {
            is_error,
            subtype,
            text,
            usage: Usage {
                input_tokens: tokens("input_tokens"),
                output_tokens: tokens("output_tokens"),
                cache_creation_input_tokens: tokens("cache_creation_input_tokens"),
                cache_read_input_tokens: tokens("cache_read_input_tokens"),
                cost_usd: message
                    .get("total_cost_usd")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
            },
            api_error_status: message
                .get("api_error_status")
                .and_then(Value::as_u64)
                .and_then(|status| u16::try_from(status).ok()),
        }
    }
}
