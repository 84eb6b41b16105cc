//! Payload plumbing shared by workflows and their callers: signals travel as raw payloads
//! (so a malformed one can never fail a workflow task) and are decoded here; activity
//! failures are turned into something a person can read.

use serde::{Deserialize, Serialize};
use temporalio_common::data_converters::RawValue;
use temporalio_common::error::IncomingError;
use temporalio_common::protos::temporal::api::common::v1::Payload;
use temporalio_sdk::ActivityExecutionError;

const ENCODING: &str = "encoding";
const JSON: &[u8] = b"json/plain";
const NULL: &[u8] = b"binary/null";

/// A JSON value as a raw payload, encoded as the SDKs and the `temporal` CLI encode JSON.
pub fn json_payload(value: &serde_json::Value) -> RawValue {
    let data = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    RawValue::new(vec![Payload {
        metadata: [(ENCODING.to_string(), JSON.to_vec())]
            .into_iter()
            .collect(),
        data,
        ..Default::default()
    }])
}

/// A signal as received: its name and its payload decoded as JSON, or why that failed. Signal
/// handlers store these and the run loop validates them, so no payload can fail a workflow
/// task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inbound {
    pub signal: String,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
}

impl Inbound {
    pub fn received(signal: &str, payload: &RawValue) -> Inbound {
        match decode_json(payload) {
            Ok(value) => Inbound {
                signal: signal.to_string(),
                payload: Some(value),
                error: None,
            },
            Err(error) => Inbound {
                signal: signal.to_string(),
                payload: None,
                error: Some(error),
            },
        }
    }

    /// The payload, or why it could not be read.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        match &self.error {
            Some(error) => Err(error.clone()),
            None => Ok(self.payload.clone().unwrap_or(serde_json::Value::Null)),
        }
    }
}

/// Decodes the first payload of a signal as JSON, or says why it cannot.
pub fn decode_json(raw: &RawValue) -> Result<serde_json::Value, String> {
    let Some(payload) = raw.payloads.first() else {
        return Err("the signal carried no payload".to_string());
    };
    let encoding = payload.metadata.get(ENCODING).map(Vec::as_slice);
    match encoding {
        Some(JSON) => serde_json::from_slice(&payload.data)
            .map_err(|e| format!("the payload is not valid JSON ({e})")),
        Some(NULL) | None if payload.data.is_empty() => {
            Err("the signal carried no payload".to_string())
        }
        Some(other) => Err(format!(
            "the payload is encoded as {:?}, not json/plain",
            String::from_utf8_lossy(other)
        )),
        None => Err("the payload has no encoding".to_string()),
    }
}

/// An activity failure as (application failure type, message).
pub fn describe_activity_error(error: &ActivityExecutionError) -> (Option<String>, String) {
    match error {
        ActivityExecutionError::Failed(failure) => match failure.cause() {
            Some(IncomingError::Application(app)) => (
                app.type_name().map(str::to_string),
                app.failure()
                    .map(|f| f.message.clone())
                    .unwrap_or_else(|| app.to_string()),
            ),
            Some(IncomingError::Timeout(_)) => (None, "it timed out".to_string()),
            Some(other) => (None, other.failure().message.clone()),
            None => (None, failure.failure().message.clone()),
        },
        ActivityExecutionError::Cancelled(_) => (None, "it was cancelled".to_string()),
        other => (None, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_garbage_is_explained() {
        let value = serde_json::json!({"message_id": "m1"});
        assert_eq!(decode_json(&json_payload(&value)), Ok(value));
        assert!(decode_json(&RawValue::new(vec![])).is_err());
        let garbage = RawValue::new(vec![Payload {
            metadata: [(ENCODING.to_string(), JSON.to_vec())]
                .into_iter()
                .collect(),
            data: b"{not json".to_vec(),
            ..Default::default()
        }]);
        assert!(
            decode_json(&garbage)
                .unwrap_err()
                .contains("not valid JSON")
        );
        let binary = RawValue::new(vec![Payload {
            metadata: [(ENCODING.to_string(), b"binary/plain".to_vec())]
                .into_iter()
                .collect(),
            data: vec![1, 2, 3],
            ..Default::default()
        }]);
        assert!(decode_json(&binary).unwrap_err().contains("binary/plain"));
    }
}
