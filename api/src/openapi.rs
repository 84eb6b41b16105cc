//! The OpenAPI document of the API, generated from the handlers and types themselves.

use axum::Json;
use utoipa::OpenApi;

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
        crate::tasks::inbox,
        crate::tasks::read,
        crate::tasks::read_all,
        crate::tasks::projects,
        crate::events::stream,
        crate::session::login,
        crate::session::logout,
        crate::session::info,
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
        mainloop_store::TaskLogLine,
        mainloop_store::InboxItem,
        mainloop_store::Project,
        crate::tasks::ConfirmBody,
        crate::tasks::Confirmed,
        crate::tasks::TaskDetail,
        crate::tasks::AnswerBody,
        crate::tasks::ReviewBody,
        crate::tasks::CancelBody,
        crate::error::ErrorBody,
        crate::webhook::WebhookReceipt,
    )),
    modifiers(&Security),
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

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
