//! What the web app relies on: the router serves the app for its routes (with a CSP naming
//! the boot script), its hashed assets with long cache headers, still answers unknown API
//! routes with JSON 404s, tells the app its configuration, and every event the store writes
//! fits the schema the app's TypeScript types are generated from.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use mainloop_api::openapi::{
    MessageDelta, MessageStarted, MessageWaiting, TaskInputEvent, TaskLogEvent,
};
use mainloop_api::web::inline_script_hashes;
use mainloop_api::{AppConfig, AuthMode, WebAssets};
use mainloop_store::{
    ConfirmOverrides, InboxItem, InboxKind, Message, NewInboxItem, NewProposal, NewTaskInput,
    Proposal, Store, Task, TaskProjection, TaskStatus,
};
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod common;
use common::{Served, serve};

const TOKEN: &str = "a-long-enough-secret";
const BOOT: &str = "\n\t\t\t{ __sveltekit_x = { base: \"\" }; import(\"/_app/immutable/entry/start.abc.js\"); }\n\t\t";
const START_JS: &str = "export const start = 1;";

struct App {
    base: String,
    store: Store,
    http: reqwest::Client,
    _served: Served,
}

/// A build as SvelteKit's static adapter lays it out, with one precompressed asset.
fn fake_build(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("_app/immutable/entry"))?;
    std::fs::write(
        root.join("index.html"),
        format!(
            "<!doctype html><html><head><link rel=\"modulepreload\" \
             href=\"/_app/immutable/entry/start.abc.js\"></head><body>\
             <div><script>{BOOT}</script></div></body></html>"
        ),
    )?;
    std::fs::write(root.join("_app/immutable/entry/start.abc.js"), START_JS)?;
    std::fs::write(root.join("_app/immutable/entry/start.abc.js.br"), b"brotli")?;
    std::fs::write(root.join("manifest.webmanifest"), "{}")?;
    Ok(())
}

impl App {
    async fn start(mode: AuthMode, web: Option<&str>) -> App {
        let served = serve(mode, "me", |settings, dir| {
            let build = dir.join(web.unwrap_or("no-build"));
            if web.is_some() {
                fake_build(&build).expect("write a fake build");
            }
            settings.body_limit = 4096;
            settings.app = AppConfig {
                temporal_ui_url: Some("http://127.0.0.1:8233".into()),
                temporal_namespace: "default".into(),
            };
            settings.web = WebAssets::Dir(build);
        })
        .await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        App {
            base: served.base(),
            store: served.store.clone(),
            http,
            _served: served,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET")
    }
}

fn header(response: &reqwest::Response, name: impl reqwest::header::AsHeaderName) -> &str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn app_routes_get_index_html_with_a_policy_that_allows_only_the_boot_script() {
    let app = App::start(AuthMode::None, Some("build")).await;
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(BOOT.as_bytes()));
    for path in ["/", "/tasks/0199-abc", "/inbox", "/index.html"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&response, CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(header(&response, CACHE_CONTROL), "no-cache");
        let policy = header(&response, CONTENT_SECURITY_POLICY).to_string();
        assert!(
            policy.contains(&format!("script-src 'self' 'sha256-{hash}';")),
            "{policy}"
        );
        let scripts = policy
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap_or_default();
        assert!(!scripts.contains("unsafe"), "{policy}");
        assert!(policy.contains("style-src 'self';"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        // The API's security headers cover the app too.
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        assert_eq!(header(&response, "x-frame-options"), "DENY");
        let html = response.text().await.expect("body");
        assert_eq!(inline_script_hashes(&html), std::slice::from_ref(&hash));
    }
}

#[tokio::test]
async fn hashed_assets_are_cached_for_a_year_and_the_rest_is_revalidated() {
    let app = App::start(AuthMode::None, Some("build")).await;
    let response = app.get("/_app/immutable/entry/start.abc.js").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, CONTENT_TYPE),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        header(&response, CACHE_CONTROL),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&response, CONTENT_ENCODING), "");
    assert_eq!(response.text().await.expect("body"), START_JS);

    let compressed = app
        .http
        .get(format!("{}/_app/immutable/entry/start.abc.js", app.base))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .expect("GET");
    assert_eq!(header(&compressed, CONTENT_ENCODING), "br");
    assert_eq!(header(&compressed, "vary"), "accept-encoding");
    assert_eq!(compressed.bytes().await.expect("body").as_ref(), b"brotli");

    let manifest = app.get("/manifest.webmanifest").await;
    assert_eq!(manifest.status(), StatusCode::OK);
    assert_eq!(header(&manifest, CONTENT_TYPE), "application/manifest+json");
    assert_eq!(header(&manifest, CACHE_CONTROL), "no-cache");
}

#[tokio::test]
async fn unknown_api_routes_and_missing_files_are_404s_not_the_app() {
    let app = App::start(AuthMode::None, Some("build")).await;
    for path in ["/api/nope", "/api", "/api/tasks/x/nope"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    for path in [
        "/_app/immutable/entry/gone.js",
        "/icon-512.png",
        "/../Cargo.toml",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(
            !header(&response, CONTENT_TYPE).starts_with("text/html"),
            "{path}"
        );
    }
    let posted = app
        .http
        .post(format!("{}/tasks/x", app.base))
        .json(&json!({}))
        .send()
        .await
        .expect("POST");
    assert_eq!(posted.status(), StatusCode::NOT_FOUND);
    let body: Value = posted.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn without_a_build_the_page_says_how_to_make_one() {
    let app = App::start(AuthMode::None, None).await;
    let response = app.get("/tasks/x").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&response, CONTENT_TYPE), "text/html; charset=utf-8");
    assert!(response.text().await.expect("body").contains("make web"));
    // The API does not need the app.
    assert_eq!(app.get("/api/session").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_app_learns_where_the_temporal_ui_is_once_logged_in() {
    let app = App::start(
        AuthMode::Token {
            token: TOKEN.into(),
        },
        Some("build"),
    )
    .await;
    assert_eq!(
        app.get("/api/config").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let config: Value = app
        .http
        .get(format!("{}/api/config", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        config,
        json!({ "temporal_ui_url": "http://127.0.0.1:8233", "temporal_namespace": "default" })
    );
}

/// The store builds these payloads with `json!`; the schemas the app's types come from must
/// describe them exactly (the schema types refuse unknown fields).
#[tokio::test]
async fn every_event_the_store_writes_fits_its_published_schema() -> anyhow::Result<()> {
    let app = App::start(AuthMode::None, None).await;
    let store = &app.store;
    let asked = store
        .accept_user_message("me", "k1", "add dark mode", "main-thread/me")
        .await?
        .message;
    let reply = store.start_reply("me", &asked.id).await?.message;
    let limit = store
        .block_rate_limit(
            "anthropic",
            chrono::Utc::now(),
            "429 rate_limit_error: slow down",
        )
        .await?;
    store.reply_waiting("me", &reply.id, 1, &limit).await?;
    store.append_reply_text("me", &reply.id, 1, "On it").await?;
    store
        .create_proposal(
            "me",
            &NewProposal {
                id: "p1".into(),
                message_id: reply.id.clone(),
                title: "Dark mode".into(),
                description: "Follow the system".into(),
                repo: "acme/web".into(),
                model: None,
                skip_planning: false,
            },
        )
        .await?;
    let (_, task) = store
        .confirm_proposal("me", "p1", &ConfirmOverrides::default(), "main-thread/me")
        .await?;
    store
        .add_task_input(
            "me",
            &task.id,
            &NewTaskInput {
                id: "input-1".into(),
                kind: "cancel",
                payload: json!({ "reason": "changed my mind" }),
            },
            &[TaskStatus::Pending],
        )
        .await?;
    store
        .append_task_logs(
            "me",
            &task.id,
            "plan-1",
            &[(1, "agent".into(), "hi".into())],
        )
        .await?;
    let projection = TaskProjection {
        status: Some(TaskStatus::Failed),
        detail: "failed".into(),
        ..TaskProjection::default()
    };
    let item = NewInboxItem {
        id: format!("{}/failed", task.id),
        kind: InboxKind::Failed,
        title: "Failed".into(),
        body: String::new(),
        url: None,
        resolved: false,
    };
    store
        .record_task("me", &task.id, &projection, Some(&item))
        .await?;
    store
        .add_note("me", &format!("{}/failed", task.id), "It failed")
        .await?;

    let mut kinds = std::collections::BTreeSet::new();
    for event in store.events_after("me", 0, 1000).await? {
        let data = event.data.clone();
        let fits = match event.kind.as_str() {
            "message.created" | "message.completed" => {
                serde_json::from_value::<Message>(data).map(drop)
            }
            "message.started" => serde_json::from_value::<MessageStarted>(data).map(drop),
            "message.delta" => serde_json::from_value::<MessageDelta>(data).map(drop),
            "message.waiting" => serde_json::from_value::<MessageWaiting>(data).map(drop),
            "proposal.created" | "proposal.updated" => {
                serde_json::from_value::<Proposal>(data).map(drop)
            }
            "task.updated" => serde_json::from_value::<Task>(data).map(drop),
            "task.input" => serde_json::from_value::<TaskInputEvent>(data).map(drop),
            "task.log" => serde_json::from_value::<TaskLogEvent>(data).map(drop),
            "inbox.updated" => serde_json::from_value::<InboxItem>(data).map(drop),
            other => panic!("an event kind the app does not know: {other}"),
        };
        if let Err(error) = fits {
            panic!(
                "{} does not fit its schema: {error}\n{}",
                event.kind, event.data
            );
        }
        kinds.insert(event.kind);
    }
    let expected = [
        "inbox.updated",
        "message.created",
        "message.delta",
        "message.started",
        "message.waiting",
        "proposal.created",
        "proposal.updated",
        "task.input",
        "task.log",
        "task.updated",
    ];
    assert_eq!(
        kinds.iter().map(String::as_str).collect::<Vec<_>>(),
        expected
    );
    Ok(())
}

#[tokio::test]
async fn the_document_places_each_parameter_where_the_api_reads_it() {
    // A query parameter documented as a path parameter (utoipa's default for `IntoParams`)
    // sends clients and fuzzers to the wrong place.
    let app = App::start(AuthMode::None, None).await;
    let doc: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .expect("JSON");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().expect("a name");
                let place = parameter["in"].as_str().expect("a place");
                let in_path = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    place == "path",
                    in_path,
                    "{method} {path}: {name} in {place}"
                );
                assert_ne!(
                    parameter["schema"]["type"],
                    json!(["integer", "null"]),
                    "{name}"
                );
            }
            for status in ["400", "500", "503"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path}: {status}"
                );
            }
        }
    }
    // Out-of-range list sizes are refused, as documented, not silently clamped.
    for (query, status) in [
        ("/api/tasks?limit=0", 400),
        ("/api/tasks?limit=501", 400),
        ("/api/tasks?limit=500", 200),
        ("/api/tasks/no-such/logs?tail=0", 400),
        ("/api/tasks/no-such/logs?tail=5001", 400),
        ("/api/tasks/no-such/logs?tail=5000", 404),
    ] {
        assert_eq!(app.get(query).await.status().as_u16(), status, "{query}");
    }
}

#[tokio::test]
async fn a_page_read_while_the_model_is_rate_limited_says_until_when_its_reply_waits()
-> anyhow::Result<()> {
    let app = App::start(AuthMode::None, None).await;
    let store = &app.store;
    let asked = store
        .accept_user_message("me", "k1", "add dark mode", "main-thread/me")
        .await?
        .message;
    let until = chrono::Utc::now() + chrono::Duration::seconds(60);
    store
        .block_rate_limit("anthropic", until, "429 rate_limit_error: slow down")
        .await?;
    let page: Value = app.get("/api/messages").await.json().await?;
    assert!(page.get("model_limit").is_none(), "no reply waits: {page}");

    store.start_reply("me", &asked.id).await?;
    let page: Value = app.get("/api/messages").await.json().await?;
    let limit = &page["model_limit"];
    let shown: chrono::DateTime<chrono::Utc> = serde_json::from_value(limit["until"].clone())?;
    assert_eq!(shown.timestamp_millis(), until.timestamp_millis());
    assert_eq!(limit["reason"], "429 rate_limit_error: slow down");
    Ok(())
}
