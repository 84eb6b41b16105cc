//! Extractors that reject bad input with our error shape: JSON bodies (syntax, unknown and
//! missing fields, wrong types, size, content type) and query strings.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, code};

/// A JSON body; request types use `#[serde(deny_unknown_fields)]`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => {
            // serde's message names the field; keep the part after axum's preamble.
            let message = detail
                .split_once(": ")
                .map(|(_, rest)| rest.to_string())
                .unwrap_or(detail);
            if message.starts_with("unknown field") {
                ApiError::unprocessable(code::UNKNOWN_FIELD, message)
            } else {
                ApiError::unprocessable(code::INVALID_BODY, message)
            }
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request(code::MALFORMED_JSON, "the body is not valid JSON")
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::UNSUPPORTED_MEDIA_TYPE,
            "send the body as application/json",
        ),
        JsonRejection::BytesRejection(bytes) if bytes.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::PAYLOAD_TOO_LARGE,
                "the body is larger than this server accepts",
            )
        }
        other => ApiError::bad_request(code::INVALID_BODY, other.body_text()),
    }
}

/// A query string; query types use `#[serde(deny_unknown_fields)]`.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    let detail = rejection.body_text();
    let message = detail
        .split_once(": ")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or(detail);
    ApiError::bad_request(code::INVALID_QUERY, message)
}
