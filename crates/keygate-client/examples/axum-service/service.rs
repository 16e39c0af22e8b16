//! The example's router, shared with the test that runs it
//! (crates/keygate-client/tests/client/layer.rs).

use axum::routing::get;
use axum::{Extension, Json, Router};
use keygate_client::tower::{Authenticated, KeygateLayer};
use serde_json::{json, Value};

/// `GET /invoices`: needs a key with `invoices:read`; answers with who called.
pub fn router(layer: KeygateLayer) -> Router {
    Router::new()
        .route("/invoices", get(invoices))
        .layer(layer.scopes(["invoices:read"]))
}

async fn invoices(Extension(caller): Extension<Authenticated>) -> Json<Value> {
    let verified = &caller.verified;
    Json(json!({
        "key_id": verified.key.id,
        "workspace_id": verified.workspace.id,
        "stale": caller.stale,
        "cached": caller.cached,
        "invoices": [],
    }))
}
