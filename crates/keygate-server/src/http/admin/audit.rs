//! `/v1/audit-events`: who changed what.

use axum::extract::State;
use axum::Json;
use keygate_store::AuditFilter;

use crate::http::dto::*;
use crate::http::error::ApiError;
use crate::http::extract::{Pagination, QueryParams};

use super::{AdminState, Caller};

#[utoipa::path(get, path = "/v1/audit-events", tag = "audit",
    params(("workspace_id" = Option<String>, Query), ("key_id" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = List<AuditEventView>),
        (status = 404, description = "The workspace or key filtered by is not one the caller can see", body = ErrorEnvelope)))]
pub(super) async fn audit_events(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    QueryParams(query): QueryParams<AuditQuery>,
    Pagination(page): Pagination,
) -> Result<Json<List<AuditEventView>>, ApiError> {
    let filter = AuditFilter {
        workspace_id: query.workspace_id,
        key_id: query.key_id,
    };
    let paged = state.engine.admin().audit_events(&actor, filter, &page).await?;
    Ok(Json(List::of(&paged)))
}
