//! `/v1/nodes`, and the receipts that `?wait` adds to a change's answer.

use axum::extract::State;
use axum::Json;
use keygate_engine::nodes::Changed;
use keygate_engine::Actor;

use crate::http::dto::*;
use crate::http::error::ApiError;

use super::{AdminState, Caller};

/// The live nodes of the deployment: those heard from within the last 5 s.
/// Operators only.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    responses((status = 200, body = List<NodeView>)))]
pub(super) async fn list_nodes(
    State(state): State<AdminState>,
    Caller(actor): Caller,
) -> Result<Json<List<NodeView>>, ApiError> {
    let nodes = state.engine.nodes().list(&actor).await?;
    let this_node = state.engine.nodes().id();
    Ok(Json(List {
        data: nodes.into_iter().map(|node| NodeView::new(node, this_node)).collect(),
        next_cursor: None,
    }))
}

/// The receipt of `changed`, which this node has just made, if the call
/// asked to wait for one.
pub(super) async fn receipt(
    state: &AdminState,
    actor: &Actor,
    wait: &WaitQuery,
    changed: Changed<'_>,
) -> Option<PropagationView> {
    let wait = wait.wait?;
    Some(state.engine.nodes().receipt(actor, changed, wait).await.into())
}
