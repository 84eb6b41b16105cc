//! Hostile repository and model names posted as proposal-confirm overrides: each is 422 with
//! a stable code before anything reaches GitHub or the store (the proposal stays pending, no
//! task exists). The app's static files refuse paths that leave the build.

use std::sync::LazyLock;
use std::time::Duration;

use mainloop_api::{AuthMode, WebAssets};
use mainloop_store::NewProposal;
use proptest::prelude::*;
use serde_json::{Value, json};

mod common;
use common::{Served, serve};

const USER: &str = "me";

async fn start() -> Served {
    let served = serve(AuthMode::None, USER, |settings, dir| {
        let build = dir.join("build");
        std::fs::create_dir_all(&build).expect("a build dir");
        std::fs::write(build.join("index.html"), "<!doctype html><p>app").expect("index");
        std::fs::write(dir.join("secret.txt"), "top secret").expect("a secret");
        settings.web = WebAssets::Dir(build);
    })
    .await;
    let store = &served.store;
    let accepted = store
        .accept_user_message(USER, "k-1", "do something", "main-thread/me")
        .await
        .expect("a message");
    let reply = store
        .start_reply(USER, &accepted.message.id)
        .await
        .expect("a reply");
    store
        .create_proposal(
            USER,
            &NewProposal {
                id: "p-1".into(),
                message_id: reply.message.id,
                title: "Add dark mode".into(),
                description: "Follow the system theme".into(),
                repo: "acme/web".into(),
                model: None,
                skip_planning: false,
            },
        )
        .await
        .expect("a proposal");
    served
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Posts a confirm with `body`; the status and the error code.
async fn confirm(served: &Served, http: &reqwest::Client, body: Value) -> (u16, String) {
    let response = http
        .post(format!("{}/api/proposals/p-1/confirm", served.base()))
        .json(&body)
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

async fn backlog(served: &Served) -> i64 {
    served.store.outbox_backlog().await.expect("backlog")
}

/// The proposal is still pending and nothing more was queued than `queued`.
async fn assert_untouched(served: &Served, queued: i64) {
    let proposal = served
        .store
        .get_proposal(USER, "p-1")
        .await
        .expect("the proposal");
    assert_eq!(
        serde_json::to_value(&proposal).expect("json")["status"],
        "pending"
    );
    assert_eq!(backlog(served).await, queued);
}

const HOSTILE_REPOS: [&str; 16] = [
    "../../etc/passwd",
    "/etc/passwd",
    "acme/..",
    "acme/%2e%2e",
    "acme\\web",
    "acme/web\u{0}",
    "acme/--upload-pack=touch /tmp/pwned",
    "-oProxyCommand=touch /tmp/pwned/web",
    "ext::sh -c touch% /tmp/pwned",
    "file:///srv/git/acme/web",
    "git@github.com:acme/web.git",
    "https://evil.example/acme/web",
    "https://github.com.evil.example/acme/web",
    "acme\u{2215}web",
    "acme/w\u{0435}b",
    "acme/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

#[tokio::test]
async fn hostile_repo_and_model_overrides_are_422_and_change_nothing() {
    let served = start().await;
    let queued = backlog(&served).await;
    let http = client();
    for repo in HOSTILE_REPOS {
        let (status, code) = confirm(&served, &http, json!({ "repo": repo })).await;
        assert_eq!((status, code.as_str()), (422, "invalid_repo"), "{repo:?}");
    }
    for model in [
        "--dangerously-skip-permissions",
        "-p",
        "",
        "opus; rm -rf /",
        "claude\nsonnet",
        "claude sonnet",
        "$(id)",
        &"m".repeat(101),
    ] {
        let (status, code) = confirm(&served, &http, json!({ "model": model })).await;
        assert_eq!((status, code.as_str()), (422, "invalid_body"), "{model:?}");
    }
    assert_untouched(&served, queued).await;
}

/// One runtime and one server for every fuzzed case: starting one per case would dominate.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
});
static SERVED: LazyLock<(Served, i64)> = LazyLock::new(|| {
    RUNTIME.block_on(async {
        let served = start().await;
        let queued = backlog(&served).await;
        (served, queued)
    })
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any repo text with a traversal, separator, option or scheme piece in it is refused.
    #[test]
    fn fuzzed_repo_overrides_are_refused(
        owner in "[a-z]{1,6}",
        piece in prop_oneof![
            Just(".."), Just("/.."), Just("%2e%2e"), Just("\\"), Just("\u{0}"), Just("/x/y"),
            Just(" -"), Just("?"), Just("#"), Just(":"), Just("\u{2215}"), Just("\n"),
        ],
        name in "[a-z]{0,6}",
        leading_dash in any::<bool>(),
    ) {
        let dash = if leading_dash { "-" } else { "" };
        let repo = format!("{dash}{owner}/{name}{piece}{name}");
        let (served, queued) = &*SERVED;
        RUNTIME.block_on(async {
            let (status, code) = confirm(served, &client(), json!({ "repo": repo })).await;
            assert_eq!((status, code.as_str()), (422, "invalid_repo"), "{repo:?}");
            assert_untouched(served, *queued).await;
        });
    }
}

#[tokio::test]
async fn static_file_paths_cannot_leave_the_build() {
    let served = start().await;
    let http = client();
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/.%2e/secret.txt",
        "/_app/..%2f..%2fsecret.txt",
        "/%252e%252e/secret.txt",
        "//secret.txt",
        "/.env",
        "/..\\secret.txt",
    ] {
        let response = http
            .get(format!("{}{path}", served.base()))
            .send()
            .await
            .expect("an answer");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert!(
            !text.contains("top secret"),
            "{path} read a file outside the build"
        );
        assert!(matches!(status, 200 | 400 | 404), "{path}: {status}");
    }
}
