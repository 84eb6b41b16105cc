//! The HTTP boundary of the API, exercised over a real loopback socket: every kind of bad
//! input is refused with the documented status and stable error code, in the one error
//! shape, and nothing is stored from a refused request; accepted input is stored once.
//!
//! No Temporal is involved (`TemporalLink::disconnected()`), and the outbox relay is not
//! started, so every accepted message stays visible in the outbox backlog.

use std::collections::BTreeSet;
use std::time::Duration;

use mainloop_api::{AuthMode, code};
use mainloop_store::{NewProposal, SIGNAL_MESSAGE, SIGNAL_PROPOSAL_DECISION, Store};
use mainloop_testkit::sse::SseClient;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

mod common;
use common::{Served, serve};

const USER: &str = "me";
const TOKEN: &str = "a-long-enough-secret";
/// Small, so that "too large" is cheap to send.
const BODY_LIMIT: usize = 4096;
const SESSION_TTL: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

/// The real router served on a loopback socket, over a fresh SQLite store.
struct Api {
    base: String,
    /// `127.0.0.1:<port>`, as clients send it in `Host`.
    host: String,
    store: Store,
    http: reqwest::Client,
    _served: Served,
}

/// What the store holds, to prove a refused request stored nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    messages: usize,
    outbox: i64,
    /// The newest event id of any user.
    last_event: i64,
    events: usize,
}

impl Api {
    async fn start(mode: AuthMode, body_limit: usize) -> Api {
        let served = serve(mode, USER, |settings, _| {
            settings.body_limit = body_limit;
            settings.auth.session_ttl = SESSION_TTL;
        })
        .await;
        let http = reqwest::Client::builder()
            .no_proxy()
            // A fresh connection per request: a refused body may leave the server closing
            // the connection, which must not leak into the next request.
            .pool_max_idle_per_host(0)
            .timeout(WAIT)
            .build()
            .expect("HTTP client");
        Api {
            base: served.base(),
            host: served.addr.to_string(),
            store: served.store.clone(),
            http,
            _served: served,
        }
    }

    async fn start_none() -> Api {
        Api::start(AuthMode::None, BODY_LIMIT).await
    }

    async fn start_token(token: &str) -> Api {
        Api::start(
            AuthMode::Token {
                token: token.into(),
            },
            BODY_LIMIT,
        )
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(self.url(path))
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(self.url(path))
    }

    /// `POST path` with a raw JSON body.
    fn post_json(&self, path: &str, body: impl Into<String>) -> RequestBuilder {
        self.post(path)
            .header("content-type", "application/json")
            .body(body.into())
    }

    /// `POST /api/messages` with `{"content": content}`.
    fn post_message(&self, content: &str) -> RequestBuilder {
        self.post_json("/api/messages", json!({ "content": content }).to_string())
    }

    async fn stored(&self) -> Stored {
        Stored {
            messages: self
                .store
                .list_messages(USER, None, 1000)
                .await
                .expect("list messages")
                .len(),
            outbox: self.store.outbox_backlog().await.expect("outbox backlog"),
            last_event: self.store.last_event_id().await.expect("last event id"),
            events: self
                .store
                .events_after(USER, 0, 1000)
                .await
                .expect("events")
                .len(),
        }
    }

    async fn assert_nothing_stored(&self) {
        assert_eq!(
            self.stored().await,
            Stored {
                messages: 0,
                outbox: 0,
                last_event: 0,
                events: 0,
            },
            "a refused request stored something"
        );
    }

    /// Posts `content` and expects it to be accepted; returns the stored message.
    async fn accept(&self, content: &str, key: &str) -> Value {
        let reply = send(self.post_message(content).header("idempotency-key", key)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "body: {}", reply.text);
        reply.json()
    }
}

/// A response, read in full.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

async fn send(request: RequestBuilder) -> Reply {
    let response = request
        .send()
        .await
        .expect("the request reaches the server");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("read the response body");
    Reply {
        status,
        headers,
        text,
    }
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("an ASCII header value"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {:?}", self.text))
    }

    /// Asserts the status and the exact error shape `{"error":{"code","message"}}` with
    /// `code`; returns the message.
    fn error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text);
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "an error is JSON, got content-type {content_type:?}"
        );
        let body = self.json();
        let top: BTreeSet<&str> = body
            .as_object()
            .unwrap_or_else(|| panic!("the error body is an object: {body}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(top, BTreeSet::from(["error"]), "error body: {body}");
        let detail = body["error"]
            .as_object()
            .unwrap_or_else(|| panic!("`error` is an object: {body}"));
        let keys: BTreeSet<&str> = detail.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["code", "message"]),
            "error body: {body}"
        );
        assert_eq!(detail["code"], code, "error body: {body}");
        let message = detail["message"]
            .as_str()
            .unwrap_or_else(|| panic!("the message is a string: {body}"));
        assert!(
            message.trim().len() >= 8,
            "the message says what went wrong: {body}"
        );
        assert_security_headers(&self.headers);
        message.to_string()
    }
}

fn assert_security_headers(headers: &HeaderMap) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(
            headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "security header {name} in {headers:?}"
        );
    }
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.to_lowercase().contains(&needle.to_lowercase()),
        "{haystack:?} should mention {needle:?}"
    );
}

/// A valid `{"content": "aaa…"}` body of exactly `len` bytes.
fn body_of_len(len: usize) -> String {
    let overhead = r#"{"content":""}"#.len();
    let body = format!(r#"{{"content":"{}"}}"#, "a".repeat(len - overhead));
    assert_eq!(body.len(), len);
    body
}

// ---------------------------------------------------------------------------------------
// 1-5: body syntax, size, shape and media type
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_400_malformed_json() {
    let api = Api::start_none().await;
    for body in [
        r#"{"content":"#,
        "not json",
        r#"{"content":"hi"} trailing"#,
        r#"{"content":"hi",}"#,
        "",
    ] {
        let reply = send(api.post_json("/api/messages", body)).await;
        let message = reply.error(StatusCode::BAD_REQUEST, code::MALFORMED_JSON);
        assert_contains(&message, "json");
    }
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_payload_too_large() {
    let api = Api::start_none().await;
    for len in [BODY_LIMIT + 1, BODY_LIMIT + 2000] {
        let reply = send(api.post_json("/api/messages", body_of_len(len))).await;
        let message = reply.error(StatusCode::PAYLOAD_TOO_LARGE, code::PAYLOAD_TOO_LARGE);
        assert_contains(&message, "larger");
    }
    // Without Content-Length (chunked), the limit holds just the same.
    let body = body_of_len(BODY_LIMIT + 100);
    let (first, second) = body.split_at(BODY_LIMIT / 2);
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok(first.to_string()), Ok(second.to_string())];
    let reply = send(
        api.post("/api/messages")
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
    )
    .await;
    reply.error(StatusCode::PAYLOAD_TOO_LARGE, code::PAYLOAD_TOO_LARGE);
    api.assert_nothing_stored().await;

    // A body of exactly the limit is fine.
    let reply = send(api.post_json("/api/messages", body_of_len(BODY_LIMIT))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "body: {}", reply.text);
}

#[tokio::test]
async fn an_unknown_field_is_422_unknown_field_naming_it() {
    let api = Api::start_none().await;
    let reply = send(api.post_json("/api/messages", r#"{"content":"hi","extra":1}"#)).await;
    let message = reply.error(StatusCode::UNPROCESSABLE_ENTITY, code::UNKNOWN_FIELD);
    assert_contains(&message, "extra");
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn an_unknown_field_at_login_is_422_unknown_field() {
    let api = Api::start_token(TOKEN).await;
    let body = json!({ "token": TOKEN, "remember": true }).to_string();
    let reply = send(api.post_json("/api/login", body)).await;
    let message = reply.error(StatusCode::UNPROCESSABLE_ENTITY, code::UNKNOWN_FIELD);
    assert_contains(&message, "remember");
    assert!(
        reply.header("set-cookie").is_none(),
        "no session for a refused login"
    );
}

#[tokio::test]
async fn missing_fields_and_wrong_types_are_422_invalid_body() {
    let api = Api::start_none().await;
    for (body, mentions) in [
        ("{}", "content"),
        (r#"{"content":5}"#, "content"),
        (r#"{"content":null}"#, "content"),
        (r#"{"content":["hi"]}"#, "content"),
        (r#"{"content":{"text":"hi"}}"#, "content"),
        ("null", "JSON object"),
        (r#""hi""#, "JSON object"),
        (r#"{"content":"a","content":"b"}"#, "duplicate"),
    ] {
        let reply = send(api.post_json("/api/messages", body)).await;
        let message = reply.error(StatusCode::UNPROCESSABLE_ENTITY, code::INVALID_BODY);
        assert_contains(&message, mentions);
        // axum's internal preamble is not part of the message.
        assert!(!message.contains("Failed to deserialize"), "{message:?}");
    }
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_json_array_is_not_a_message_object() {
    // The body is documented as an object (`PostMessage`); serde's derive also accepts the
    // struct as a sequence of its fields, which the boundary must not let through.
    let api = Api::start_none().await;
    let reply = send(api.post_json("/api/messages", r#"["hi"]"#)).await;
    reply.error(StatusCode::UNPROCESSABLE_ENTITY, code::INVALID_BODY);
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_by_content_type_is_415() {
    let api = Api::start_none().await;
    let body = json!({ "content": "hi" }).to_string();
    // No content type at all.
    let reply = send(api.post("/api/messages").body(body.clone())).await;
    let message = reply.error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code::UNSUPPORTED_MEDIA_TYPE,
    );
    assert_contains(&message, "application/json");
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ] {
        let reply = send(
            api.post("/api/messages")
                .header("content-type", content_type)
                .body(body.clone()),
        )
        .await;
        reply.error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::UNSUPPORTED_MEDIA_TYPE,
        );
    }
    api.assert_nothing_stored().await;

    // JSON with parameters is JSON.
    let reply = send(
        api.post("/api/messages")
            .header("content-type", "application/json; charset=utf-8")
            .body(body),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "body: {}", reply.text);
}

// ---------------------------------------------------------------------------------------
// 6-8: content rules, Idempotency-Key, idempotent acceptance
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn empty_overlong_and_nul_content_is_422_invalid_content() {
    // Room for the longest messages in the body.
    let api = Api::start(AuthMode::None, 1 << 20).await;
    let too_long = "a".repeat(32_001);
    for (content, mentions) in [
        ("", "empty"),
        ("   ", "empty"),
        (" \n\t\r\n ", "empty"),
        (too_long.as_str(), "32000"),
        ("a\u{0}b", "NUL"),
        ("\u{0}", "NUL"),
    ] {
        let reply = send(api.post_message(content)).await;
        let message = reply.error(StatusCode::UNPROCESSABLE_ENTITY, code::INVALID_CONTENT);
        assert_contains(&message, mentions);
    }
    api.assert_nothing_stored().await;

    // The limit counts characters, not bytes: 32000 of anything is accepted.
    for content in ["a".repeat(32_000), "é".repeat(32_000), "🦀".repeat(32_000)] {
        let message = api.accept(&content, &format!("k-{}", content.len())).await;
        assert_eq!(message["content"], content.as_str());
    }
    // …and 32001 multi-byte characters are not.
    let reply = send(api.post_message(&"é".repeat(32_001))).await;
    reply.error(StatusCode::UNPROCESSABLE_ENTITY, code::INVALID_CONTENT);
    assert_eq!(api.stored().await.messages, 3);
}

#[tokio::test]
async fn a_bad_idempotency_key_is_400_invalid_header() {
    let api = Api::start_none().await;
    let too_long = "k".repeat(201);
    let values: Vec<HeaderValue> = [
        too_long.as_str(),
        "",
        "has space",
        "slash/key",
        "semi;colon",
        "quote\"",
        "comma,key",
    ]
    .into_iter()
    .map(|v| HeaderValue::from_str(v).expect("a valid header value"))
    .chain([HeaderValue::from_bytes("clé".as_bytes()).expect("obs-text is allowed")])
    .collect();
    for value in values {
        let reply = send(
            api.post_message("hello")
                .header("idempotency-key", value.clone()),
        )
        .await;
        let message = reply.error(StatusCode::BAD_REQUEST, code::INVALID_HEADER);
        assert_contains(&message, "Idempotency-Key");
    }
    api.assert_nothing_stored().await;

    // The longest key of every allowed character is fine.
    let longest = "aZ09._:-".repeat(25);
    assert_eq!(longest.len(), 200);
    api.accept("hello", &longest).await;
}

#[tokio::test]
async fn a_valid_post_is_stored_once_per_idempotency_key() {
    let api = Api::start_none().await;
    let first = send(
        api.post_message("hello there")
            .header("idempotency-key", "key-1"),
    )
    .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "body: {}", first.text);
    assert_eq!(first.header("idempotent-replayed"), Some("false"));
    assert!(
        first
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json"))
    );
    assert_security_headers(&first.headers);
    let message = first.json();
    let id = message["id"].as_str().expect("an id").to_string();
    assert!(!id.is_empty());
    assert_eq!(message["role"], "user");
    assert_eq!(message["kind"], "chat");
    assert_eq!(message["status"], "complete");
    assert_eq!(message["content"], "hello there");
    assert!(message["seq"].is_i64());
    assert_eq!(message["reply_to"], Value::Null);
    assert_eq!(message["proposals"], json!([]));

    // Stored: the message, its event, and the signal for the main thread.
    let stored = api.store.list_messages(USER, None, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(serde_json::to_value(&stored[0]).unwrap(), message);
    let events = api.store.events_after(USER, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "message.created");
    assert_eq!(events[0].data, message);
    let outbox = api
        .store
        .claim_outbox("test-relay", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].user_id, USER);
    assert_eq!(outbox[0].workflow_id, "main-thread/me");
    assert_eq!(outbox[0].signal, SIGNAL_MESSAGE);
    let payload: Value = serde_json::from_str(&outbox[0].payload).unwrap();
    assert_eq!(payload, json!({ "message_id": id }));
    let once = api.stored().await;
    assert_eq!((once.messages, once.outbox, once.events), (1, 1, 1));

    // The same request again is a replay: the same message, nothing new.
    let again = send(
        api.post_message("hello there")
            .header("idempotency-key", "key-1"),
    )
    .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "body: {}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), message);
    assert_eq!(api.stored().await, once);

    // The same key for something else is refused, and stores nothing.
    let reused = send(
        api.post_message("something else")
            .header("idempotency-key", "key-1"),
    )
    .await;
    let text = reused.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        code::IDEMPOTENCY_KEY_REUSED,
    );
    assert_contains(&text, "Idempotency-Key");
    assert_eq!(api.stored().await, once);

    // Another key is another message; so is every post without a key.
    api.accept("hello there", "key-2").await;
    for _ in 0..2 {
        let reply = send(api.post_message("no key")).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "body: {}", reply.text);
        assert_eq!(reply.header("idempotent-replayed"), Some("false"));
    }
    let after = api.stored().await;
    assert_eq!((after.messages, after.outbox, after.events), (4, 4, 4));
}

// ---------------------------------------------------------------------------------------
// 9: token authentication and sessions
// ---------------------------------------------------------------------------------------

fn session_cookie(reply: &Reply) -> String {
    let set_cookie = reply.header("set-cookie").expect("a Set-Cookie header");
    let pair = set_cookie
        .split(';')
        .next()
        .expect("a name=value pair")
        .trim();
    let value = pair
        .strip_prefix("mainloop_session=")
        .unwrap_or_else(|| panic!("the session cookie: {set_cookie:?}"));
    assert!(!value.is_empty(), "{set_cookie:?}");
    pair.to_string()
}

fn cookie_attributes(reply: &Reply) -> Vec<String> {
    reply
        .header("set-cookie")
        .expect("a Set-Cookie header")
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_string())
        .collect()
}

async fn session_info(request: RequestBuilder) -> Value {
    let reply = send(request).await;
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.text);
    reply.json()
}

#[tokio::test]
async fn token_mode_needs_a_bearer_token() {
    let api = Api::start_token(TOKEN).await;

    let reply = send(api.post_message("hi")).await;
    let message = reply.error(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED);
    assert_contains(&message, "Bearer");
    let challenge = reply.header("www-authenticate").expect("WWW-Authenticate");
    assert!(challenge.starts_with("Bearer"), "{challenge:?}");

    for authorization in [
        "Bearer wrong-token-of-some-length".to_string(),
        "Bearer ".to_string(),
        format!("Bearer {TOKEN}x"),
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
    ] {
        let reply = send(
            api.post_message("hi")
                .header("authorization", authorization.as_str()),
        )
        .await;
        reply.error(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED);
        assert!(reply.header("www-authenticate").is_some());
    }
    // Every protected route is protected.
    for request in [
        api.get("/api/messages"),
        api.get("/api/events"),
        api.post("/api/proposals/p-1/reject"),
    ] {
        send(request)
            .await
            .error(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED);
    }
    api.assert_nothing_stored().await;

    let bearer = format!("Bearer {TOKEN}");
    let reply = send(
        api.post_message("hi")
            .header("authorization", bearer.as_str()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "body: {}", reply.text);
    let reply = send(
        api.get("/api/messages")
            .header("authorization", bearer.as_str()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.text);
    assert_eq!(reply.json()["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_that_authenticates() {
    let api = Api::start_token(TOKEN).await;

    // Wrong token: 401, no cookie.
    let wrong = send(api.post_json(
        "/api/login",
        json!({ "token": "not-the-token" }).to_string(),
    ))
    .await;
    let message = wrong.error(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED);
    assert_contains(&message, "token");
    assert!(wrong.header("set-cookie").is_none());
    // A malformed login is refused like any body.
    send(api.post_json("/api/login", "{"))
        .await
        .error(StatusCode::BAD_REQUEST, code::MALFORMED_JSON);
    send(api.post_json("/api/login", "{}"))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY, code::INVALID_BODY);

    // Right token: 204 and the session cookie.
    let login = send(api.post_json("/api/login", json!({ "token": TOKEN }).to_string())).await;
    assert_eq!(login.status, StatusCode::NO_CONTENT, "body: {}", login.text);
    assert!(login.text.is_empty());
    assert_security_headers(&login.headers);
    let cookie = session_cookie(&login);
    let attributes = cookie_attributes(&login);
    for expected in [
        "HttpOnly".to_string(),
        "SameSite=Strict".to_string(),
        "Path=/".to_string(),
        format!("Max-Age={}", SESSION_TTL.as_secs()),
    ] {
        assert!(
            attributes.contains(&expected),
            "{expected} in {attributes:?}"
        );
    }
    // Plain HTTP on loopback: the cookie cannot be Secure…
    assert!(!attributes.iter().any(|a| a == "Secure"), "{attributes:?}");
    // …behind a TLS-terminating proxy it must be.
    let proxied = send(
        api.post_json("/api/login", json!({ "token": TOKEN }).to_string())
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(proxied.status, StatusCode::NO_CONTENT);
    assert!(cookie_attributes(&proxied).iter().any(|a| a == "Secure"));

    // The cookie authenticates reads, writes and the event stream.
    let reply = send(api.get("/api/messages").header("cookie", cookie.as_str())).await;
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.text);
    let reply = send(
        api.post_message("with a cookie")
            .header("cookie", format!("theme=dark; {cookie}")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "body: {}", reply.text);
    let mut events = SseClient::connect(
        &api.url("/api/events?after=0"),
        &[("cookie", cookie.as_str())],
        None,
    )
    .await
    .expect("the cookie opens the event stream");
    let event = events.next(WAIT).await.unwrap().expect("an event");
    assert_eq!(event.event, "message.created");
    assert_eq!(event.json().unwrap()["content"], "with a cookie");

    // Logout clears the cookie.
    let logout = send(api.post("/api/logout").header("cookie", cookie.as_str())).await;
    assert_eq!(
        logout.status,
        StatusCode::NO_CONTENT,
        "body: {}",
        logout.text
    );
    let cleared = logout.header("set-cookie").expect("Set-Cookie on logout");
    assert!(cleared.starts_with("mainloop_session=;"), "{cleared:?}");
    let attributes = cookie_attributes(&logout);
    for expected in ["Max-Age=0", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            attributes.iter().any(|a| a == expected),
            "{expected} in {attributes:?}"
        );
    }
}

#[tokio::test]
async fn tampered_or_foreign_session_cookies_are_401() {
    let api = Api::start_token(TOKEN).await;
    let login = send(api.post_json("/api/login", json!({ "token": TOKEN }).to_string())).await;
    let cookie = session_cookie(&login);
    let value = cookie.strip_prefix("mainloop_session=").unwrap();

    // Flip the last character of the signature.
    let mut tampered = value.to_string();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    // Push the expiry out by a digit, keeping the signature.
    let extended = value.replacen("v1.", "v1.9", 1);
    // Signed by a server with another token.
    let other = Api::start_token("another-long-enough-secret").await;
    let foreign = session_cookie(
        &send(other.post_json(
            "/api/login",
            json!({ "token": "another-long-enough-secret" }).to_string(),
        ))
        .await,
    );
    let foreign = foreign
        .strip_prefix("mainloop_session=")
        .unwrap()
        .to_string();
    for bad in [
        tampered.as_str(),
        extended.as_str(),
        foreign.as_str(),
        "v1.99999999999.deadbeef",
        "garbage",
        "",
    ] {
        let cookie = format!("mainloop_session={bad}");
        let reply = send(api.get("/api/messages").header("cookie", cookie.as_str())).await;
        reply.error(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED);
        assert!(reply.header("www-authenticate").is_some());
        let reply = send(api.post_message("hi").header("cookie", cookie.as_str())).await;
        reply.error(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED);
        let info = session_info(api.get("/api/session").header("cookie", cookie.as_str())).await;
        assert_eq!(info["authenticated"], false, "{bad:?}: {info}");
    }
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn the_session_endpoint_reports_the_callers_state() {
    let api = Api::start_token(TOKEN).await;
    let anonymous = session_info(api.get("/api/session")).await;
    assert_eq!(anonymous["auth"], "token");
    assert_eq!(anonymous["authenticated"], false);
    assert_eq!(anonymous["user"], Value::Null);

    let info = session_info(
        api.get("/api/session")
            .header("authorization", format!("Bearer {TOKEN}")),
    )
    .await;
    assert_eq!(
        info,
        json!({ "auth": "token", "authenticated": true, "user": USER })
    );
    let info = session_info(
        api.get("/api/session")
            .header("authorization", "Bearer not-the-right-token"),
    )
    .await;
    assert_eq!(info["authenticated"], false);

    let login = send(api.post_json("/api/login", json!({ "token": TOKEN }).to_string())).await;
    let cookie = session_cookie(&login);
    let info = session_info(api.get("/api/session").header("cookie", cookie.as_str())).await;
    assert_eq!(
        info,
        json!({ "auth": "token", "authenticated": true, "user": USER })
    );

    // After logout the browser drops the cookie: anonymous again.
    let logout = send(api.post("/api/logout").header("cookie", cookie.as_str())).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let info = session_info(api.get("/api/session")).await;
    assert_eq!(info, anonymous);

    // In `none` mode everyone is the configured user.
    let open = Api::start_none().await;
    let info = session_info(open.get("/api/session")).await;
    assert_eq!(
        info,
        json!({ "auth": "none", "authenticated": true, "user": USER })
    );
    // Logging in there is a no-op success, without a cookie.
    let login =
        send(open.post_json("/api/login", json!({ "token": "anything" }).to_string())).await;
    assert_eq!(login.status, StatusCode::NO_CONTENT);
    assert!(login.header("set-cookie").is_none());
}

#[tokio::test]
async fn health_readiness_openapi_and_session_need_no_credentials() {
    let api = Api::start_token(TOKEN).await;
    let reply = send(api.get("/healthz")).await;
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.text);
    assert_eq!(reply.json(), json!({ "status": "ok" }));
    let reply = send(api.get("/api/openapi.json")).await;
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.text);
    let reply = send(api.get("/api/session")).await;
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.text);
    // Not ready (no Temporal), but not for want of credentials.
    let reply = send(api.get("/readyz")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "body: {}",
        reply.text
    );
}

// ---------------------------------------------------------------------------------------
// 10: cross-origin requests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cross_origin_writes_are_403() {
    let api = Api::start_none().await;
    let port = api.host.rsplit(':').next().unwrap().to_string();
    let refused: Vec<Vec<(&str, String)>> = vec![
        vec![("origin", "https://evil.example".into())],
        vec![("origin", "null".into())],
        vec![("origin", format!("http://localhost:{port}"))],
        vec![(
            "origin",
            format!("http://127.0.0.1:{}", port.parse::<u16>().unwrap() + 1),
        )],
        vec![("origin", format!("http://{}.evil.example", api.host))],
        vec![("sec-fetch-site", "cross-site".into())],
        vec![
            ("origin", format!("http://{}", api.host)),
            ("sec-fetch-site", "cross-site".into()),
        ],
    ];
    for headers in refused {
        let mut request = api.post_message("from elsewhere");
        for (name, value) in &headers {
            request = request.header(*name, value.as_str());
        }
        let reply = send(request).await;
        let message = reply.error(StatusCode::FORBIDDEN, code::CROSS_ORIGIN);
        assert_contains(&message, "cross-origin");
    }
    api.assert_nothing_stored().await;

    // The page's own origin may write.
    let own = format!("http://{}", api.host);
    let reply = send(
        api.post_message("from the app")
            .header("origin", own.as_str())
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "body: {}", reply.text);
    // Scripts send no Origin at all.
    api.accept("from a script", "script-1").await;
    assert_eq!(api.stored().await.messages, 2);

    // Reads are not refused (and no CORS header lets another origin see them).
    let reply = send(
        api.get("/api/messages")
            .header("origin", "https://evil.example")
            .header("sec-fetch-site", "cross-site"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cross_origin_login_is_403_without_a_cookie() {
    let api = Api::start_token(TOKEN).await;
    let reply = send(
        api.post_json("/api/login", json!({ "token": TOKEN }).to_string())
            .header("origin", "https://evil.example"),
    )
    .await;
    reply.error(StatusCode::FORBIDDEN, code::CROSS_ORIGIN);
    assert!(reply.header("set-cookie").is_none());
    // Even with a valid bearer token, a cross-site write is refused.
    let reply = send(
        api.post_message("hi")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("sec-fetch-site", "cross-site"),
    )
    .await;
    reply.error(StatusCode::FORBIDDEN, code::CROSS_ORIGIN);
    api.assert_nothing_stored().await;
}

// ---------------------------------------------------------------------------------------
// 11: listing and pagination
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_list_queries_are_400_invalid_query() {
    let api = Api::start_none().await;
    for (query, mentions) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=500", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("before=abc", "before"),
        ("bogus=1", "bogus"),
        ("limit=2&bogus=1", "bogus"),
    ] {
        let reply = send(api.get(&format!("/api/messages?{query}"))).await;
        let message = reply.error(StatusCode::BAD_REQUEST, code::INVALID_QUERY);
        assert_contains(&message, mentions);
        assert!(!message.contains("Failed to deserialize"), "{message:?}");
    }
    api.assert_nothing_stored().await;
    for query in ["limit=1", "limit=200", "before=1", ""] {
        let reply = send(api.get(&format!("/api/messages?{query}"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
    }
}

fn contents(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["content"].as_str().expect("text content").to_string())
        .collect()
}

fn no_more(page: &Value) -> bool {
    page.get("next_before").is_none_or(Value::is_null)
}

#[tokio::test]
async fn pages_walk_back_from_the_newest() {
    let api = Api::start_none().await;
    let empty = send(api.get("/api/messages")).await.json();
    assert_eq!(contents(&empty), Vec::<String>::new());
    assert!(no_more(&empty));
    assert_eq!(empty["last_event_id"], 0);

    // Another user's messages are never listed.
    api.store
        .accept_user_message(
            "someone-else",
            "other-1",
            "not yours",
            "main-thread/someone-else",
        )
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for n in 1..=5 {
        let message = api.accept(&format!("m{n}"), &format!("key-{n}")).await;
        seqs.push(message["seq"].as_i64().unwrap());
    }
    let last_event_id = api.store.last_event_id().await.unwrap();

    let page = send(api.get("/api/messages?limit=2")).await.json();
    assert_eq!(contents(&page), ["m4", "m5"]);
    assert_eq!(page["next_before"], seqs[3]);
    assert_eq!(page["last_event_id"], last_event_id);

    let page = send(api.get(&format!("/api/messages?limit=2&before={}", seqs[3])))
        .await
        .json();
    assert_eq!(contents(&page), ["m2", "m3"]);
    assert_eq!(page["next_before"], seqs[1]);

    let page = send(api.get(&format!("/api/messages?limit=2&before={}", seqs[1])))
        .await
        .json();
    assert_eq!(contents(&page), ["m1"]);
    assert!(no_more(&page), "{page}");
    assert_eq!(page["last_event_id"], last_event_id);

    // A page that ends exactly on the first message has nothing before it.
    let page = send(api.get(&format!("/api/messages?limit=2&before={}", seqs[2])))
        .await
        .json();
    assert_eq!(contents(&page), ["m1", "m2"]);
    assert!(no_more(&page), "{page}");

    // The default page holds everything here.
    let page = send(api.get("/api/messages")).await.json();
    assert_eq!(contents(&page), ["m1", "m2", "m3", "m4", "m5"]);
    assert!(no_more(&page), "{page}");
}

// ---------------------------------------------------------------------------------------
// 12: the event stream
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_event_cursors_are_400() {
    let api = Api::start_none().await;
    for value in ["abc", "-1", "1.5", ""] {
        let reply = send(api.get("/api/events").header("last-event-id", value)).await;
        let message = reply.error(StatusCode::BAD_REQUEST, code::INVALID_HEADER);
        assert_contains(&message, "Last-Event-ID");
    }
    for query in ["after=abc", "after=-1", "bogus=1"] {
        let reply = send(api.get(&format!("/api/events?{query}"))).await;
        reply.error(StatusCode::BAD_REQUEST, code::INVALID_QUERY);
    }
    api.assert_nothing_stored().await;
}

/// Reads exactly `n` events.
async fn read_events(client: &mut SseClient, n: usize) -> Vec<mainloop_testkit::sse::SseEvent> {
    let mut events = Vec::new();
    for _ in 0..n {
        let event = client
            .next(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}; received so far: {events:?}"))
            .unwrap_or_else(|| panic!("the stream closed; received so far: {events:?}"));
        events.push(event);
    }
    events
}

#[tokio::test]
async fn the_event_stream_replays_after_a_cursor_then_follows_live() {
    let api = Api::start_none().await;
    let mut posted = Vec::new();
    for n in 1..=3 {
        posted.push(api.accept(&format!("m{n}"), &format!("key-{n}")).await);
    }
    let stored = api.store.events_after(USER, 0, 100).await.unwrap();
    assert_eq!(stored.len(), 3);
    let first = stored[0].id.to_string();

    let by_header = SseClient::connect(&api.url("/api/events"), &[], Some(&first))
        .await
        .expect("connect with Last-Event-ID");
    let by_query = SseClient::connect(&api.url(&format!("/api/events?after={first}")), &[], None)
        .await
        .expect("connect with ?after=");
    let live = SseClient::connect(&api.url("/api/events"), &[], None)
        .await
        .expect("connect without a cursor");

    let mut clients = [by_header, by_query];
    for client in &mut clients {
        let events = read_events(client, 2).await;
        let ids: Vec<i64> = events.iter().map(|e| e.id_number().unwrap()).collect();
        assert_eq!(ids, [stored[1].id, stored[2].id]);
        for (event, message) in events.iter().zip(&posted[1..]) {
            assert_eq!(event.event, "message.created");
            assert_eq!(&event.json().unwrap(), message);
        }
    }

    // Nothing else was queued: the next event everyone sees is the next message, which the
    // live stream (connected before it was posted) sees first.
    // Another user's events are never part of this stream.
    api.store
        .accept_user_message(
            "someone-else",
            "other-1",
            "not yours",
            "main-thread/someone-else",
        )
        .await
        .unwrap();
    let fourth = api.accept("m4", "key-4").await;
    let [by_header, by_query] = clients;
    for mut client in [by_header, by_query, live] {
        let next = read_events(&mut client, 1).await.remove(0);
        assert!(next.id_number().unwrap() > stored[2].id);
        assert_eq!(next.event, "message.created");
        assert_eq!(next.json().unwrap(), fourth);
    }
}

#[tokio::test]
async fn the_event_stream_carries_the_security_headers() {
    let api = Api::start_none().await;
    let response = api
        .get("/api/events")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"))
    );
    assert_security_headers(response.headers());
}

// ---------------------------------------------------------------------------------------
// 13: proposals
// ---------------------------------------------------------------------------------------

/// Stores a proposal for `user` the way a chat turn does: on the reply to a user message.
async fn make_proposal(store: &Store, user: &str, id: &str) {
    let accepted = store
        .accept_user_message(
            user,
            &format!("for-{id}"),
            "do something",
            &format!("main-thread/{user}"),
        )
        .await
        .expect("a user message");
    let reply = store
        .start_reply(user, &accepted.message.id)
        .await
        .expect("a reply");
    let proposal = store
        .create_proposal(
            user,
            &NewProposal {
                id: id.into(),
                message_id: reply.message.id.clone(),
                title: "Add dark mode".into(),
                description: "Follow the system theme".into(),
                repo: "https://github.com/acme/web".into(),
                model: None,
                skip_planning: false,
            },
        )
        .await
        .expect("a proposal");
    assert_eq!(proposal.id, id);
}

#[tokio::test]
async fn rejecting_proposals() {
    let api = Api::start_none().await;

    let reply = send(api.post("/api/proposals/no-such-proposal/reject")).await;
    let message = reply.error(StatusCode::NOT_FOUND, code::NOT_FOUND);
    assert_contains(&message, "proposal");
    api.assert_nothing_stored().await;

    make_proposal(&api.store, USER, "prop-1").await;
    make_proposal(&api.store, "someone-else", "prop-other").await;
    let before = api.stored().await;

    // Cross-origin: refused, still pending.
    let reply = send(
        api.post("/api/proposals/prop-1/reject")
            .header("origin", "https://evil.example"),
    )
    .await;
    reply.error(StatusCode::FORBIDDEN, code::CROSS_ORIGIN);
    assert_eq!(api.stored().await, before);

    let reply = send(api.post("/api/proposals/prop-1/reject")).await;
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.text);
    assert_security_headers(&reply.headers);
    let proposal = reply.json();
    assert_eq!(proposal["id"], "prop-1");
    assert_eq!(proposal["status"], "rejected");
    assert!(proposal["decided_at"].is_string(), "{proposal}");
    assert_eq!(proposal["title"], "Add dark mode");
    let stored = api.store.get_proposal(USER, "prop-1").await.unwrap();
    assert_eq!(serde_json::to_value(&stored).unwrap(), proposal);
    // The decision is queued for the main thread and announced.
    let after = api.stored().await;
    assert_eq!(after.outbox, before.outbox + 1);
    assert_eq!(after.events, before.events + 1);
    let events = api
        .store
        .events_after(USER, before.last_event, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "proposal.updated");
    assert_eq!(events[0].data, proposal);
    let claimed = api
        .store
        .claim_outbox("test-relay", 100, Duration::from_secs(60))
        .await
        .unwrap();
    let decisions: Vec<_> = claimed
        .iter()
        .filter(|item| item.signal == SIGNAL_PROPOSAL_DECISION)
        .collect();
    assert_eq!(decisions.len(), 1, "{claimed:?}");
    assert_eq!(decisions[0].user_id, USER);
    assert_eq!(decisions[0].workflow_id, "main-thread/me");
    let payload: Value = serde_json::from_str(&decisions[0].payload).unwrap();
    assert_eq!(
        payload,
        json!({ "proposal_id": "prop-1", "decision": "rejected" })
    );

    // Deciding twice is a conflict, and changes nothing.
    let reply = send(api.post("/api/proposals/prop-1/reject")).await;
    let message = reply.error(StatusCode::CONFLICT, code::CONFLICT);
    assert_contains(&message, "rejected");
    assert_eq!(api.stored().await, after);

    // Another user's proposal does not exist for this user.
    let reply = send(api.post("/api/proposals/prop-other/reject")).await;
    let mine = reply.error(StatusCode::NOT_FOUND, code::NOT_FOUND);
    let unknown = send(api.post("/api/proposals/prop-unknown/reject"))
        .await
        .error(StatusCode::NOT_FOUND, code::NOT_FOUND);
    assert_eq!(mine, unknown, "the answer must not reveal that it exists");
    assert_eq!(api.stored().await, after);
    let other = api
        .store
        .get_proposal("someone-else", "prop-other")
        .await
        .unwrap();
    assert_eq!(other.status, mainloop_store::ProposalStatus::Pending);
}

// ---------------------------------------------------------------------------------------
// 14-17: routing fallbacks, readiness, OpenAPI, security headers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let api = Api::start_none().await;
    for request in [
        // GETs outside /api are the web app's (tests/app.rs); other methods are not.
        api.post("/nope"),
        api.get("/api/nope"),
        api.post("/api/nope"),
        api.get("/api/messages/extra"),
        api.post("/api/proposals/p-1/confirm"),
    ] {
        let reply = send(request).await;
        let message = reply.error(StatusCode::NOT_FOUND, code::NOT_FOUND);
        assert_contains(&message, "not found");
    }
    for request in [
        api.http.delete(api.url("/api/messages")),
        api.http
            .put(api.url("/api/messages"))
            .header("content-type", "application/json")
            .body(r#"{"content":"hi"}"#),
        api.http.patch(api.url("/api/messages")),
        api.get("/api/proposals/p-1/reject"),
        api.post("/healthz"),
        api.post("/api/events"),
        api.get("/api/login"),
    ] {
        let reply = send(request).await;
        let message = reply.error(StatusCode::METHOD_NOT_ALLOWED, code::METHOD_NOT_ALLOWED);
        assert_contains(&message, "method");
    }
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn readyz_is_503_without_temporal() {
    let api = Api::start_none().await;
    let reply = send(api.get("/readyz")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "body: {}",
        reply.text
    );
    assert_security_headers(&reply.headers);
    let body = reply.json();
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["store"], "ok", "{body}");
    let temporal = body["temporal"].as_str().expect("a temporal status");
    assert_ne!(temporal, "ok");
    assert!(!temporal.is_empty());
    assert_eq!(body["outbox_backlog"], 0, "{body}");

    // The backlog counts what is waiting for Temporal.
    api.accept("hi", "k-1").await;
    let body = send(api.get("/readyz")).await.json();
    assert_eq!(body["outbox_backlog"], 1, "{body}");
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let api = Api::start_none().await;
    let reply = send(api.get("/api/openapi.json")).await;
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.text);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json"))
    );
    let doc = reply.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api/messages", "get"),
        ("/api/messages", "post"),
        ("/api/events", "get"),
        ("/api/proposals/{id}/reject", "post"),
        ("/api/login", "post"),
        ("/api/logout", "post"),
        ("/api/session", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} in {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    let post = &paths["/api/messages"]["post"];
    for status in ["202", "400", "401", "413", "415", "422"] {
        assert!(
            post["responses"].get(status).is_some(),
            "POST /api/messages documents {status}"
        );
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http", "{schemes}");
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["session"]["type"], "apiKey", "{schemes}");
    assert_eq!(schemes["session"]["in"], "cookie", "{schemes}");
    assert_eq!(schemes["session"]["name"], "mainloop_session", "{schemes}");
    let security = doc["security"].as_array().expect("top-level security");
    assert!(security.iter().any(|s| s.get("bearer").is_some()));
    assert!(security.iter().any(|s| s.get("session").is_some()));
    for schema in ["Message", "Proposal", "Event", "ErrorBody"] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "schema {schema}"
        );
    }
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let api = Api::start_token(TOKEN).await;
    let bearer = format!("Bearer {TOKEN}");
    let replies = [
        send(api.get("/healthz")).await,
        send(api.get("/readyz")).await,
        send(api.get("/api/openapi.json")).await,
        send(api.get("/api/session")).await,
        send(api.post("/nope")).await,
        send(api.http.delete(api.url("/api/messages"))).await,
        send(api.get("/api/messages")).await,
        send(
            api.get("/api/messages")
                .header("authorization", bearer.as_str()),
        )
        .await,
        send(
            api.post_message("hi")
                .header("authorization", bearer.as_str()),
        )
        .await,
        send(
            api.post_json("/api/messages", body_of_len(BODY_LIMIT + 1))
                .header("authorization", bearer.as_str()),
        )
        .await,
        send(
            api.post_message("hi")
                .header("origin", "https://evil.example"),
        )
        .await,
        send(api.post_json("/api/login", json!({ "token": TOKEN }).to_string())).await,
    ];
    for reply in &replies {
        assert_security_headers(&reply.headers);
    }
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [200, 503, 200, 200, 404, 405, 401, 200, 202, 413, 403, 204]
    );
}

#[tokio::test]
async fn the_openapi_document_marks_public_routes_as_public() {
    // The document requires `bearer` or `session` globally; the routes served without
    // credentials must say so (`security: []`), or clients and docs think they need them.
    let api = Api::start_none().await;
    let doc = send(api.get("/api/openapi.json")).await.json();
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/api/login", "post"),
        ("/api/logout", "post"),
        ("/api/session", "get"),
    ] {
        let operation = &doc["paths"][path][method];
        // `[]` overrides the global requirement; `[{}]` makes credentials optional.
        let public = operation
            .get("security")
            .and_then(Value::as_array)
            .is_some_and(|s| s.is_empty() || s.iter().any(|r| r == &json!({})));
        assert!(public, "{method} {path} needs no credentials: {operation}");
    }
    // The protected ones inherit the global requirement (or restate it).
    let protected = &doc["paths"]["/api/messages"]["post"];
    assert!(
        protected
            .get("security")
            .is_none_or(|s| s.as_array().is_some_and(|a| !a.is_empty())),
        "{protected}"
    );
}
