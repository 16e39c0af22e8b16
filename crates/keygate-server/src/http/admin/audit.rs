//! `/v1/audit-events`: who changed what.

use axum::extract::State;
use axum::Json;
use keygate_store::AuditFilter;

use crate::http::dto::*;
use crate::http::error::ApiError;
use crate::http::extract::QueryParams;

use super::{page, AdminState, Caller};

#[utoipa::path(get, path = "/v1/audit-events", tag = "audit",
    params(("workspace_id" = Option<String>, Query), ("key_id" = Option<String>, Query), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = AuditEventList)))]
pub(super) async fn audit_events(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<Json<AuditEventList>, ApiError> {
    let filter = AuditFilter {
        workspace_id: query.workspace_id,
        key_id: query.key_id,
    };
    let paged = state
        .engine
        .audit_events(&actor, filter, &page(query.limit, query.cursor)?)
        .await?;
    Ok(Json(AuditEventList {
        data: paged.items.iter().map(AuditEventView::from).collect(),
        next_cursor: paged.next_cursor,
    }))
}
