//! Extractors that reject bad input with our error shape: JSON bodies (syntax, unknown and
//! missing fields, wrong types, size, content type) and query strings.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, code};

/// A JSON object body; request types use `#[serde(deny_unknown_fields)]`. Anything but an
/// object is refused, even where serde would accept a struct written as an array, and so
/// are duplicate keys.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code::UNSUPPORTED_MEDIA_TYPE,
                "send the body as application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    code::PAYLOAD_TOO_LARGE,
                    "the body is larger than this server accepts",
                )
            } else {
                ApiError::bad_request(code::INVALID_BODY, rejection.body_text())
            }
        })?;
        let malformed =
            || ApiError::bad_request(code::MALFORMED_JSON, "the body is not valid JSON");
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                    Ok(_) => ApiError::unprocessable(
                        code::INVALID_BODY,
                        "the body must be a JSON object",
                    ),
                    Err(_) => malformed(),
                },
            );
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if !inner.is_data() {
                return malformed();
            }
            let message = inner.to_string();
            if message.starts_with("unknown field") {
                ApiError::unprocessable(code::UNKNOWN_FIELD, message)
            } else if path == "." {
                ApiError::unprocessable(code::INVALID_BODY, message)
            } else {
                ApiError::unprocessable(code::INVALID_BODY, format!("{path}: {message}"))
            }
        })?;
        deserializer.end().map_err(|_| malformed())?;
        Ok(ApiJson(value))
    }
}

/// A JSON object body that may be left out entirely (no body, no content type): then the
/// type's default. A body that is sent is checked like [`ApiJson`].
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers();
        let declared_empty = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
        let no_type = headers.get(axum::http::header::CONTENT_TYPE).is_none();
        let chunked = headers.contains_key(axum::http::header::TRANSFER_ENCODING);
        if no_type && (declared_empty || !chunked) {
            let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
                ApiError::bad_request(code::INVALID_BODY, rejection.body_text())
            })?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson(T::default()));
            }
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code::UNSUPPORTED_MEDIA_TYPE,
                "send the body as application/json",
            ));
        }
        ApiJson::<T>::from_request(req, state)
            .await
            .map(|ApiJson(value)| OptionalJson(value))
    }
}

/// `application/json`, or a `+json` type, with any parameters.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
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
