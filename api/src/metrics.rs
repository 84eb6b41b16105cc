//! The API's Prometheus metrics (`mainloop_*`): HTTP requests by route, and tasks by status.
//! The binary registers them in the registry its `/metrics` serves.
//!
//! Requests are labelled with the route's template (`/api/tasks/{id}/retry`), never the path
//! a client sent, so the number of series stays fixed; every path no route matched (the web
//! app's files, 404s) is `fallback`. A duration is the time until the response starts: the
//! event stream's is how long it took to open, not how long it stayed open.
//!
//! `mainloop_tasks` is read from the store's tasks projection at scrape time. It is exported
//! by the API only (and by `dev`), never by workers, so a sum over processes counts each task
//! once per API replica scraped: aggregate it with `max`, not `sum`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use mainloop_store::{Store, StoreError};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Route label of the requests no route matched.
pub const FALLBACK_ROUTE: &str = "fallback";

/// Request latencies of an API whose requests are store reads and writes, from 5 ms to 30 s
/// (the request timeout).
const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct ApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    tasks: IntGaugeVec,
}

impl std::fmt::Debug for ApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiMetrics").finish_non_exhaustive()
    }
}

impl ApiMetrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// If `registry` already holds metrics of these names.
    pub fn register(registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let metrics = ApiMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "mainloop_http_requests_total",
                    "HTTP requests answered, by method, route template and status",
                ),
                &["method", "route", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "mainloop_http_request_duration_seconds",
                    "Time until the response started, by method and route template",
                )
                .buckets(HTTP_BUCKETS.to_vec()),
                &["method", "route"],
            )?,
            tasks: IntGaugeVec::new(
                Opts::new(
                    "mainloop_tasks",
                    "Tasks by status, from the store (all users)",
                ),
                &["status"],
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.tasks.clone()))?;
        Ok(Arc::new(metrics))
    }

    /// Reads the task counts from the store, before a scrape.
    ///
    /// # Errors
    /// If the store does not answer; the gauge keeps its last values then.
    pub async fn refresh_tasks(&self, store: &Store) -> Result<(), StoreError> {
        for (status, count) in store.count_tasks_by_status().await? {
            self.tasks.with_label_values(&[status.as_str()]).set(count);
        }
        Ok(())
    }

    fn observe(&self, method: &str, route: &str, status: u16, started: Instant) {
        self.requests
            .with_label_values(&[method, route, status.to_string().as_str()])
            .inc();
        self.duration
            .with_label_values(&[method, route])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Middleware: counts and times every request under its route template.
pub async fn track(
    State(metrics): State<Arc<ApiMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = route_label(&request);
    let response = next.run(request).await;
    metrics.observe(method, &route, response.status().as_u16(), started);
    response
}

/// The method, or `other` for one the API has no route for (a client could make up any
/// number of them).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// The route template the request matched, or [`FALLBACK_ROUTE`].
fn route_label(request: &Request) -> String {
    request.extensions().get::<MatchedPath>().map_or_else(
        || FALLBACK_ROUTE.to_string(),
        |path| path.as_str().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn requests_are_labelled_with_the_route_template_not_the_path() {
        let registry = Registry::new();
        let metrics = ApiMetrics::register(&registry).unwrap_or_else(|e| panic!("{e}"));
        let app = Router::new()
            .route("/api/tasks/{id}", get(|| async { "task" }))
            .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no") })
            .layer(axum::middleware::from_fn_with_state(metrics, track));
        for uri in ["/api/tasks/t-1", "/api/tasks/t-2", "/some/file.js"] {
            let request = Request::builder()
                .uri(uri)
                .body(Body::empty())
                .unwrap_or_else(|e| panic!("{e}"));
            app.clone()
                .oneshot(request)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            text.contains(
                "mainloop_http_requests_total{method=\"GET\",route=\"/api/tasks/{id}\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "mainloop_http_requests_total{method=\"GET\",route=\"fallback\",status=\"404\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("t-1"), "{text}");
        assert!(
            text.contains(
                "mainloop_http_request_duration_seconds_count{method=\"GET\",route=\"/api/tasks/{id}\"} 2"
            ),
            "{text}"
        );
    }
}
