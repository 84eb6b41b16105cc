//! The real router served on a loopback socket over a fresh SQLite store, for the API's
//! integration tests. No Temporal (`TemporalLink::disconnected()`) and no outbox relay, so
//! whatever is accepted stays visible in the store.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mainloop_api::{
    ApiSettings, AppState, AuthConfig, AuthMode, EventFeed, RateLimitSettings, RelaySettings,
    TemporalLink, WebAssets,
};
use mainloop_store::Store;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub struct Served {
    pub addr: SocketAddr,
    // Not every test target looks into the store.
    #[allow(dead_code)]
    pub store: Store,
    // Only the fan-out test looks at the feed.
    #[allow(dead_code)]
    pub feed: EventFeed,
    /// Holds the database (and whatever a test writes there); removed on drop.
    _dir: TempDir,
    shutdown: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Served {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves the router for user `user` in auth `mode`; `configure` adjusts the settings (it is
/// given the test's directory), which otherwise have no web app, no webhook secret and no
/// rate limits. It stops when the [`Served`] is dropped.
pub async fn serve(
    mode: AuthMode,
    user: &str,
    configure: impl FnOnce(&mut ApiSettings, &Path),
) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("api.db").display());
    serve_on(&url, dir, mode, user, configure).await
}

/// [`serve`] on the store at `url` (migrated here), keeping `dir` until dropped.
pub async fn serve_on(
    url: &str,
    dir: TempDir,
    mode: AuthMode,
    user: &str,
    configure: impl FnOnce(&mut ApiSettings, &Path),
) -> Served {
    let store = Store::connect(url).await.expect("connect the store");
    store.migrate().await.expect("migrate the store");
    let mut settings = ApiSettings {
        auth: AuthConfig {
            mode,
            user: user.into(),
            session_ttl: Duration::from_secs(3600),
        },
        body_limit: 256 * 1024,
        request_timeout: Duration::from_secs(30),
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(20),
        relay: RelaySettings {
            task_queue: "api-tests".into(),
            batch: 10,
            lease: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(5),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        },
        webhook_secret: None,
        app: Default::default(),
        web: WebAssets::Dir(dir.path().join("no-web-build")),
        metrics: None,
        rate_limit: RateLimitSettings {
            per_minute: 0,
            ..RateLimitSettings::default()
        },
    };
    configure(&mut settings, dir.path());
    let shutdown = CancellationToken::new();
    let feed = EventFeed::start(store.clone(), shutdown.clone())
        .await
        .expect("start the event feed");
    let state = AppState {
        feed: feed.clone(),
        store: store.clone(),
        auth: Arc::new(settings.auth.clone()),
        temporal: TemporalLink::disconnected(),
        github: mainloop_activities::github::GitHub::new(
            mainloop_activities::github::GitHubSettings {
                // Nothing listens there: these tests never reach GitHub.
                api_url: "http://127.0.0.1:9/".parse().expect("a URL"),
                token: None,
                concurrency: mainloop_activities::github::DEFAULT_CONCURRENCY,
            },
        )
        .expect("a GitHub client"),
        shutdown: shutdown.clone(),
        webhook_secret: settings.webhook_secret.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    // The server the binary runs, so peer addresses reach the router as they do there.
    tokio::spawn(async move { mainloop_api::serve(listener, state, &settings).await });
    Served {
        addr,
        store,
        feed,
        _dir: dir,
        shutdown,
    }
}
