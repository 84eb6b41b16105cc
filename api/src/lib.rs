//! mainloop's HTTP API (axum): JSON under `/api`, the event stream, health checks, the
//! OpenAPI document, the web app (every other GET), and the outbox relay that hands accepted
//! input to Temporal.
//!
//! Every error leaves through [`error::ApiError`]; every input is validated at this boundary
//! and nothing is stored from a request that is refused.

pub mod auth;
mod budgets;
pub mod cloudflare;
pub mod config;
pub mod error;
mod events;
mod extract;
pub mod feed;
mod headers;
pub mod health;
mod messages;
pub mod metrics;
pub mod openapi;
pub mod outbox;
mod proposals;
pub mod ratelimit;
mod server;
mod session;
mod tasks;
pub mod temporal;
pub mod web;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Extension, Router, middleware};
use mainloop_store::Store;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use auth::{AuthConfig, AuthMode};
pub use config::AppConfig;
pub use error::{ApiError, code};
pub use feed::EventFeed;
pub use outbox::RelaySettings;
pub use ratelimit::RateLimitSettings;
pub use temporal::TemporalLink;
pub use web::WebAssets;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub auth: AuthConfig,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Longest a (non-streaming) request may take.
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's headers (or, idle, to start the next).
    pub header_timeout: Duration,
    /// Longest a request's body may take to arrive.
    pub body_timeout: Duration,
    pub relay: RelaySettings,
    /// The GitHub webhook secret; none: `POST /api/github/webhook` answers 404.
    pub webhook_secret: Option<Arc<str>>,
    /// What `GET /api/config` tells the web app.
    pub app: AppConfig,
    /// The web app's files.
    pub web: WebAssets,
    /// Where requests are counted and timed; none: they are not.
    pub metrics: Option<Arc<metrics::ApiMetrics>>,
    /// Requests each user (or, before authentication, each peer address) may make.
    pub rate_limit: RateLimitSettings,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub auth: Arc<AuthConfig>,
    pub temporal: TemporalLink,
    /// Checks repositories when a proposal is confirmed.
    pub github: mainloop_activities::github::GitHub,
    /// Cancelled when the server shuts down; long-lived streams end on it.
    pub shutdown: CancellationToken,
    /// The one live reader of the event log that every event stream follows.
    pub feed: feed::EventFeed,
    /// The shared secret GitHub signs webhook deliveries with; none: webhooks are off.
    pub webhook_secret: Option<Arc<str>>,
}

/// The whole HTTP surface.
pub fn router(state: AppState, settings: &ApiSettings) -> Router {
    let limiter = Arc::new(ratelimit::RateLimiter::new(&settings.rate_limit));
    let by_peer = middleware::from_fn_with_state(limiter.clone(), ratelimit::by_peer);
    let timed = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(timeout_error))
        .timeout(settings.request_timeout);
    let authenticated = Router::new()
        .route("/api/messages", get(messages::list).post(messages::post))
        .route("/api/proposals/{id}/reject", post(proposals::reject))
        .route("/api/proposals/{id}/confirm", post(tasks::confirm))
        .route("/api/tasks", get(tasks::list))
        .route("/api/tasks/{id}", get(tasks::get))
        .route("/api/tasks/{id}/logs", get(tasks::logs))
        .route("/api/tasks/{id}/answer", post(tasks::answer))
        .route("/api/tasks/{id}/review-plan", post(tasks::review_plan))
        .route("/api/tasks/{id}/retry", post(tasks::retry))
        .route("/api/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/tasks/{id}/budget", post(budgets::raise))
        .route("/api/inbox", get(tasks::inbox))
        .route("/api/inbox/read-all", post(tasks::read_all))
        .route("/api/inbox/{id}/read", post(tasks::read))
        .route("/api/projects", get(tasks::projects))
        .route(
            "/api/config",
            get(config::get).layer(Extension(Arc::new(settings.app.clone()))),
        )
        .layer(timed.clone())
        // The event stream lives as long as the client wants: no request timeout.
        .route("/api/events", get(events::stream))
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), limiter),
            auth::require_user,
        ));
    let public = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/login", post(session::login).layer(by_peer.clone()))
        .route("/api/logout", post(session::logout))
        .route("/api/session", get(session::info))
        // GitHub cannot log in: deliveries are authenticated by their signature.
        .route("/api/github/webhook", post(webhook::receive).layer(by_peer))
        .layer(timed);
    let web = Arc::new(settings.web.clone());
    let app = Router::new()
        .merge(authenticated)
        .merge(public)
        .fallback(move |request: Request| async move { web::serve(&web, request).await })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            server::BodyRules {
                limit: settings.body_limit,
                timeout: settings.body_timeout,
            },
            server::read_body,
        ))
        .layer(middleware::from_fn(auth::same_origin))
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(panicked))
        // Outside the panic catcher, so a caught panic's answer carries them too.
        .layer(middleware::from_fn(headers::secure))
        .with_state(state);
    match &settings.metrics {
        // Outermost, so it sees every answer (a caught panic's too). `Router::layer` wraps
        // each route, after routing: the matched route template is known there.
        Some(metrics) => app.layer(middleware::from_fn_with_state(
            metrics.clone(),
            metrics::track,
        )),
        None => app,
    }
}

/// Serves until `state.shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    settings: &ApiSettings,
) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    server::run(
        listener,
        router(state, settings),
        settings.header_timeout,
        shutdown,
    )
    .await
}

/// Starts the outbox relay beside the server.
pub fn spawn_relay(state: &AppState, settings: &ApiSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(outbox::run(
        state.store.clone(),
        state.temporal.clone(),
        settings.relay.clone(),
        state.shutdown.clone(),
    ))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

async fn timeout_error(error: BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::TIMEOUT,
            "the request took too long",
        )
    } else {
        ApiError::internal(error)
    }
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}
