//! `/v1/portal-sessions`: one-time links into a workspace's dashboard portal.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::http::dto::*;
use crate::http::error::ApiError;
use crate::http::extract::JsonBody;

use super::{AdminState, Caller};

/// A one-time dashboard link for a customer: the provider's app calls this and
/// sends its user to `url`.
#[utoipa::path(post, path = "/v1/portal-sessions", tag = "dashboard", request_body = CreatePortalSession,
    responses((status = 201, body = PortalSession), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn create_portal_session(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody<CreatePortalSession>,
) -> Result<(StatusCode, Json<PortalSession>), ApiError> {
    let link = state
        .engine
        .sessions()
        .create_portal_link(&actor, &body.workspace_id)
        .await?;
    let base = match &state.dashboard.settings.public_url {
        Some(url) => url.clone(),
        None => {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
                .ok_or_else(|| {
                    ApiError::validation("Host", "is needed to build the link; or set dashboard.public_url")
                })?;
            format!("http://{host}")
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(PortalSession {
            url: format!("{base}{}{}", crate::http::dashboard::PORTAL_PATH, link.token.expose()),
            workspace_id: body.workspace_id,
            expires_at: link.expires_at,
        }),
    ))
}
