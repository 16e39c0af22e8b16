//! `/v1/workspaces`: create, list, read, change and delete workspaces.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keygate_engine::nodes::Changed;

use crate::http::dto::*;
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, Pagination, PathParam, QueryParams};

use super::nodes::receipt;
use super::{AdminState, Caller};

#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces", request_body = CreateWorkspace,
    responses((status = 201, body = WorkspaceView), (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn create_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<CreateWorkspace>,
) -> Result<(StatusCode, Json<WorkspaceView>), ApiError> {
    let workspace = state.engine.admin().create_workspace(&actor, body.into()).await?;
    Ok((StatusCode::CREATED, Json(WorkspaceView::from(&workspace))))
}

#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces", params(("limit" = Option<u32>, Query, minimum = 1, maximum = 200), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = List<WorkspaceView>)))]
pub(super) async fn list_workspaces(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    Pagination(page): Pagination,
) -> Result<Json<List<WorkspaceView>>, ApiError> {
    let paged = state.engine.admin().list_workspaces(&actor, &page).await?;
    Ok(Json(List::of(&paged)))
}

#[utoipa::path(get, path = "/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn get_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let workspace = state.engine.admin().get_workspace(&actor, &id).await?;
    Ok(Json(WorkspaceView::from(&workspace)))
}

#[utoipa::path(patch, path = "/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path), ("wait" = Option<String>, Query, pattern = "^(0|[1-9][0-9]{0,3}ms|[1-9]s|10s)$", description = "Wait up to this long (`2s`; `0`, `1ms` to `9999ms`, or `1s` to `10s`) for every live node to confirm the change; the answer then has `propagation`")), request_body = UpdateWorkspace,
    responses((status = 200, body = Propagated<WorkspaceView>), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn update_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(wait): QueryParams<WaitQuery>,
    JsonBody(body): JsonBody<UpdateWorkspace>,
) -> Result<Json<Propagated<WorkspaceView>>, ApiError> {
    let workspace = state.engine.admin().update_workspace(&actor, &id, body.into()).await?;
    let propagation = receipt(&state, &actor, &wait, changed("workspace.updated", &id)).await;
    Ok(Json(Propagated {
        result: WorkspaceView::from(&workspace),
        propagation,
    }))
}

/// Hides the workspace and revokes all its keys.
#[utoipa::path(delete, path = "/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path), ("wait" = Option<String>, Query, pattern = "^(0|[1-9][0-9]{0,3}ms|[1-9]s|10s)$", description = "Wait up to this long (`2s`; `0`, `1ms` to `9999ms`, or `1s` to `10s`) for every live node to confirm the change; the answer then has `propagation`")),
    responses((status = 204, description = "Deleted"), (status = 200, description = "Deleted, with `?wait`", body = PropagationOnly), (status = 404, body = ErrorEnvelope),
        (status = 409, description = "`CONFLICT`: the admin workspace cannot be deleted", body = ErrorEnvelope)))]
pub(super) async fn delete_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(wait): QueryParams<WaitQuery>,
) -> Result<Response, ApiError> {
    state.engine.admin().delete_workspace(&actor, &id).await?;
    Ok(
        match receipt(&state, &actor, &wait, changed("workspace.deleted", &id)).await {
            Some(propagation) => Json(PropagationOnly { propagation }).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
    )
}

/// A change to workspace `id`, for its receipt.
fn changed<'a>(action: &'a str, id: &'a str) -> Changed<'a> {
    Changed {
        action,
        object_type: "workspace",
        object_id: id,
        workspace_id: id,
    }
}
