//! The OpenAPI document of the API, generated from the handlers and types themselves, and the
//! schemas of the event stream's `data` (which the web app's TypeScript types are generated
//! from, like everything else here).

use axum::Json;
use mainloop_store::Message;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mainloop",
        description = "One continuous chat with a fast model that proposes worker tasks. \
                       Errors are `{\"error\": {\"code\", \"message\"}}` with stable codes.",
    ),
    paths(
        crate::messages::list,
        crate::messages::post,
        crate::proposals::reject,
        crate::tasks::confirm,
        crate::tasks::list,
        crate::tasks::get,
        crate::tasks::logs,
        crate::tasks::answer,
        crate::tasks::review_plan,
        crate::tasks::retry,
        crate::tasks::cancel,
        crate::budgets::raise,
        crate::tasks::inbox,
        crate::tasks::read,
        crate::tasks::read_all,
        crate::tasks::projects,
        crate::events::stream,
        crate::session::login,
        crate::session::logout,
        crate::session::info,
        crate::config::get,
        crate::health::healthz,
        crate::health::readyz,
        crate::webhook::receive,
    ),
    components(schemas(
        mainloop_store::Message,
        mainloop_store::Proposal,
        mainloop_store::Event,
        mainloop_store::Task,
        mainloop_store::TaskRun,
        mainloop_store::TaskInputRecord,
        mainloop_store::TaskLogLine,
        mainloop_store::InboxItem,
        mainloop_store::Project,
        crate::tasks::ConfirmBody,
        crate::tasks::Confirmed,
        crate::tasks::TaskDetail,
        crate::tasks::AnswerBody,
        crate::tasks::ReviewBody,
        crate::tasks::CancelBody,
        crate::budgets::BudgetBody,
        mainloop_store::TaskBudget,
        crate::error::ErrorBody,
        crate::webhook::WebhookReceipt,
        crate::config::AppConfig,
        MessageStarted,
        MessageDelta,
        MessageWaiting,
        crate::messages::ModelLimit,
        ThreadNotice,
        TaskLogEvent,
        TaskInputEvent,
    )),
    modifiers(&Security, &CommonErrors, &RateLimited),
    security(("bearer" = []), ("session" = [])),
)]
pub struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        );
    }
}

/// The errors any operation can answer with besides its own, added where an operation does
/// not describe them itself: the layers in front of every handler (authentication, the
/// origin check, body size, time and media type limits, JSON and query parsing, timeouts,
/// the store being down) make them possible everywhere they apply.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_id = path.contains('{');
            let operations = [
                (false, item.get.as_mut()),
                (true, item.post.as_mut()),
                (true, item.put.as_mut()),
                (true, item.delete.as_mut()),
                (true, item.patch.as_mut()),
            ];
            for (writes, operation) in operations {
                let Some(operation) = operation else { continue };
                let public = operation
                    .security
                    .as_ref()
                    .is_some_and(|s| s.is_empty() || s.iter().any(|r| r == &Default::default()));
                let mut common = vec![
                    (
                        "400",
                        "malformed_json, invalid_query, invalid_header or invalid_body",
                    ),
                    ("500", "internal"),
                    ("503", "timeout or unavailable"),
                ];
                if !public {
                    common.push(("401", "unauthorized"));
                }
                if has_id {
                    common.push(("404", "not_found"));
                }
                if writes {
                    common.extend([
                        ("403", "cross_origin"),
                        ("408", "body_timeout"),
                        ("413", "payload_too_large"),
                        ("415", "unsupported_media_type"),
                        ("422", "unknown_field or invalid_body"),
                    ]);
                }
                for (status, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// Every limited route may answer `429` (see [`crate::ratelimit`]).
struct RateLimited;

impl utoipa::Modify for RateLimited {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        const UNLIMITED: [&str; 4] = ["/healthz", "/readyz", "/api/session", "/api/logout"];
        let response = ResponseBuilder::new()
            .description("rate_limited: over the caller's budget; `Retry-After` says when to retry")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if UNLIMITED.contains(&path.as_str()) {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .entry("429".into())
                    .or_insert_with(|| RefOr::T(response.clone()));
            }
        }
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The document as `mainloop openapi` prints it (and the web app's types are generated from).
pub fn document_json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_pretty_json()
}

// The store writes these payloads; the API only describes them. The event stream test reads
// every kind back through these types (unknown fields refused), so they cannot drift apart.

/// `message.started`: a reply starts streaming; a higher `attempt` replaces earlier text.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageStarted {
    pub message_id: String,
    /// The user message this reply answers.
    pub reply_to: String,
    pub attempt: i64,
    pub message: Message,
}

/// `message.delta`: text to append to attempt `attempt` of a reply.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageDelta {
    pub message_id: String,
    pub attempt: i64,
    pub text: String,
}

/// `message.waiting`: attempt `attempt` of a reply waits for the model's rate limit to reset
/// (a 429 seen by any worker) before it calls the model. Its next `message.delta`,
/// `message.started` or `message.completed` ends the wait.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageWaiting {
    pub message_id: String,
    pub attempt: i64,
    /// When the limit resets and the reply goes on.
    pub until: chrono::DateTime<chrono::Utc>,
    /// What the model's API said.
    pub reason: String,
}

/// `thread.notice`: something to know that is not a message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThreadNotice {
    /// `info`, `warning` or `error`.
    pub level: String,
    pub text: String,
}

/// `task.log`: a line of a job's output.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskLogEvent {
    pub task_id: String,
    pub job: String,
    pub line: i64,
    /// `agent` or `claude`, or `mainloop` for what mainloop says about the job (e.g. that it
    /// waits for the model's rate limit to reset).
    pub source: String,
    pub text: String,
}

/// `task.input`: input for a task was accepted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskInputEvent {
    pub task_id: String,
    /// `answers`, `plan_review`, `retry` or `cancel`.
    pub kind: String,
    pub id: String,
}
