//! Decisions on the model's task proposals. Rejecting is final; confirming (which starts a
//! worker task) arrives with worker tasks.

use axum::Json;
use axum::extract::{Path, State};
use mainloop_store::{Decision, Proposal, StoreError};
use mainloop_workflows::main_thread_id;

use crate::AppState;
use crate::auth::User;
use crate::error::{ApiError, ApiResult, ErrorBody};

#[utoipa::path(
    post, path = "/api/proposals/{id}/reject", tag = "chat",
    params(("id" = String, Path, description = "Proposal id")),
    responses(
        (status = 200, body = Proposal, description = "Rejected"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 404, body = ErrorBody, description = "not_found"),
        (status = 409, body = ErrorBody, description = "conflict: already decided"),
    )
)]
pub async fn reject(
    State(state): State<AppState>,
    User(user): User,
    Path(id): Path<String>,
) -> ApiResult<Json<Proposal>> {
    match state
        .store
        .decide_proposal(&user, &id, Decision::Reject, &main_thread_id(&user))
        .await
    {
        Ok(proposal) => Ok(Json(proposal)),
        Err(StoreError::NotFound) => Err(ApiError::not_found("proposal")),
        Err(error) => Err(error.into()),
    }
}
