//! A fake Cloudflare Access team: serves the team's signing keys as Cloudflare does
//! (`GET /cdn-cgi/access/certs`, a JWKS) and mints the RS256 tokens Access puts in
//! `Cf-Access-Jwt-Assertion`. Two fixed test keys (committed under `testkit/keys/`, never used
//! anywhere real) stand in for Cloudflare's; which of them the JWKS publishes is up to the
//! test, so key rotation and tokens signed by unpublished keys can be tried.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::server::{Server, bind};

/// The test keys, PKCS#1 DER.
const KEYS: [&[u8]; 2] = [
    include_bytes!("../keys/cloudflare-test-1.der"),
    include_bytes!("../keys/cloudflare-test-2.der"),
];

/// The key ids the fake gives [`KEYS`].
pub const KIDS: [&str; 2] = ["test-key-1", "test-key-2"];

#[derive(Default)]
struct Shared {
    /// Indexes into [`KEYS`] of the keys the JWKS lists.
    published: Mutex<Vec<usize>>,
    fetches: AtomicUsize,
}

pub struct FakeCloudflareAccess {
    server: Server,
    shared: Arc<Shared>,
    /// `https://<team>.cloudflareaccess.com`, the `iss` of minted tokens.
    pub issuer: String,
    /// The application audience tag, the `aud` of minted tokens.
    pub audience: String,
}

impl FakeCloudflareAccess {
    /// Starts on a free loopback port, publishing the first test key.
    pub async fn start(team: &str, audience: &str) -> anyhow::Result<FakeCloudflareAccess> {
        let shared = Arc::new(Shared {
            published: Mutex::new(vec![0]),
            fetches: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/cdn-cgi/access/certs", get(certs))
            .with_state(shared.clone());
        let (listener, addr) = bind(
            "fake Cloudflare Access",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        )
        .await?;
        let server = Server::serve(
            "fake Cloudflare Access",
            listener,
            addr,
            app,
            CancellationToken::new(),
        );
        Ok(FakeCloudflareAccess {
            server,
            shared,
            issuer: format!("https://{team}.cloudflareaccess.com"),
            audience: audience.to_string(),
        })
    }

    /// Where the keys are (what `MAINLOOP_CLOUDFLARE_CERTS_URL` points at).
    pub fn certs_url(&self) -> String {
        format!("http://{}/cdn-cgi/access/certs", self.server.addr())
    }

    /// Publishes exactly the keys `which` (indexes into [`KIDS`]).
    pub fn publish(&self, which: &[usize]) {
        *self
            .shared
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = which.to_vec();
    }

    /// How many times the keys were fetched.
    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Claims of a valid token for `email`, valid from a minute ago for an hour.
    pub fn claims(&self, email: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "aud": [self.audience],
            "email": email,
            "exp": now + 3600,
            "iat": now - 60,
            "nbf": now - 60,
            "iss": self.issuer,
            "type": "app",
            "identity_nonce": "nonce",
            "sub": uuid::Uuid::new_v4().to_string(),
            "country": "NL",
        })
    }

    /// A valid token for `email`, signed by the first key.
    pub fn token(&self, email: &str) -> anyhow::Result<String> {
        sign(0, Some(KIDS[0]), &self.claims(email))
    }
}

/// `claims` signed with RS256 by test key `key`, naming key id `kid` in the header.
pub fn sign(key: usize, kid: Option<&str>, claims: &Value) -> anyhow::Result<String> {
    let der = KEYS.get(key).context("no such test key")?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(der))
        .context("signing a test token")
}

/// The JWK of test key `key`, as Cloudflare lists it.
pub fn jwk(key: usize) -> anyhow::Result<Value> {
    let der = KEYS.get(key).context("no such test key")?;
    let pair = ring::rsa::KeyPair::from_der(der)
        .map_err(|e| anyhow::anyhow!("the test key does not parse: {e}"))?;
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    Ok(json!({
        "kid": KIDS[key],
        "kty": "RSA",
        "alg": "RS256",
        "use": "sig",
        "e": URL_SAFE_NO_PAD.encode(&public.e),
        "n": URL_SAFE_NO_PAD.encode(&public.n),
    }))
}

/// Base64url without padding, as JWT segments are encoded (for hand-made tokens).
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn certs(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.fetches.fetch_add(1, Ordering::SeqCst);
    let published = shared
        .published
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let keys: Vec<Value> = published
        .into_iter()
        .filter_map(|key| jwk(key).ok())
        .collect();
    Json(json!({ "keys": keys, "public_cert": {}, "public_certs": [] }))
}
