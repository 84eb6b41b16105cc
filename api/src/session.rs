//! Logging in and out (`token` mode), and what the web app needs to know about its session.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{AuthMode, SESSION_COOKIE};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The server's MAINLOOP_AUTH_TOKEN.
    pub token: String,
}

#[utoipa::path(
    post, path = "/api/login", security(()), tag = "session",
    request_body = Login,
    responses(
        (status = 204, description = "Logged in: an HttpOnly, SameSite=Strict session cookie is set"),
        (status = 401, body = ErrorBody, description = "unauthorized: wrong token"),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Login>,
) -> ApiResult<Response> {
    let AuthMode::Token { token } = &state.auth.mode else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    if !state.auth.token_matches(body.token.trim()) {
        return Err(ApiError::unauthorized("wrong token"));
    }
    let value = state.auth.issue_session(token);
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        state.auth.session_ttl.as_secs(),
        if over_https(&headers) { "; Secure" } else { "" }
    );
    session_response(&cookie)
}

#[utoipa::path(
    post, path = "/api/logout", security(()), tag = "session",
    responses((status = 204, description = "The session cookie is cleared"))
)]
pub async fn logout(headers: HeaderMap) -> ApiResult<Response> {
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if over_https(&headers) { "; Secure" } else { "" }
    );
    session_response(&cookie)
}

fn session_response(cookie: &str) -> ApiResult<Response> {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(cookie).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// Behind a TLS-terminating proxy the cookie must be Secure; on plain loopback HTTP it
/// cannot be.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// `none`, `token`, `tailscale` or `cloudflare`.
    pub auth: String,
    pub authenticated: bool,
    /// The caller's user id, when authenticated.
    pub user: Option<String>,
}

#[utoipa::path(
    get, path = "/api/session", security(()), tag = "session",
    responses((status = 200, body = SessionInfo))
)]
pub async fn info(State(state): State<AppState>, request: Request) -> Json<SessionInfo> {
    let peer = crate::ratelimit::peer(&request);
    let user = state.auth.authenticate(request.headers(), peer).await.ok();
    Json(SessionInfo {
        auth: state.auth.mode.name().into(),
        authenticated: user.is_some(),
        user,
    })
}
