//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the store and Temporal
//! answer, so requests can be served in full).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[utoipa::path(get, path = "/healthz", security(()), tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// `ok` or what is wrong.
    pub store: String,
    pub temporal: String,
    /// Signals accepted but not yet delivered to Temporal.
    pub outbox_backlog: Option<i64>,
}

#[utoipa::path(
    get, path = "/readyz", security(()), tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness))
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let timeout = Duration::from_secs(2);
    let store = match tokio::time::timeout(timeout, state.store.ping()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "store not ready");
            "unavailable".to_string()
        }
        Err(_) => "no answer".to_string(),
    };
    let temporal = match state.temporal.check(timeout).await {
        Ok(()) => "ok".to_string(),
        Err(reason) => reason,
    };
    let outbox_backlog = if store == "ok" {
        state.store.outbox_backlog().await.ok()
    } else {
        None
    };
    let ready = store == "ok" && temporal == "ok";
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(Readiness {
            status: if ready { "ready" } else { "unavailable" }.into(),
            store,
            temporal,
            outbox_backlog,
        }),
    )
}
