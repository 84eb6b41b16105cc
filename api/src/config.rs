//! `GET /api/config`: what the web app needs to know about this deployment that is not in
//! any record, such as where the Temporal Web UI is.

use std::sync::Arc;

use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ErrorBody;

/// Deployment facts the web app shows or links to.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct AppConfig {
    /// Base URL of the Temporal Web UI, when there is one to link to. A task's workflow is at
    /// `{temporal_ui_url}/namespaces/{temporal_namespace}/workflows/task%2F{id}`.
    pub temporal_ui_url: Option<String>,
    /// The Temporal namespace mainloop's workflows run in.
    pub temporal_namespace: String,
}

#[utoipa::path(
    get, path = "/api/config", tag = "session",
    responses(
        (status = 200, body = AppConfig),
        (status = 401, body = ErrorBody, description = "unauthorized"),
    )
)]
pub async fn get(Extension(config): Extension<Arc<AppConfig>>) -> Json<AppConfig> {
    Json(config.as_ref().clone())
}
