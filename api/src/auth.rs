//! Who is calling. `none` trusts every caller as the configured user and is refused unless
//! the server listens on loopback only; `token` accepts `Authorization: Bearer <token>` or a
//! session cookie set by `POST /api/login`. The user id always comes from configuration,
//! never from the client. State-changing requests from another origin are refused.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::{ApiError, code};

pub const SESSION_COOKIE: &str = "mainloop_session";

/// How callers prove who they are.
#[derive(Clone)]
pub enum AuthMode {
    /// Everyone is `user`. Only for a server bound to loopback.
    None,
    /// A shared secret, as a bearer token or exchanged for a session cookie.
    Token { token: String },
}

impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMode::None => f.write_str("none"),
            AuthMode::Token { .. } => f.write_str("token"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The user every authenticated request acts as.
    pub user: String,
    pub session_ttl: Duration,
}

impl AuthConfig {
    /// Refuses configurations that would expose the API: `none` on a non-loopback address,
    /// a short token, or a user id that could not name a workflow.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), String> {
        if !valid_user_id(&self.user) {
            return Err(format!(
                "MAINLOOP_USER {:?} must be 1-64 characters of letters, digits, '.', '_', '-' or '@'",
                self.user
            ));
        }
        match &self.mode {
            AuthMode::None if !listen.ip().is_loopback() => Err(format!(
                "MAINLOOP_AUTH=none would let anyone who can reach {listen} act as {}; bind to \
                 127.0.0.1 or set MAINLOOP_AUTH=token with MAINLOOP_AUTH_TOKEN",
                self.user
            )),
            AuthMode::Token { token } if token.len() < 16 => Err(
                "MAINLOOP_AUTH_TOKEN must be at least 16 characters (use a random secret)"
                    .to_string(),
            ),
            _ => Ok(()),
        }
    }

    fn cookie_key(token: &str) -> Hmac<Sha256> {
        // Derived from the token: changing the token ends every session. SHA-512 gives a key
        // of exactly HMAC-SHA-256's block size, so construction cannot fail.
        let key = Sha512::digest(format!("mainloop-session-v1:{token}").as_bytes());
        <Hmac<Sha256> as KeyInit>::new(&key)
    }

    /// A session cookie value valid for `session_ttl`.
    pub fn issue_session(&self, token: &str) -> String {
        let expiry = now_secs() + self.session_ttl.as_secs();
        let payload = format!("v1.{expiry}");
        let mut mac = Self::cookie_key(token);
        mac.update(payload.as_bytes());
        let signature = hex(&mac.finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    fn session_valid(token: &str, cookie: &str) -> bool {
        let mut parts = cookie.rsplitn(2, '.');
        let (Some(signature), Some(payload)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Some(expiry) = payload
            .strip_prefix("v1.")
            .and_then(|e| e.parse::<u64>().ok())
        else {
            return false;
        };
        let mut mac = Self::cookie_key(token);
        mac.update(payload.as_bytes());
        let expected = hex(&mac.finalize().into_bytes());
        bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) && expiry > now_secs()
    }

    /// Whether `given` is the configured token, in constant time.
    pub fn token_matches(&self, given: &str) -> bool {
        match &self.mode {
            AuthMode::Token { token } => {
                let a = Sha256::digest(token.as_bytes());
                let b = Sha256::digest(given.as_bytes());
                bool::from(a.ct_eq(&b))
            }
            AuthMode::None => false,
        }
    }

    /// The caller's user id, or why they are not let in.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let token = match &self.mode {
            AuthMode::None => return Ok(self.user.clone()),
            AuthMode::Token { token } => token,
        };
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let given = value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token)
                .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
            return if self.token_matches(given.trim()) {
                Ok(self.user.clone())
            } else {
                Err(ApiError::unauthorized("invalid token"))
            };
        }
        match session_cookie(headers) {
            Some(cookie) if Self::session_valid(token, &cookie) => Ok(self.user.clone()),
            Some(_) => Err(ApiError::unauthorized(
                "your session is invalid or has expired; log in again",
            )),
            None => Err(ApiError::unauthorized(
                "log in, or send Authorization: Bearer <token>",
            )),
        }
    }
}

/// A user id must be usable in a workflow id and a URL path segment as is.
pub fn valid_user_id(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The authenticated caller, put in the request by [`require_user`].
#[derive(Clone, Debug)]
pub struct User(pub String);

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<User>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a route that needs a user is not behind auth"))
    }
}

/// Middleware: authenticates the request and records the user.
pub async fn require_user(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let user = state.auth.authenticate(request.headers())?;
    request.extensions_mut().insert(User(user));
    Ok(next.run(request).await)
}

/// Middleware: refuses state-changing requests that a browser sent from another origin.
/// Requests without `Origin` (scripts, curl) are not browser cross-site requests.
pub async fn same_origin(request: Request, next: Next) -> Result<Response, ApiError> {
    if !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) && !same_origin_request(request.headers())
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            code::CROSS_ORIGIN,
            "cross-origin requests may not change anything",
        ));
    }
    Ok(next.run(request).await)
}

fn same_origin_request(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        // "null" (sandboxed frames, file://) and anything else odd.
        return false;
    };
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok());
    host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn token_config() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Token {
                token: "a-long-enough-secret".into(),
            },
            user: "me".into(),
            session_ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn none_is_refused_off_loopback() {
        let none = AuthConfig {
            mode: AuthMode::None,
            user: "me".into(),
            session_ttl: Duration::from_secs(1),
        };
        assert!(none.validate("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(none.validate("0.0.0.0:8080".parse().unwrap()).is_err());
        assert!(none.validate("[::1]:8080".parse().unwrap()).is_ok());
    }

    #[test]
    fn sessions_are_signed_and_expire() {
        let config = token_config();
        let cookie = config.issue_session("a-long-enough-secret");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {SESSION_COOKIE}={cookie}")).unwrap(),
        );
        assert_eq!(config.authenticate(&headers), Ok("me".to_string()));
        // Signed by another token: refused.
        assert!(!AuthConfig::session_valid("another-secret-token", &cookie));
        // Tampered expiry: refused.
        let forged = cookie.replacen("v1.", "v1.9", 1);
        assert!(!AuthConfig::session_valid("a-long-enough-secret", &forged));
        let expired = AuthConfig {
            session_ttl: Duration::ZERO,
            ..token_config()
        }
        .issue_session("a-long-enough-secret");
        assert!(!AuthConfig::session_valid("a-long-enough-secret", &expired));
    }

    #[test]
    fn origins_must_match_the_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin_request(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin_request(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin_request(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin_request(&headers));
    }
}
