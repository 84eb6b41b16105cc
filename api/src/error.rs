//! The one place HTTP errors are made: every failure becomes `{"error": {"code", "message"}}`
//! with a stable snake_case code. 4xx messages say what to fix; 5xx messages say little
//! (the log says everything).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mainloop_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// Stable error codes; clients switch on these, never on messages.
pub mod code {
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const UNKNOWN_FIELD: &str = "unknown_field";
    pub const INVALID_BODY: &str = "invalid_body";
    pub const INVALID_QUERY: &str = "invalid_query";
    pub const INVALID_HEADER: &str = "invalid_header";
    pub const INVALID_CONTENT: &str = "invalid_content";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// The request body did not arrive within `MAINLOOP_BODY_TIMEOUT`.
    pub const BODY_TIMEOUT: &str = "body_timeout";
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// A GitHub webhook whose signature does not match its body.
    pub const INVALID_SIGNATURE: &str = "invalid_signature";
    pub const CROSS_ORIGIN: &str = "cross_origin";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const CONFLICT: &str = "conflict";
    /// The repository does not exist, is not visible, or mainloop cannot push to it.
    pub const INVALID_REPO: &str = "invalid_repo";
    /// Answers that do not match the questions waiting.
    pub const INVALID_ANSWERS: &str = "invalid_answers";
    /// Budget limits out of range, or that leave a paused task no room to go on.
    pub const INVALID_BUDGET: &str = "invalid_budget";
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
    /// The caller's request budget is spent; `Retry-After` says when to come back.
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const TIMEOUT: &str = "timeout";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const INTERNAL: &str = "internal";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code::CONFLICT, message)
    }

    /// A failure of ours. The cause is logged here; the client learns only that it happened.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::INTERNAL,
            "internal error",
        )
    }

    pub fn unavailable(cause: impl std::fmt::Display) -> ApiError {
        tracing::warn!(%cause, "service unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::UNAVAILABLE,
            "temporarily unavailable; try again",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::not_found("record"),
            StoreError::Conflict(message) => ApiError::conflict(message),
            StoreError::IdempotencyMismatch => ApiError::unprocessable(
                code::IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key was already used for a different request",
            ),
            error if error.is_transient() => ApiError::unavailable(error),
            error => ApiError::internal(error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mainloop\""),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
