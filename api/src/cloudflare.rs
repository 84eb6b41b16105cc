//! Cloudflare Access: the caller is whoever Access vouches for in the
//! `Cf-Access-Jwt-Assertion` header (or the `CF_Authorization` cookie), an RS256 JWT signed
//! by one of the team's keys. Keys are fetched from the team's certs URL, cached, and fetched
//! again when a token names a key not seen yet (at most once per `refetch_interval`, so
//! tokens with made-up key ids cannot make us hammer Cloudflare).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::auth::valid_user_id;
use crate::error::ApiError;

pub const ASSERTION_HEADER: &str = "cf-access-jwt-assertion";
pub const COOKIE: &str = "CF_Authorization";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;
/// Keys are refreshed this often even when every token names a known key, so a key
/// Cloudflare withdrew stops being trusted.
const MAX_KEY_AGE: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct CloudflareSettings {
    /// `<team>.cloudflareaccess.com` (with or without `https://`): the tokens' issuer.
    pub team_domain: String,
    /// The Application Audience (AUD) tag of the Access application.
    pub audience: String,
    /// Where the team's keys are; default `https://<team domain>/cdn-cgi/access/certs`.
    pub certs_url: Option<String>,
    /// Least time between two fetches of the keys.
    pub refetch_interval: Duration,
}

/// Verifies Access tokens.
pub struct Access {
    issuer: String,
    audience: String,
    certs_url: String,
    refetch_interval: Duration,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: String,
    n: Option<String>,
    e: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    email: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("issuer", &self.issuer)
            .field("certs_url", &self.certs_url)
            .finish_non_exhaustive()
    }
}

impl Access {
    pub fn new(settings: &CloudflareSettings) -> Result<Access, String> {
        let domain = settings
            .team_domain
            .trim()
            .trim_start_matches("https://")
            .trim_end_matches('/');
        if domain.is_empty() || domain.contains('/') {
            return Err(format!(
                "MAINLOOP_CLOUDFLARE_TEAM_DOMAIN {:?} must be <team>.cloudflareaccess.com",
                settings.team_domain
            ));
        }
        if settings.audience.trim().is_empty() {
            return Err(
                "MAINLOOP_AUTH=cloudflare needs MAINLOOP_CLOUDFLARE_AUD, the Access \
                        application's audience tag"
                    .into(),
            );
        }
        let issuer = format!("https://{domain}");
        let certs_url = settings
            .certs_url
            .clone()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| format!("{issuer}/cdn-cgi/access/certs"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Access {
            issuer,
            audience: settings.audience.trim().to_string(),
            certs_url,
            refetch_interval: settings.refetch_interval,
            http,
            keys: tokio::sync::Mutex::new(Keys::default()),
        })
    }

    /// The caller's user id (their email, lower-cased), or why they are not let in.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let token = assertion(headers)?;
        let header = jsonwebtoken::decode_header(&token)
            .map_err(|_| ApiError::unauthorized("the Cloudflare Access token is malformed"))?;
        if header.alg != Algorithm::RS256 {
            return Err(ApiError::unauthorized(
                "Cloudflare Access tokens must be signed with RS256",
            ));
        }
        let kid = header.kid.ok_or_else(|| {
            ApiError::unauthorized("the Cloudflare Access token names no signing key")
        })?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = jsonwebtoken::decode::<Claims>(&token, &key, &validation)
            .map_err(|error| {
                tracing::debug!(%error, "refused a Cloudflare Access token");
                ApiError::unauthorized("the Cloudflare Access token is not valid here")
            })?
            .claims;
        claims
            .email
            .map(|email| email.trim().to_ascii_lowercase())
            .filter(|email| valid_user_id(email))
            .ok_or_else(|| {
                ApiError::unauthorized("the Cloudflare Access token names no usable email")
            })
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, ApiError> {
        let mut keys = self.keys.lock().await;
        let fresh = keys.fetched.is_some_and(|at| at.elapsed() < MAX_KEY_AGE);
        if let Some(key) = keys.by_kid.get(kid)
            && fresh
        {
            return Ok(key.clone());
        }
        let may_fetch = keys
            .fetched
            .is_none_or(|at| at.elapsed() >= self.refetch_interval);
        if may_fetch {
            match self.fetch().await {
                Ok(by_kid) => {
                    keys.by_kid = by_kid;
                    keys.fetched = Some(Instant::now());
                }
                Err(error) if keys.by_kid.contains_key(kid) => {
                    // Better a key an hour old than nobody let in while Cloudflare is away.
                    tracing::warn!(%error, "cannot refresh Cloudflare Access keys");
                }
                Err(error) => return Err(ApiError::unavailable(error)),
            }
        }
        keys.by_kid.get(kid).cloned().ok_or_else(|| {
            ApiError::unauthorized("the Cloudflare Access token is signed by an unknown key")
        })
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let jwks: Jwks = self
            .http
            .get(&self.certs_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("fetching {}: {e}", self.certs_url))?
            .json()
            .await
            .map_err(|e| format!("reading {}: {e}", self.certs_url))?;
        let mut by_kid = HashMap::new();
        for jwk in jwks.keys {
            let (Some(kid), "RSA", Some(n), Some(e)) = (jwk.kid, jwk.kty.as_str(), jwk.n, jwk.e)
            else {
                continue;
            };
            match DecodingKey::from_rsa_components(&n, &e) {
                Ok(key) => {
                    by_kid.insert(kid, key);
                }
                Err(error) => tracing::warn!(%error, kid, "skipping a malformed Access key"),
            }
        }
        Ok(by_kid)
    }
}

/// The token: the one `Cf-Access-Jwt-Assertion` header, else the `CF_Authorization` cookie.
fn assertion(headers: &HeaderMap) -> Result<String, ApiError> {
    let mut values = headers.get_all(ASSERTION_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .map(str::to_string)
            .map_err(|_| ApiError::unauthorized("the Cloudflare Access token is malformed")),
        (Some(_), Some(_)) => Err(ApiError::unauthorized(
            "more than one Cf-Access-Jwt-Assertion header",
        )),
        (None, _) => crate::auth::cookie(headers, COOKIE).ok_or_else(|| {
            ApiError::unauthorized("no Cloudflare Access token; reach mainloop through Access")
        }),
    }
}
