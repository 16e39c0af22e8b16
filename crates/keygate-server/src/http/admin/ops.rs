//! Operations: liveness, readiness, metrics, the OpenAPI document and config reload.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keygate_engine::metrics::{LabelText, TargetSample};
use keygate_engine::Hearing;
use keygate_limiter::ArcStr;
use serde_json::json;

use crate::http::dto::*;
use crate::http::error::ApiError;
use crate::http::proxy::Upstream;

use super::{AdminState, Caller};

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, description = "The process is up")))]
pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when every dependency answers; the body names each and its state.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()), responses(
    (status = 200, description = "Every dependency is reachable"),
    (status = 503, description = "A dependency is down; the body says which")))]
pub(super) async fn readyz(State(state): State<AdminState>) -> Response {
    let store = state.engine.verifier().store_status().await;
    if let Err(error) = &store.ping {
        tracing::warn!(%error, "readiness: store is down");
    }
    let limiter = state.engine.verifier().limiter_readiness().await;
    let ready = store.ping.is_ok();
    // A degraded limiter or a node that cannot hear other nodes still serves
    // (by on_failure, with a short cache TTL): ready, but said so.
    let status_text = match (ready, limiter.state, store.hearing) {
        (false, _, _) => "not_ready",
        (true, "up", Hearing::Listening | Hearing::NotNeeded) => "ready",
        (true, _, _) => "degraded",
    };
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let store_json = match &store.ping {
        Ok(latency) => json!({
            "state": "up",
            "latency_ms": (latency.as_secs_f64() * 100_000.0).round() / 100.0,
        }),
        Err(error) => json!({
            "state": "down",
            "error": error,
            "down_since": store.down_since,
            // Cached keys keep verifying until max_stale after their last read; others get 503.
            "max_stale_ms": millis(store.max_stale),
        }),
    };
    let body = json!({
        "status": status_text,
        "dependencies": {
            "store": store_json,
            "changes": {"state": store.hearing.as_str(), "cache_ttl_ms": millis(store.cache_ttl)},
            "limiter": {"state": limiter.state, "backend": limiter.backend, "detail": limiter.detail},
            // Kept in memory while the store is down, written when it returns.
            "usage": {"state": if ready { "up" } else { "buffering" }, "pending_rows": state.engine.usage().pending()},
        },
        // A refused reload leaves the running config serving: said, not a reason to leave rotation.
        "config": state.reloader.status(),
        // Targets left out after failing (passive health); this node keeps
        // serving other routes, so it does not change `status`.
        "routes": state.config.snapshot().upstreams.iter().map(|upstream| json!({
            "path": upstream.route.path,
            "targets": upstream.targets.count(),
            "healthy": upstream.targets.healthy(),
        })).collect::<Vec<_>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics (OpenMetrics text). Unauthenticated like `/readyz`:
/// the control plane listens on a private address, and no label names a key.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()), responses(
    (status = 200, description = "Requests by outcome, route and workspace; verify, limiter and store latency; cache lookups; limiter fallbacks; store errors", content_type = "application/openmetrics-text")))]
pub(super) async fn metrics(State(state): State<AdminState>) -> Result<Response, ApiError> {
    // Writing to a String cannot fail; the error is mapped rather than unwrapped.
    let text = state
        .engine
        .verifier()
        .encode_metrics(&target_samples(&state.config.snapshot().upstreams))
        .map_err(|err| {
            tracing::error!(error = %err, "metrics could not be encoded");
            ApiError(keygate_core::error::ErrorInstance::new(
                keygate_core::ErrorCode::ServiceUnavailable,
            ))
        })?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Each route's targets, for `/metrics`.
fn target_samples(upstreams: &[Upstream]) -> Vec<TargetSample> {
    upstreams
        .iter()
        .flat_map(|upstream| {
            upstream.targets.iter().map(|target| {
                let (up, answered, failed) = target.counts();
                TargetSample {
                    route: upstream.label.clone(),
                    target: LabelText(ArcStr::from(&*target.target.address)),
                    up,
                    answered,
                    failed,
                }
            })
        })
        .collect()
}

/// The document as this server answers now: its configured plans, key
/// environments and roles included (crates/keygate-server/src/http/admin/openapi.rs).
pub(super) async fn openapi_json(State(state): State<AdminState>) -> Json<utoipa::openapi::OpenApi> {
    let plans = state.engine.verifier().plans();
    let roles = state.engine.verifier().roles();
    let format = state.engine.verifier().key_format();
    // The admin workspace's keys are of their own environment.
    let environments = format.environments().iter().map(String::as_str);
    Json(super::openapi::for_deployment(
        plans.names(),
        environments.chain([keygate_core::key::ADMIN_ENVIRONMENT]),
        roles.names(),
        state.github_keys.is_some(),
    ))
}

/// Re-reads the config file (as SIGHUP does): routes, targets, plans, error
/// messages and header policy change for new requests; requests in flight
/// finish on the old ones. Refused whole, naming the field, when the file is
/// invalid or changes a setting that needs a restart (crates/keygate-server/src/reload.rs).
#[utoipa::path(post, path = "/v1/config/reload", tag = "operations",
    responses(
        (status = 200, body = ConfigReloaded),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 409, description = "`CONFIG_NEEDS_RESTART`: `data.fields` names the settings", body = ErrorEnvelope),
        (status = 422, description = "`INVALID_CONFIG`: `data.field` names the field", body = ErrorEnvelope)))]
pub(super) async fn reload_config(
    State(state): State<AdminState>,
    Caller(actor): Caller,
) -> Result<Json<ConfigReloaded>, ApiError> {
    actor.require_admin()?;
    let reloaded = state.reloader.clone().reload_now().await?;
    Ok(Json(ConfigReloaded {
        status: "reloaded",
        changed: reloaded.changed,
        routes: reloaded.routes,
    }))
}
