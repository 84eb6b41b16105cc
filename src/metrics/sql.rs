//! `mainloop_sql_statements_total`: SQL statements the process executed, counted from the
//! event sqlx emits for each one (target `sqlx::query`), labelled with the API route whose
//! request ran it (`route="GET /api/tasks/{id}"`: method and path from tower-http's `request`
//! span, id-like segments folded into `{id}`), or `route="background"` (outbox, pollers,
//! probes, anything outside a request). The stack test `counters` reads it around single
//! requests to check the committed ceilings of statements per route.
//!
//! Counting through tracing needs no wrapper at the store's call sites: a layer of its own,
//! with its own filter, asks sqlx for its per-statement event (and tower-http for its request
//! span) whatever the log filter says, and the log output stays as configured.

use std::fmt::Debug;
use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Shared by every registry of the process (the layer is installed once, with logging).
static SQL_STATEMENTS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "mainloop_sql_statements_total",
            "SQL statements executed, by the API route whose request ran them (or background)",
        ),
        &["route"],
    )
    .ok()
});

/// The counter, for registering in a process's registry.
pub fn counter() -> Option<IntCounterVec> {
    SQL_STATEMENTS.clone()
}

/// The counting layer with the filter it needs.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let targets = Targets::new()
        .with_target("sqlx::query", Level::DEBUG)
        .with_target("tower_http::trace", Level::DEBUG);
    StatementCounter.with_filter(targets)
}

struct StatementCounter;

/// The route of a request span, kept in its extensions.
struct Route(String);

/// Reads `method` and `uri` off tower-http's request span.
#[derive(Default)]
struct RequestFields {
    method: String,
    uri: String,
}

impl Visit for RequestFields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "method" => self.method = format!("{value:?}"),
            "uri" => self.uri = format!("{value:?}"),
            _ => {}
        }
    }
}

/// `GET /api/tasks/01a1…/answer?x=1` → `GET /api/tasks/{id}/answer`: a label with as few
/// values as the API has routes.
fn route(method: &str, uri: &str) -> String {
    let path = uri.split('?').next().unwrap_or_default();
    let path = path
        .find("/api/")
        .map_or("", |at| &path[at..])
        .trim_end_matches('/');
    if path.is_empty() {
        return format!("{method} other");
    }
    let folded: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if segment.len() > 24 || segment.chars().any(|c| c.is_ascii_digit()) {
                "{id}"
            } else {
                segment
            }
        })
        .collect();
    format!("{method} {}", folded.join("/"))
}

impl<S> Layer<S> for StatementCounter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "request" {
            return;
        }
        let mut fields = RequestFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(Route(route(&fields.method, &fields.uri)));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let route = ctx.event_scope(event).and_then(|mut scope| {
            scope.find_map(|span| span.extensions().get::<Route>().map(|r| r.0.clone()))
        });
        if let Some(counter) = SQL_STATEMENTS.as_ref() {
            counter
                .with_label_values(&[route.as_deref().unwrap_or("background")])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routes_fold_ids_and_drop_queries() {
        assert_eq!(route("GET", "/api/messages?limit=1"), "GET /api/messages");
        assert_eq!(
            route("POST", "/api/tasks/01a1fc46-100a-7b2d/answer"),
            "POST /api/tasks/{id}/answer"
        );
        assert_eq!(route("GET", "http://h:1/api/inbox/"), "GET /api/inbox");
        assert_eq!(route("GET", "/_app/x.js"), "GET other");
    }
}
