//! Who is calling. `none` trusts every caller as the configured user and is refused unless
//! the server listens on loopback only; `token` accepts `Authorization: Bearer <token>` or a
//! session cookie set by `POST /api/login`, and the user is the configured one; `tailscale`
//! believes the `Tailscale-User-Login` header only from the proxy's address; `cloudflare`
//! verifies Cloudflare Access's signed token ([`crate::cloudflare`]). A user id is never
//! taken from anything a client can choose. State-changing requests from another origin are
//! refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
use crate::cloudflare::Access;
use crate::error::{ApiError, code};
use crate::ratelimit::{self, Caller, RateLimiter};

pub const SESSION_COOKIE: &str = "mainloop_session";
/// Set by `tailscale serve` to the login name of the tailnet user it forwards for.
pub const TAILSCALE_USER_LOGIN: &str = "tailscale-user-login";

/// How callers prove who they are.
#[derive(Clone)]
pub enum AuthMode {
    /// Everyone is `user`. Only for a server bound to loopback.
    None,
    /// A shared secret, as a bearer token or exchanged for a session cookie.
    Token { token: String },
    /// The user `tailscale serve` names, believed only from these peer addresses (empty:
    /// loopback addresses only).
    Tailscale { proxies: Vec<IpAddr> },
    /// The user Cloudflare Access vouches for.
    Cloudflare(Arc<Access>),
}

impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMode::None => f.write_str("none"),
            AuthMode::Token { .. } => f.write_str("token"),
            AuthMode::Tailscale { proxies } => write!(f, "tailscale (proxies {proxies:?})"),
            AuthMode::Cloudflare(access) => write!(f, "cloudflare ({access:?})"),
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

impl AuthMode {
    /// The mode's name, as `MAINLOOP_AUTH` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Token { .. } => "token",
            AuthMode::Tailscale { .. } => "tailscale",
            AuthMode::Cloudflare(_) => "cloudflare",
        }
    }
}

impl AuthConfig {
    /// Refuses configurations that would expose the API: `none` on a non-loopback address,
    /// a short token, identity headers believed from anyone who can reach a public address,
    /// or a user id that could not name a workflow.
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
            AuthMode::Tailscale { proxies } if proxies.is_empty() && !listen.ip().is_loopback() => {
                Err(format!(
                    "MAINLOOP_AUTH=tailscale on {listen}: the Tailscale-User-Login header is \
                     believed only from the proxy, which is assumed to be on loopback. Bind to \
                     127.0.0.1 (where `tailscale serve` forwards to), or name the proxy's \
                     addresses in MAINLOOP_TAILSCALE_PROXY"
                ))
            }
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
            _ => false,
        }
    }

    /// The caller's user id, or why they are not let in. `peer` is the TCP peer (unknown:
    /// identity headers are not believed).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<String, ApiError> {
        let token = match &self.mode {
            AuthMode::None => return Ok(self.user.clone()),
            AuthMode::Token { token } => token,
            AuthMode::Tailscale { proxies } => return tailscale_user(proxies, headers, peer),
            AuthMode::Cloudflare(access) => return access.authenticate(headers).await,
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
        match cookie(headers, SESSION_COOKIE) {
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

/// The value of cookie `name`.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_string())
}

/// The user `tailscale serve` forwards for, believed only from a trusted proxy. Exactly one
/// well-formed `Tailscale-User-Login` header names them.
fn tailscale_user(
    proxies: &[IpAddr],
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<String, ApiError> {
    let trusted = peer.is_some_and(|peer| {
        let ip = peer.ip().to_canonical();
        if proxies.is_empty() {
            ip.is_loopback()
        } else {
            proxies.iter().any(|proxy| proxy.to_canonical() == ip)
        }
    });
    if !trusted {
        return Err(ApiError::unauthorized(
            "reach mainloop through `tailscale serve`; identity headers from elsewhere are ignored",
        ));
    }
    let mut values = headers.get_all(TAILSCALE_USER_LOGIN).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(ApiError::unauthorized(
            "expected exactly one Tailscale-User-Login header from `tailscale serve`",
        ));
    };
    value
        .to_str()
        .ok()
        .map(str::to_ascii_lowercase)
        .filter(|login| valid_user_id(login))
        .ok_or_else(|| ApiError::unauthorized("the Tailscale-User-Login header is malformed"))
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

/// Middleware: authenticates the request, counts it against the user's rate limit (a
/// refused one against the peer's), and records the user.
pub async fn require_user(
    State((state, limiter)): State<(AppState, Arc<RateLimiter>)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = ratelimit::peer(&request);
    let user = match state.auth.authenticate(request.headers(), peer).await {
        Ok(user) => user,
        Err(refused) => {
            // Guessing credentials costs the guesser's address.
            if let Some(limited) = limiter.refusal(ratelimit::peer_caller(peer)) {
                return Ok(limited);
            }
            return Err(refused);
        }
    };
    if let Some(limited) = limiter.refusal(Caller::User(user.clone())) {
        return Ok(limited);
    }
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

    fn cookie_value(headers: &HeaderMap) -> Option<String> {
        cookie(headers, SESSION_COOKIE)
    }

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
        assert!(AuthConfig::session_valid("a-long-enough-secret", &cookie));
        assert_eq!(cookie_value(&headers), Some(cookie.clone()));
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
    fn tailscale_logins_come_only_from_a_trusted_peer() {
        let login = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(TAILSCALE_USER_LOGIN, HeaderValue::from_static(value));
            headers
        };
        let loopback: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:100.64.0.1]:5000".parse().unwrap();
        let other: SocketAddr = "100.64.0.2:5000".parse().unwrap();
        let proxy: IpAddr = "100.64.0.1".parse().unwrap();
        let headers = login("Alice@Example.com");
        assert_eq!(
            tailscale_user(&[], &headers, Some(loopback)),
            Ok("alice@example.com".to_string())
        );
        assert!(tailscale_user(&[], &headers, Some(other)).is_err());
        assert!(tailscale_user(&[], &headers, None).is_err());
        // A named proxy replaces loopback, and IPv4-mapped addresses are the same peer.
        assert!(tailscale_user(&[proxy], &headers, Some(mapped)).is_ok());
        assert!(tailscale_user(&[proxy], &headers, Some(loopback)).is_err());
        assert!(tailscale_user(&[], &login("a b"), Some(loopback)).is_err());
        assert!(tailscale_user(&[], &HeaderMap::new(), Some(loopback)).is_err());
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
