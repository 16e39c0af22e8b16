//! `/v1/workspaces`: create, list, read, change and delete workspaces.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::http::dto::*;
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, PathParam, QueryParams};

use super::{page, AdminState, Caller};

#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces", request_body = CreateWorkspace,
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 201, body = WorkspaceView), (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn create_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<CreateWorkspace>,
) -> Result<(StatusCode, Json<WorkspaceView>), ApiError> {
    let workspace = state.engine.create_workspace(&actor, body.into()).await?;
    Ok((StatusCode::CREATED, Json(WorkspaceView::from(&workspace))))
}

#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces", params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = WorkspaceList)))]
pub(super) async fn list_workspaces(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<WorkspaceList>, ApiError> {
    let paged = state
        .engine
        .list_workspaces(&actor, &page(query.limit, query.cursor)?)
        .await?;
    Ok(Json(WorkspaceList {
        data: paged.items.iter().map(WorkspaceView::from).collect(),
        next_cursor: paged.next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn get_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let workspace = state.engine.get_workspace(&actor, &id).await?;
    Ok(Json(WorkspaceView::from(&workspace)))
}

#[utoipa::path(patch, path = "/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)), request_body = UpdateWorkspace,
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn update_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<UpdateWorkspace>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let workspace = state.engine.update_workspace(&actor, &id, body.into()).await?;
    Ok(Json(WorkspaceView::from(&workspace)))
}

/// Hides the workspace and revokes all its keys.
#[utoipa::path(delete, path = "/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 204), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn delete_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_workspace(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
