//! `GET /api/messages` (the thread, paginated backwards) and `POST /api/messages` (store a
//! message and hand it to the main thread through the outbox).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mainloop_activities::governor::MODEL_SCOPE;
use mainloop_store::{Message, MessageStatus};
use mainloop_workflows::main_thread_id;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::User;
use crate::error::{ApiError, ApiResult, ErrorBody, code};
use crate::extract::{ApiJson, ApiQuery};

/// Longest message accepted, in characters.
pub const MAX_MESSAGE_CHARS: usize = 32_000;
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Return messages older than this `seq` (the cursor from `next_before`).
    #[param(nullable = false)]
    pub before: Option<i64>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200, nullable = false)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Pass as `before` to get the previous page; absent when this page reaches the first
    /// message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
    /// Follow `GET /api/events?after=` from here to miss nothing that happens after this page
    /// was read.
    pub last_event_id: i64,
    /// The model's rate limit, while it holds replies back; only on a page with a reply still
    /// streaming, which waits for it unless it began before the limit (what the stream's
    /// `message.waiting` said before this page was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_limit: Option<ModelLimit>,
}

/// A rate limit of the model's API that every worker waits out (a 429 seen by any of them).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelLimit {
    /// When the limit resets and waiting replies go on.
    pub until: chrono::DateTime<chrono::Utc>,
    /// What the model's API said.
    pub reason: String,
}

#[utoipa::path(
    get, path = "/api/messages", tag = "chat",
    params(ListQuery),
    responses(
        (status = 200, body = MessagePage),
        (status = 400, body = ErrorBody, description = "invalid_query"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    User(user): User,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<MessagePage>> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(
            code::INVALID_QUERY,
            "limit must be between 1 and 200",
        ));
    }
    // Read the event position first: anything committed later is replayed by the stream.
    let last_event_id = state.store.last_user_event_id(&user).await?;
    let messages = state
        .store
        .list_messages(&user, query.before, limit + 1)
        .await?;
    let has_more = messages.len() as i64 > limit;
    let messages: Vec<Message> = if has_more {
        messages.into_iter().skip(1).collect()
    } else {
        messages
    };
    let next_before = if has_more {
        messages.first().map(|m| m.seq)
    } else {
        None
    };
    // Asked only when a reply may be waiting: most pages cost no extra statement.
    let streaming = messages
        .iter()
        .any(|m| m.status == MessageStatus::Streaming);
    let model_limit = if streaming {
        state
            .store
            .rate_limit(MODEL_SCOPE)
            .await?
            .filter(|limit| limit.until > chrono::Utc::now())
            .map(|limit| ModelLimit {
                until: limit.until,
                reason: limit.reason,
            })
    } else {
        None
    };
    Ok(Json(MessagePage {
        messages,
        next_before,
        last_event_id,
        model_limit,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The message text (1-32000 characters, not only white space, no NUL).
    #[schema(
        min_length = 1,
        max_length = 32000,
        pattern = "^[^\\x00]*[^\\s\\x00][^\\x00]*$"
    )]
    pub content: String,
}

#[utoipa::path(
    post, path = "/api/messages", tag = "chat",
    request_body = PostMessage,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
         pattern = "^[A-Za-z0-9._:-]{1,200}$",
         description = "Makes retries safe: the same key stores one message (1-200 of A-Z a-z 0-9 . _ : -)"),
    ),
    responses(
        (status = 202, body = Message, description = "Stored; the reply follows on the event stream. Header `Idempotent-Replayed: true` when the key had been used."),
        (status = 400, body = ErrorBody, description = "malformed_json, invalid_header"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 413, body = ErrorBody, description = "payload_too_large"),
        (status = 415, body = ErrorBody, description = "unsupported_media_type"),
        (status = 422, body = ErrorBody, description = "unknown_field, invalid_body, invalid_content, idempotency_key_reused"),
    )
)]
pub async fn post(
    State(state): State<AppState>,
    User(user): User,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PostMessage>,
) -> ApiResult<Response> {
    let key = match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| valid_key(k))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        code::INVALID_HEADER,
                        "Idempotency-Key must be 1-200 characters of A-Z a-z 0-9 . _ : -",
                    )
                })?;
            key.to_string()
        }
        // Without a key a retry stores a second message; clients should send one.
        None => format!("server-{}", uuid::Uuid::now_v7()),
    };
    let content = body.content;
    if content.trim().is_empty() {
        return Err(ApiError::unprocessable(
            code::INVALID_CONTENT,
            "the message is empty",
        ));
    }
    if content.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::unprocessable(
            code::INVALID_CONTENT,
            format!("the message is longer than {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    if content.contains('\0') {
        return Err(ApiError::unprocessable(
            code::INVALID_CONTENT,
            "the message contains a NUL character",
        ));
    }
    let accepted = state
        .store
        .accept_user_message(&user, &key, &content, &main_thread_id(&user))
        .await?;
    let mut response = (StatusCode::ACCEPTED, Json(accepted.message)).into_response();
    response.headers_mut().insert(
        "idempotent-replayed",
        HeaderValue::from_static(if accepted.replayed { "true" } else { "false" }),
    );
    Ok(response)
}

fn valid_key(key: &str) -> bool {
    (1..=200).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}
