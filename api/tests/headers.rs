//! Every response carries the security headers: each operation of the OpenAPI document
//! (with and without credentials), the event stream, the document itself, the app's pages
//! and static files, 404s, 405s, 413s and cross-origin refusals. API JSON is never cached.

use std::path::Path;
use std::time::Duration;

use mainloop_api::{AuthMode, WebAssets};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

mod common;
use common::{Served, serve};

const TOKEN: &str = "a-long-enough-secret";
const BODY_LIMIT: usize = 4096;

fn fake_build(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("_app/immutable/entry"))?;
    std::fs::write(
        root.join("index.html"),
        "<!doctype html><html><body><script>boot()</script></body></html>",
    )?;
    std::fs::write(root.join("_app/immutable/entry/start.abc.js"), "export {}")?;
    std::fs::write(
        root.join("favicon.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
    )?;
    Ok(())
}

struct Site {
    served: Served,
    http: reqwest::Client,
}

impl Site {
    async fn start() -> Site {
        let served = serve(
            AuthMode::Token {
                token: TOKEN.into(),
            },
            "me",
            |settings, dir| {
                let build = dir.join("build");
                fake_build(&build).expect("a fake build");
                settings.web = WebAssets::Dir(build);
                settings.body_limit = BODY_LIMIT;
                settings.webhook_secret = Some("webhook-secret".into());
            },
        )
        .await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Site { served, http }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.served.base()))
    }
}

/// Asserts the headers every response must carry; `what` names the request in failures.
fn assert_secure(what: &str, response: &Response) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let csp = header("content-security-policy");
    assert!(
        csp.contains("frame-ancestors 'none'"),
        "{what}: CSP {csp:?}"
    );
    assert!(csp.contains("base-uri 'none'"), "{what}: CSP {csp:?}");
    assert!(!csp.contains("unsafe-eval"), "{what}: CSP {csp:?}");
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        assert_eq!(header(name), value, "{what}: {name}");
    }
    let permissions = header("permissions-policy");
    for feature in ["camera=()", "microphone=()", "geolocation=()"] {
        assert!(permissions.contains(feature), "{what}: {permissions:?}");
    }
    assert!(
        !header("cache-control").is_empty(),
        "{what}: no cache-control"
    );
    if header("content-type").starts_with("application/json") {
        assert_eq!(
            header("cache-control"),
            "no-store",
            "{what}: JSON is not cached"
        );
    }
    // Plain HTTP here: HSTS only when a proxy says the client used HTTPS.
    assert_eq!(header("strict-transport-security"), "", "{what}");
}

/// Every operation in the document, with `{params}` filled in.
async fn operations(site: &Site) -> Vec<(Method, String)> {
    let doc: Value = site
        .request(Method::GET, "/api/openapi.json")
        .send()
        .await
        .expect("the document")
        .json()
        .await
        .expect("JSON");
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let filled = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "x"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().expect("a path item").keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            operations.push((method, filled.clone()));
        }
    }
    assert!(operations.len() >= 20, "{operations:?}");
    operations
}

#[tokio::test]
async fn every_documented_operation_answers_with_the_security_headers() {
    let site = Site::start().await;
    let bearer = format!("Bearer {TOKEN}");
    let mut statuses = std::collections::BTreeSet::new();
    for (method, path) in operations(&site).await {
        for authenticated in [true, false] {
            let mut request = site.request(method.clone(), &path);
            if authenticated {
                request = request.header("authorization", bearer.as_str());
            }
            if method == Method::POST {
                request = request
                    .header("content-type", "application/json")
                    .body("{}");
            }
            let response = request.send().await.expect("an answer");
            let what = format!("{method} {path} (credentials: {authenticated})");
            statuses.insert(response.status().as_u16());
            assert_secure(&what, &response);
        }
    }
    // The sweep met successes, refusals and errors alike.
    for status in [200, 401, 404] {
        assert!(statuses.contains(&status), "{statuses:?}");
    }
}

#[tokio::test]
async fn pages_files_errors_and_the_event_stream_carry_the_security_headers() {
    let site = Site::start().await;
    let bearer = format!("Bearer {TOKEN}");
    let cases: Vec<(&str, RequestBuilder, u16)> = vec![
        ("the app", site.request(Method::GET, "/"), 200),
        ("an app route", site.request(Method::GET, "/tasks/abc"), 200),
        ("HEAD of the app", site.request(Method::HEAD, "/inbox"), 200),
        (
            "a hashed asset",
            site.request(Method::GET, "/_app/immutable/entry/start.abc.js"),
            200,
        ),
        ("an SVG", site.request(Method::GET, "/favicon.svg"), 200),
        (
            "a missing asset",
            site.request(Method::GET, "/_app/immutable/gone.js"),
            404,
        ),
        (
            "a traversal",
            site.request(Method::GET, "/_app/..%2f..%2fCargo.toml"),
            404,
        ),
        (
            "an unknown API route",
            site.request(Method::GET, "/api/nope"),
            404,
        ),
        (
            "a wrong method",
            site.request(Method::DELETE, "/api/messages"),
            405,
        ),
        (
            "the document",
            site.request(Method::GET, "/api/openapi.json"),
            200,
        ),
        ("health", site.request(Method::GET, "/healthz"), 200),
        (
            "readiness without Temporal",
            site.request(Method::GET, "/readyz"),
            503,
        ),
        (
            "a body over the limit",
            site.request(Method::POST, "/api/messages")
                .header("authorization", bearer.as_str())
                .header("content-type", "application/json")
                .body("x".repeat(BODY_LIMIT + 1)),
            413,
        ),
        (
            "a cross-origin write",
            site.request(Method::POST, "/api/inbox/read-all")
                .header("authorization", bearer.as_str())
                .header("origin", "https://evil.example"),
            403,
        ),
        (
            "malformed JSON",
            site.request(Method::POST, "/api/messages")
                .header("authorization", bearer.as_str())
                .header("content-type", "application/json")
                .body("{"),
            400,
        ),
        (
            "a bad webhook signature",
            site.request(Method::POST, "/api/github/webhook")
                .header("x-hub-signature-256", "sha256=00")
                .body("{}"),
            401,
        ),
    ];
    for (what, request, status) in cases {
        let response = request.send().await.expect("an answer");
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_secure(what, &response);
    }
    // The event stream: its headers arrive before any event does.
    let stream = site
        .request(Method::GET, "/api/events")
        .header("authorization", bearer.as_str())
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(stream.status(), 200);
    assert_secure("the event stream", &stream);
    // The app's page keeps its own policy, which allows its boot script and nothing else.
    let page = site.request(Method::GET, "/").send().await.expect("page");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii");
    assert!(csp.contains("script-src 'self' 'sha256-"), "{csp}");
    let json = site
        .request(Method::GET, "/healthz")
        .send()
        .await
        .expect("health");
    assert!(
        json.headers()["content-security-policy"]
            .to_str()
            .expect("ascii")
            .starts_with("default-src 'none'")
    );
}

#[tokio::test]
async fn hsts_is_sent_when_the_proxy_says_https() {
    let site = Site::start().await;
    for (proto, expected) in [("https", true), ("http", false)] {
        let response = site
            .request(Method::GET, "/healthz")
            .header("x-forwarded-proto", proto)
            .send()
            .await
            .expect("health");
        let hsts = response.headers().get("strict-transport-security");
        assert_eq!(hsts.is_some(), expected, "{proto}: {hsts:?}");
        if let Some(hsts) = hsts {
            assert!(hsts.to_str().expect("ascii").contains("max-age="));
        }
    }
}
