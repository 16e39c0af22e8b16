//! The control plane: admin REST API under `/v1/`, health, readiness and the
//! OpenAPI document. Handlers translate HTTP to engine calls and back.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use keygate_engine::{Actor, Engine};
use serde_json::json;

use crate::http::dashboard::DashboardContext;
use crate::http::error::{self, ApiError};
use crate::http::extract::{client_ip, credential, credential_rejection, peer_of};
use crate::reload::{LiveConfig, Reloader};

mod audit;
mod keys;
mod leaks;
mod nodes;
mod openapi;
mod ops;
mod portal;
mod usage;
mod webhooks;
mod workspaces;

#[derive(Clone)]
pub struct AdminState {
    pub engine: Arc<Engine>,
    /// The gateway's routes, targets, catalog and header policy: `/readyz`
    /// and `/metrics` report the targets, and the verify API answers with the
    /// gateway's statuses and messages.
    pub config: LiveConfig,
    pub trusted_proxies: Arc<Vec<IpNet>>,
    pub dashboard: Arc<DashboardContext>,
    /// `leaks.github_keys_file` and `_url`: `None` turns GitHub's partner endpoint off.
    pub github_keys: Option<Arc<crate::github::GithubKeys>>,
    reloader: Arc<Reloader>,
}

impl AdminState {
    pub fn new(
        engine: Arc<Engine>,
        config: LiveConfig,
        reloader: Arc<Reloader>,
        trusted_proxies: Vec<IpNet>,
        dashboard: crate::config::DashboardSettings,
        github_keys: Option<crate::github::GithubKeys>,
    ) -> Self {
        let dashboard = DashboardContext {
            settings: dashboard,
            environments: engine.verifier().key_format().environments().to_vec(),
        };
        Self {
            engine,
            config,
            trusted_proxies: Arc::new(trusted_proxies),
            dashboard: Arc::new(dashboard),
            github_keys: github_keys.map(Arc::new),
            reloader,
        }
    }

    /// The plans the dashboard offers: those in force now.
    pub fn plan_names(&self) -> Vec<String> {
        self.engine.verifier().plans().names().map(str::to_owned).collect()
    }
}

/// The authenticated caller of an admin route.
pub struct Caller(pub Actor);

impl FromRequestParts<AdminState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Self::Rejection> {
        let ip = client_ip(peer_of(parts), &parts.headers, &state.trusted_proxies);
        let presented = match credential(&parts.headers) {
            Ok(presented) => presented,
            Err(err) => return Err(ApiError(credential_rejection(&state.engine, err, Some(ip)))),
        };
        let actor = state.engine.admin().authenticate_admin(presented, ip).await?;
        Ok(Caller(actor))
    }
}

pub fn router(state: AdminState) -> Router {
    let dashboard = if state.dashboard.settings.enabled {
        crate::http::dashboard::routes().route("/v1/portal-sessions", post(portal::create_portal_session))
    } else {
        Router::new()
    };
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi_json))
        .route(
            "/v1/workspaces",
            post(workspaces::create_workspace).get(workspaces::list_workspaces),
        )
        .route(
            "/v1/workspaces/{id}",
            get(workspaces::get_workspace)
                .patch(workspaces::update_workspace)
                .delete(workspaces::delete_workspace),
        )
        .route("/v1/workspaces/{id}/keys", post(keys::create_key).get(keys::list_keys))
        .route(
            "/v1/workspaces/{id}/keys/import",
            post(keys::import_keys).layer(axum::extract::DefaultBodyLimit::max(
                crate::http::extract::MAX_IMPORT_BODY,
            )),
        )
        .route("/v1/workspaces/{id}/usage", get(usage::workspace_usage))
        .route("/v1/workspaces/{id}/top-keys", get(usage::top_keys))
        .route("/v1/keys/verify", post(keys::verify_key))
        .route("/v1/keys/changes", get(keys::key_changes))
        .route("/v1/keys/lookup", post(keys::lookup_keys))
        .route(
            "/v1/keys/{id}",
            get(keys::get_key).patch(keys::update_key).delete(keys::delete_key),
        )
        .route("/v1/keys/{id}/revoke", post(keys::revoke_key))
        .route("/v1/keys/{id}/rotate", post(keys::rotate_key))
        .route("/v1/keys/{id}/usage", get(usage::key_usage))
        .route("/v1/audit-events", get(audit::audit_events))
        .route("/v1/events", get(webhooks::list_events))
        .route(
            "/v1/webhooks",
            post(webhooks::create_webhook).get(webhooks::list_webhooks),
        )
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get_webhook).delete(webhooks::delete_webhook),
        )
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::webhook_deliveries))
        .route("/v1/config/reload", post(ops::reload_config))
        .route("/v1/nodes", get(nodes::list_nodes))
        .route("/v1/leaks/github", post(leaks::github_report))
        .merge(dashboard)
        .fallback(not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::extract::MAX_ADMIN_BODY,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// Unknown control-plane paths: an HTML page under `/dashboard`, else the envelope.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/dashboard") {
        crate::http::dashboard::DashboardError::not_found().into_response()
    } else {
        ApiError::new(keygate_core::ErrorCode::NotFound).into_response()
    }
}

/// One log line per admin request. The path names ids only; the query string
/// is left out, and keys never travel in either. A portal link's path is a
/// secret until it is used, so its token is not logged.
async fn log_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let path = loggable_path(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(target: "keygate::admin", %method, %path, status, latency_ms, "admin request");
    response
}

fn loggable_path(path: &str) -> String {
    match path.strip_prefix(crate::http::dashboard::PORTAL_PATH) {
        Some(_) => format!("{}<token>", crate::http::dashboard::PORTAL_PATH),
        None => path.to_owned(),
    }
}

async fn index(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let dashboard = state.dashboard.settings.enabled.then_some("/dashboard");
    Json(json!({
        "name": "keygate",
        "version": env!("CARGO_PKG_VERSION"),
        "admin_api": "/v1/",
        "openapi": "/openapi.json",
        "health": "/healthz",
        "readiness": "/readyz",
        "metrics": "/metrics",
        "dashboard": dashboard,
    }))
}

#[cfg(test)]
mod tests {
    use super::loggable_path;

    #[test]
    fn portal_link_tokens_are_not_logged() {
        assert_eq!(loggable_path("/dashboard/portal/3f9c0a"), "/dashboard/portal/<token>");
        assert_eq!(loggable_path("/dashboard/keys/key_1"), "/dashboard/keys/key_1");
        assert_eq!(loggable_path("/v1/keys/key_1/rotate"), "/v1/keys/key_1/rotate");
    }
}
