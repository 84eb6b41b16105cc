//! Forged identities, for every auth mode, over the real router and a real store: each
//! forgery is `401 unauthorized` (or refused by the HTTP parser itself) and stores nothing;
//! the genuine credential of the same mode is let in, so the refusals are not an accident.
//! State-changing requests from another origin are refused in every mode.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mainloop_api::cloudflare::{Access, CloudflareSettings};
use mainloop_api::{AuthConfig, AuthMode};
use mainloop_testkit::cloudflare::{FakeCloudflareAccess, KIDS, b64, jwk, sign};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::Served;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "a-long-enough-secret";

struct Api {
    served: Served,
    http: reqwest::Client,
}

impl Api {
    async fn start(mode: AuthMode) -> Api {
        Api::start_with(mode, |_| {}).await
    }

    async fn start_with(mode: AuthMode, configure: impl FnOnce(&mut AuthConfig)) -> Api {
        let served = common::serve(mode, "me", |settings, _| configure(&mut settings.auth)).await;
        Api {
            served,
            http: client(None),
        }
    }

    fn post_message(&self) -> RequestBuilder {
        self.http
            .post(format!("{}/api/messages", self.served.base()))
            .json(&json!({ "content": "hello" }))
    }

    /// Users with any message stored.
    async fn users_with_messages(&self, candidates: &[&str]) -> Vec<String> {
        let mut users = Vec::new();
        for user in candidates {
            let messages = self
                .served
                .store
                .list_messages(user, None, 10)
                .await
                .expect("list messages");
            if !messages.is_empty() {
                users.push(user.to_string());
            }
        }
        users
    }

    async fn assert_nothing_stored(&self) {
        assert_eq!(
            self.served.store.last_event_id().await.expect("events"),
            0,
            "a refused request stored something"
        );
        assert_eq!(self.served.store.outbox_backlog().await.expect("outbox"), 0);
    }
}

fn client(local: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().no_proxy().timeout(WAIT);
    if let Some(local) = local {
        builder = builder.local_address(local.parse::<std::net::IpAddr>().expect("an address"));
    }
    builder.build().expect("HTTP client")
}

/// Sends and expects `401 unauthorized`.
async fn refused(request: RequestBuilder, what: &str) {
    let response = request.send().await.expect("send");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
}

async fn accepted(request: RequestBuilder, what: &str) -> Value {
    let response = request.send().await.expect("send");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{what}: {status} {body}");
    body
}

/// Writes `head` (a whole request head) on a raw connection and returns the status code.
async fn raw_status(addr: SocketAddr, head: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to a raw request");
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

// ---------------------------------------------------------------------------------------
// none
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn none_mode_ignores_every_client_supplied_identity() {
    let api = Api::start(AuthMode::None).await;
    let forged = api
        .post_message()
        .header("tailscale-user-login", "alice")
        .header("cf-access-jwt-assertion", "x.y.z")
        .header("x-user", "alice")
        .header("x-forwarded-user", "alice")
        .header("remote-user", "alice")
        .header("authorization", "Bearer alice")
        .header(
            "cookie",
            "mainloop_session=v1.9999999999.00; CF_Authorization=x; user=alice",
        );
    accepted(forged, "none mode").await;
    assert_eq!(api.users_with_messages(&["me", "alice"]).await, ["me"]);
    let session = accepted(
        api.http
            .get(format!("{}/api/session", api.served.base()))
            .header("tailscale-user-login", "alice"),
        "session",
    )
    .await;
    assert_eq!(session["user"], "me");
}

// ---------------------------------------------------------------------------------------
// token
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn token_mode_refuses_every_forged_credential() {
    let mode = AuthMode::Token {
        token: TOKEN.into(),
    };
    let api = Api::start(mode.clone()).await;
    let config = |ttl| AuthConfig {
        mode: mode.clone(),
        user: "me".into(),
        session_ttl: ttl,
    };
    let valid = config(Duration::from_secs(3600)).issue_session(TOKEN);
    let expired = config(Duration::ZERO).issue_session(TOKEN);
    let foreign = config(Duration::from_secs(3600)).issue_session("another-long-secret!");
    let (payload, signature) = valid.rsplit_once('.').expect("a signed cookie");
    let flipped = format!(
        "{payload}.{}{}",
        if signature.starts_with('0') { '1' } else { '0' },
        &signature[1..]
    );
    let bearers = [
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        "Bearer short".to_string(),
        "Bearer ".to_string(),
        "Bearer".to_string(),
        String::new(),
        format!("Basic {TOKEN}"),
        format!("Token {TOKEN}"),
        TOKEN.to_string(),
        format!("Bearer {}", TOKEN.to_uppercase()),
    ];
    for bearer in &bearers {
        refused(
            api.post_message().header("authorization", bearer),
            &format!("Authorization: {bearer:?}"),
        )
        .await;
    }
    let cookies = [
        format!("mainloop_session={expired}"),
        format!("mainloop_session={foreign}"),
        format!("mainloop_session={flipped}"),
        format!("mainloop_session={}", valid.replacen("v1.", "v1.9", 1)),
        format!("mainloop_session={payload}"),
        "mainloop_session=".to_string(),
        format!("mainloop_session={TOKEN}"),
        format!("Mainloop_Session={valid}"),
        format!("mainloop_session_x={valid}"),
    ];
    for cookie in &cookies {
        refused(
            api.post_message().header("cookie", cookie),
            &format!("Cookie: {cookie}"),
        )
        .await;
    }
    for query in ["token", "access_token", "auth", "mainloop_session"] {
        let url = format!("{}/api/messages?{query}={TOKEN}", api.served.base());
        refused(
            api.http.post(url).json(&json!({ "content": "x" })),
            &format!("?{query}="),
        )
        .await;
    }
    // A valid bearer does not rescue a bad cookie's absence, and vice versa: both channels
    // are checked on their own. Another mode's identity proves nothing here.
    refused(
        api.post_message()
            .header("tailscale-user-login", "me")
            .header("cf-access-jwt-assertion", "x.y.z"),
        "other modes' headers",
    )
    .await;
    api.assert_nothing_stored().await;
    // The genuine articles work.
    accepted(
        api.post_message()
            .header("authorization", format!("Bearer {TOKEN}")),
        "bearer",
    )
    .await;
    accepted(
        api.post_message()
            .header("cookie", format!("mainloop_session={valid}")),
        "cookie",
    )
    .await;
    assert_eq!(api.users_with_messages(&["me"]).await, ["me"]);
}

// ---------------------------------------------------------------------------------------
// tailscale
// ---------------------------------------------------------------------------------------

fn tailscale(proxies: &[&str]) -> AuthMode {
    AuthMode::Tailscale {
        proxies: proxies
            .iter()
            .map(|p| p.parse().expect("an address"))
            .collect(),
    }
}

#[tokio::test]
async fn tailscale_headers_are_believed_only_from_the_proxy() {
    // The proxy is 127.0.0.1; 127.0.0.2 is another machine as far as the server can tell.
    let api = Api::start(tailscale(&["127.0.0.1"])).await;
    let stranger = client(Some("127.0.0.2"));
    let url = format!("{}/api/messages", api.served.base());
    refused(
        stranger
            .post(&url)
            .header("tailscale-user-login", "alice")
            .json(&json!({ "content": "x" })),
        "a valid header from a non-proxy peer",
    )
    .await;
    refused(
        stranger
            .post(&url)
            .header("tailscale-user-login", "alice")
            .header("tailscale-user-name", "Alice")
            .header("x-forwarded-for", "127.0.0.1")
            .header("forwarded", "for=127.0.0.1")
            .json(&json!({ "content": "x" })),
        "a non-proxy peer claiming to be forwarded by the proxy",
    )
    .await;
    api.assert_nothing_stored().await;
    accepted(
        api.post_message().header("tailscale-user-login", "Alice"),
        "the proxy",
    )
    .await;
    // Logins are case-insensitive: one user, lower-cased.
    assert_eq!(
        api.users_with_messages(&["alice", "Alice", "me"]).await,
        ["alice"]
    );
}

#[tokio::test]
async fn missing_duplicated_and_malformed_tailscale_headers_are_401() {
    let api = Api::start(tailscale(&[])).await;
    refused(api.post_message(), "no header").await;
    let long = "a".repeat(65);
    for login in [
        "",
        " ",
        "alice bob",
        "alice;bob",
        "alice,bob",
        "../alice",
        "alice/x",
        "alice%40x",
        "\"alice\"",
        long.as_str(),
    ] {
        refused(
            api.post_message().header("tailscale-user-login", login),
            &format!("Tailscale-User-Login: {login:?}"),
        )
        .await;
    }
    refused(
        api.post_message()
            .header("tailscale-user-login", "alice")
            .header("tailscale-user-login", "bob"),
        "two headers",
    )
    .await;
    refused(
        api.post_message().header(
            "tailscale-user-login",
            reqwest::header::HeaderValue::from_bytes(b"alic\xe9").expect("obs-text"),
        ),
        "a non-ASCII login",
    )
    .await;
    // Header injection below the client library: split lines and folded continuations are
    // refused by the HTTP parser or by us, never taken as a user.
    let addr = api.served.addr;
    let body = r#"{"content":"x"}"#;
    for injected in [
        "Tailscale-User-Login: alice\r\nTailscale-User-Login: bob\r\n",
        "Tailscale-User-Login: alice\r\n bob\r\n",
        "Tailscale-User-Login: alice\rbob\r\n",
        "Tailscale-User-Login: alice\nTailscale-User-Login: bob\r\n",
        "Tailscale-User-Login : alice\r\n",
    ] {
        let head = format!(
            "POST /api/messages HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{injected}\r\n{body}",
            body.len()
        );
        let status = raw_status(addr, head.as_bytes()).await;
        assert!(
            status == 400 || status == 401,
            "{injected:?} answered {status}"
        );
    }
    api.assert_nothing_stored().await;
}

#[test]
fn tailscale_mode_needs_named_proxies_off_loopback() {
    let config = |mode| AuthConfig {
        mode,
        user: "me".into(),
        session_ttl: Duration::from_secs(60),
    };
    let public: SocketAddr = "0.0.0.0:8080".parse().expect("an address");
    let error = config(tailscale(&[]))
        .validate(public)
        .expect_err("refused off loopback");
    assert!(error.contains("MAINLOOP_TAILSCALE_PROXY"), "{error}");
    assert!(
        config(tailscale(&[]))
            .validate("127.0.0.1:8080".parse().expect("an address"))
            .is_ok()
    );
    assert!(config(tailscale(&["100.64.0.1"])).validate(public).is_ok());
}

// ---------------------------------------------------------------------------------------
// cloudflare
// ---------------------------------------------------------------------------------------

const AUD: &str = "aud-tag-of-the-app";

async fn cloudflare(refetch_interval: Duration) -> (Api, FakeCloudflareAccess) {
    let fake = FakeCloudflareAccess::start("team", AUD)
        .await
        .expect("fake Access");
    let access = Access::new(&CloudflareSettings {
        team_domain: "team.cloudflareaccess.com".into(),
        audience: AUD.into(),
        certs_url: Some(fake.certs_url()),
        refetch_interval,
    })
    .expect("Access settings");
    (
        Api::start(AuthMode::Cloudflare(Arc::new(access))).await,
        fake,
    )
}

/// A token of `header` and `claims` JSON with the given signature segment.
fn hand_made(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    use hmac::{Hmac, Mac};
    let header = json!({ "alg": "HS256", "typ": "JWT", "kid": KIDS[0] });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

#[tokio::test]
async fn cloudflare_mode_refuses_every_forged_token() {
    let (api, fake) = cloudflare(Duration::from_secs(3600)).await;
    let claims = fake.claims("alice@example.com");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims.clone();
        change(&mut claims);
        claims
    };
    let now = chrono::Utc::now().timestamp();
    let valid = fake.token("alice@example.com").expect("a token");
    let (head, rest) = valid.split_once('.').expect("a JWT");
    let (_, signature) = rest.split_once('.').expect("a JWT");
    let public_jwk = jwk(0).expect("the JWK").to_string();
    let tampered = format!(
        "{head}.{}.{signature}",
        b64(with(&|c| c["email"] = json!("mallory@example.com"))
            .to_string()
            .as_bytes())
    );
    let forgeries: Vec<(&str, String)> = vec![
        (
            "alg none",
            hand_made(&json!({ "alg": "none", "typ": "JWT" }), &claims, ""),
        ),
        (
            "alg none with a kid",
            hand_made(&json!({ "alg": "none", "kid": KIDS[0] }), &claims, ""),
        ),
        (
            "HS256 keyed with the public JWK",
            hs256(public_jwk.as_bytes(), &claims),
        ),
        (
            "HS256 keyed with the modulus",
            hs256(
                jwk(0).expect("jwk")["n"].as_str().unwrap_or("").as_bytes(),
                &claims,
            ),
        ),
        (
            "RS256 by an unpublished key under its own kid",
            sign(1, Some(KIDS[1]), &claims).expect("sign"),
        ),
        (
            "RS256 by another key under the published kid",
            sign(1, Some(KIDS[0]), &claims).expect("sign"),
        ),
        ("no kid", sign(0, None, &claims).expect("sign")),
        ("unknown kid", sign(0, Some("nope"), &claims).expect("sign")),
        (
            "wrong aud",
            sign(
                0,
                Some(KIDS[0]),
                &with(&|c| c["aud"] = json!(["another-app"])),
            )
            .expect("sign"),
        ),
        (
            "no aud",
            sign(
                0,
                Some(KIDS[0]),
                &with(&|c| {
                    c.as_object_mut().map(|o| o.remove("aud"));
                }),
            )
            .expect("sign"),
        ),
        (
            "wrong iss",
            sign(
                0,
                Some(KIDS[0]),
                &with(&|c| c["iss"] = json!("https://evil.cloudflareaccess.com")),
            )
            .expect("sign"),
        ),
        (
            "expired",
            sign(0, Some(KIDS[0]), &with(&|c| c["exp"] = json!(now - 3600))).expect("sign"),
        ),
        (
            "no exp",
            sign(
                0,
                Some(KIDS[0]),
                &with(&|c| {
                    c.as_object_mut().map(|o| o.remove("exp"));
                }),
            )
            .expect("sign"),
        ),
        (
            "not yet valid",
            sign(0, Some(KIDS[0]), &with(&|c| c["nbf"] = json!(now + 3600))).expect("sign"),
        ),
        (
            "no email",
            sign(
                0,
                Some(KIDS[0]),
                &with(&|c| {
                    c.as_object_mut().map(|o| o.remove("email"));
                }),
            )
            .expect("sign"),
        ),
        (
            "an email that cannot be a user id",
            sign(
                0,
                Some(KIDS[0]),
                &with(&|c| c["email"] = json!("a b@example.com")),
            )
            .expect("sign"),
        ),
        ("tampered payload", tampered),
        (
            "signature stripped",
            format!("{head}.{}.", rest.split_once('.').map_or("", |r| r.0)),
        ),
        ("garbage", "not a token".into()),
        ("three garbage segments", "a.b.c".into()),
        ("empty", String::new()),
    ];
    for (what, token) in &forgeries {
        refused(
            api.post_message().header("cf-access-jwt-assertion", token),
            what,
        )
        .await;
        refused(
            api.post_message()
                .header("cookie", format!("CF_Authorization={token}")),
            &format!("{what} (cookie)"),
        )
        .await;
    }
    refused(api.post_message(), "no token").await;
    refused(
        api.post_message()
            .header("cf-access-jwt-assertion", &valid)
            .header("cf-access-jwt-assertion", &valid),
        "two headers",
    )
    .await;
    refused(
        api.post_message()
            .header("tailscale-user-login", "alice@example.com")
            .header("authorization", "Bearer whatever"),
        "other modes' credentials",
    )
    .await;
    api.assert_nothing_stored().await;
    // Made-up key ids cost one fetch of the keys, not one each.
    assert_eq!(fake.fetches(), 1);

    accepted(
        api.post_message().header("cf-access-jwt-assertion", &valid),
        "a genuine token",
    )
    .await;
    accepted(
        api.post_message()
            .header("cookie", format!("CF_Authorization={valid}")),
        "a genuine cookie",
    )
    .await;
    assert_eq!(
        api.users_with_messages(&["alice@example.com", "me", "mallory@example.com"])
            .await,
        ["alice@example.com"]
    );
}

#[tokio::test]
async fn cloudflare_keys_are_fetched_again_when_a_new_key_signs() {
    let (api, fake) = cloudflare(Duration::ZERO).await;
    let claims = fake.claims("Bob@Example.com");
    accepted(
        api.post_message().header(
            "cf-access-jwt-assertion",
            sign(0, Some(KIDS[0]), &claims).expect("sign"),
        ),
        "the first key",
    )
    .await;
    assert_eq!(fake.fetches(), 1);
    // Cloudflare rotates: the old key is withdrawn, a new one signs.
    fake.publish(&[1]);
    accepted(
        api.post_message().header(
            "cf-access-jwt-assertion",
            sign(1, Some(KIDS[1]), &claims).expect("sign"),
        ),
        "the rotated key",
    )
    .await;
    assert_eq!(fake.fetches(), 2);
    refused(
        api.post_message().header(
            "cf-access-jwt-assertion",
            sign(0, Some(KIDS[0]), &claims).expect("sign"),
        ),
        "the withdrawn key",
    )
    .await;
    assert_eq!(
        api.users_with_messages(&["bob@example.com"]).await,
        ["bob@example.com"]
    );
}

// ---------------------------------------------------------------------------------------
// other origins, in every mode
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cross_origin_writes_are_refused_in_every_mode() {
    let (cf, fake) = cloudflare(Duration::from_secs(3600)).await;
    let cf_token = fake.token("alice@example.com").expect("a token");
    let modes: Vec<(&str, Api, (&str, String))> = vec![
        (
            "none",
            Api::start(AuthMode::None).await,
            ("x-nothing", String::new()),
        ),
        (
            "token",
            Api::start(AuthMode::Token {
                token: TOKEN.into(),
            })
            .await,
            ("authorization", format!("Bearer {TOKEN}")),
        ),
        (
            "tailscale",
            Api::start(tailscale(&[])).await,
            ("tailscale-user-login", "alice".into()),
        ),
        ("cloudflare", cf, ("cf-access-jwt-assertion", cf_token)),
    ];
    for (mode, api, (name, value)) in &modes {
        let host = api.served.addr.to_string();
        let forged: [(&str, &str, String); 4] = [
            ("Origin", "origin", "https://evil.example".into()),
            ("Origin null", "origin", "null".into()),
            (
                "Origin of another port",
                "origin",
                format!("http://{}:1", api.served.addr.ip()),
            ),
            ("Sec-Fetch-Site", "sec-fetch-site", "cross-site".into()),
        ];
        for (what, header, origin) in &forged {
            let response = api
                .post_message()
                .header(*name, value.as_str())
                .header(*header, origin.as_str())
                .send()
                .await
                .expect("send");
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(status, StatusCode::FORBIDDEN, "{mode}, {what}: {body}");
            assert_eq!(body["error"]["code"], "cross_origin", "{mode}, {what}");
        }
        api.assert_nothing_stored().await;
        accepted(
            api.post_message()
                .header(*name, value.as_str())
                .header("origin", format!("http://{host}"))
                .header("sec-fetch-site", "same-origin"),
            &format!("{mode}, same origin"),
        )
        .await;
    }
}
