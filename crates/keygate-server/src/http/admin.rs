//! The control plane: admin REST API under `/v1/`, health, readiness and the
//! OpenAPI document. Handlers translate HTTP to engine calls and back.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use keygate_core::model::KeyStatus;
use keygate_engine::admin::Granularity;
use keygate_engine::metrics::{LabelText, TargetSample};
use keygate_engine::{Actor, Engine, Hearing};
use keygate_store::{AuditFilter, EventListFilter, KeyFilter, Page, MAX_PAGE_SIZE};
use secrecy::ExposeSecret;
use serde_json::json;
use utoipa::OpenApi;

use crate::http::dashboard::DashboardContext;
use crate::http::dto::*;
use crate::http::error::{self, render, ApiError};
use crate::http::extract::{client_ip, credential, credential_rejection, peer_of, JsonBody, PathParam, QueryParams};
use crate::http::proxy::Upstream;
use crate::reload::{LiveConfig, Reloader};

pub const DEFAULT_PAGE_SIZE: u32 = 50;

#[derive(Clone)]
pub struct AdminState {
    pub engine: Arc<Engine>,
    /// The gateway's routes, targets, catalog and header policy: `/readyz`
    /// and `/metrics` report the targets, and the verify API answers with the
    /// gateway's statuses and messages.
    pub config: LiveConfig,
    pub trusted_proxies: Arc<Vec<IpNet>>,
    pub dashboard: Arc<DashboardContext>,
    reloader: Arc<Reloader>,
}

impl AdminState {
    pub fn new(
        engine: Arc<Engine>,
        config: LiveConfig,
        reloader: Arc<Reloader>,
        trusted_proxies: Vec<IpNet>,
        dashboard: crate::config::DashboardSettings,
    ) -> Self {
        let dashboard = DashboardContext {
            settings: dashboard,
            environments: engine.settings().key_format.environments().to_vec(),
        };
        Self {
            engine,
            config,
            trusted_proxies: Arc::new(trusted_proxies),
            dashboard: Arc::new(dashboard),
            reloader,
        }
    }

    /// The plans the dashboard offers: those in force now.
    pub fn plan_names(&self) -> Vec<String> {
        self.engine.plans().names().map(str::to_owned).collect()
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
            Err(err) => return Err(ApiError(credential_rejection(&state.engine, err, ip))),
        };
        let actor = state.engine.authenticate_admin(presented, ip).await?;
        Ok(Caller(actor))
    }
}

pub fn router(state: AdminState) -> Router {
    let dashboard = if state.dashboard.settings.enabled {
        crate::http::dashboard::routes().route("/v1/portal-sessions", post(create_portal_session))
    } else {
        Router::new()
    };
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/workspaces", post(create_workspace).get(list_workspaces))
        .route(
            "/v1/workspaces/{id}",
            get(get_workspace).patch(update_workspace).delete(delete_workspace),
        )
        .route("/v1/workspaces/{id}/keys", post(create_key).get(list_keys))
        .route("/v1/workspaces/{id}/usage", get(workspace_usage))
        .route("/v1/workspaces/{id}/top-keys", get(top_keys))
        .route("/v1/keys/verify", post(verify_key))
        .route("/v1/keys/{id}", get(get_key).patch(update_key).delete(delete_key))
        .route("/v1/keys/{id}/revoke", post(revoke_key))
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/keys/{id}/usage", get(key_usage))
        .route("/v1/audit-events", get(audit_events))
        .route("/v1/events", get(list_events))
        .route("/v1/webhooks", post(create_webhook).get(list_webhooks))
        .route("/v1/webhooks/{id}", get(get_webhook).delete(delete_webhook))
        .route("/v1/webhooks/{id}/deliveries", get(webhook_deliveries))
        .route("/v1/config/reload", post(reload_config))
        .merge(dashboard)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::extract::MAX_ADMIN_BODY,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
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

fn page(limit: Option<u32>, cursor: Option<String>) -> Result<Page, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if limit == 0 || limit > MAX_PAGE_SIZE {
        return Err(ApiError::validation(
            "limit",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    Ok(Page { limit, cursor })
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

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when every dependency answers; the body names each and its state.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Every dependency is reachable"),
    (status = 503, description = "A dependency is down; the body says which")))]
async fn readyz(State(state): State<AdminState>) -> Response {
    let store = state.engine.store_status().await;
    if let Err(error) = &store.ping {
        tracing::warn!(%error, "readiness: store is down");
    }
    let limiter = state.engine.limiter_readiness().await;
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
            "usage": {"state": if ready { "up" } else { "buffering" }, "pending_rows": state.engine.pending_usage()},
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
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Requests by outcome, route and workspace; verify, limiter and store latency; cache lookups; limiter fallbacks; store errors", content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AdminState>) -> Result<Response, ApiError> {
    // Writing to a String cannot fail; the error is mapped rather than unwrapped.
    let text = state
        .engine
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
                    target: LabelText(target.target.address.clone()),
                    up,
                    answered,
                    failed,
                }
            })
        })
        .collect()
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces", request_body = CreateWorkspace,
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 201, body = WorkspaceView), (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
async fn create_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<CreateWorkspace>,
) -> Result<(StatusCode, Json<WorkspaceView>), ApiError> {
    let workspace = state.engine.create_workspace(&actor, body.into()).await?;
    Ok((StatusCode::CREATED, Json(WorkspaceView::from(&workspace))))
}

#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces", params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = WorkspaceList)))]
async fn list_workspaces(
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
async fn get_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let workspace = state.engine.get_workspace(&actor, &id).await?;
    Ok(Json(WorkspaceView::from(&workspace)))
}

#[utoipa::path(patch, path = "/v1/workspaces/{id}", tag = "workspaces", params(("id" = String, Path)), request_body = UpdateWorkspace,
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
async fn update_workspace(
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
async fn delete_workspace(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_workspace(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a key. The response is the only place its plaintext ever appears.
#[utoipa::path(post, path = "/v1/workspaces/{id}/keys", tag = "keys", params(("id" = String, Path)), request_body = CreateKey,
    security(("api_key" = []), ("bearer" = [])), responses((status = 201, body = CreatedKey), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
async fn create_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(workspace_id): PathParam<String>,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let (key, plaintext) = state.engine.create_key(&actor, &workspace_id, body.into()).await?;
    let details = KeyView::new(&key, state.engine.now());
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: plaintext.expose().to_owned(),
            details,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/workspaces/{id}/keys", tag = "keys",
    params(("id" = String, Path), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query), ("status" = Option<String>, Query), ("environment" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = KeyList), (status = 404, body = ErrorEnvelope)))]
async fn list_keys(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(workspace_id): PathParam<String>,
    QueryParams(query): QueryParams<KeyListQuery>,
) -> Result<Json<KeyList>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(KeyStatus::parse(text).ok_or_else(|| {
            ApiError::validation(
                "status",
                format!("`{text}` is not one of active, revoked, expired, deleted"),
            )
        })?),
    };
    let filter = KeyFilter {
        status,
        environment: query.environment,
    };
    let paged = state
        .engine
        .list_keys(&actor, &workspace_id, &filter, &page(query.limit, query.cursor)?)
        .await?;
    let now = state.engine.now();
    Ok(Json(KeyList {
        data: paged.items.iter().map(|k| KeyView::new(k, now)).collect(),
        next_cursor: paged.next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = KeyView), (status = 404, body = ErrorEnvelope)))]
async fn get_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<KeyView>, ApiError> {
    let key = state.engine.get_key(&actor, &id).await?;
    Ok(Json(KeyView::new(&key, state.engine.now())))
}

#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)), request_body = UpdateKey,
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = KeyView), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
async fn update_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<UpdateKey>,
) -> Result<Json<KeyView>, ApiError> {
    let key = state.engine.update_key(&actor, &id, body.into()).await?;
    Ok(Json(KeyView::new(&key, state.engine.now())))
}

/// Revokes the key (idempotent) and hides it from lists; the row stays for the audit trail.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = KeyView), (status = 404, body = ErrorEnvelope)))]
async fn delete_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<KeyView>, ApiError> {
    let key = state.engine.delete_key(&actor, &id).await?;
    Ok(Json(KeyView::new(&key, state.engine.now())))
}

/// Revokes the key. Takes effect on this node's next request. Revoking twice is harmless.
#[utoipa::path(post, path = "/v1/keys/{id}/revoke", tag = "keys", params(("id" = String, Path)), request_body = RevokeKey,
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = KeyView), (status = 404, body = ErrorEnvelope)))]
async fn revoke_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<RevokeKey>,
) -> Result<Json<KeyView>, ApiError> {
    let key = state.engine.revoke_key(&actor, &id, body.reason).await?;
    Ok(Json(KeyView::new(&key, state.engine.now())))
}

/// Issues a successor key (shown once); the old key works until now + grace.
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", params(("id" = String, Path)), request_body = RotateKey,
    security(("api_key" = []), ("bearer" = [])), responses((status = 201, body = CreatedKey), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
async fn rotate_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<RotateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let (key, plaintext) = state.engine.rotate_key(&actor, &id, body.grace.as_deref()).await?;
    let details = KeyView::new(&key, state.engine.now());
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: plaintext.expose().to_owned(),
            details,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/keys/{id}/usage", tag = "keys",
    params(("id" = String, Path), ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("granularity" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = KeyUsage), (status = 404, body = ErrorEnvelope)))]
async fn key_usage(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Json<KeyUsage>, ApiError> {
    let range = UsageRange::of(query, &state)?;
    let buckets = state
        .engine
        .key_usage(&actor, &id, range.from, range.to, range.granularity)
        .await?;
    Ok(Json(KeyUsage {
        key_id: id,
        granularity: range.granularity_text,
        from: range.from,
        to: range.to,
        data: buckets.iter().map(UsagePoint::from).collect(),
    }))
}

/// A usage query's range with its defaults: the last 24 hours, per minute.
struct UsageRange {
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    granularity: Granularity,
    granularity_text: String,
}

impl UsageRange {
    fn of(query: UsageQuery, state: &AdminState) -> Result<Self, ApiError> {
        let granularity_text = query.granularity.unwrap_or_else(|| "minute".into());
        let granularity = Granularity::parse(&granularity_text)
            .ok_or_else(|| ApiError::validation("granularity", "must be minute, hour or day"))?;
        let to = query.to.unwrap_or_else(|| state.engine.now());
        let from = query.from.unwrap_or(to - chrono::Duration::hours(24));
        Ok(Self {
            from,
            to,
            granularity,
            granularity_text,
        })
    }
}

/// The workspace's keys with the most requests (or rejections) over the last
/// 1, 7 or 30 whole UTC days, today included.
#[utoipa::path(get, path = "/v1/workspaces/{id}/top-keys", tag = "workspaces",
    params(("id" = String, Path), ("window" = Option<String>, Query), ("by" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = TopKeys), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
async fn top_keys(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<TopKeysQuery>,
) -> Result<Json<TopKeys>, ApiError> {
    let window = query.window.unwrap_or_else(|| "7d".into());
    let days = match window.as_str() {
        "1d" => 1,
        "7d" => 7,
        "30d" => 30,
        _ => return Err(ApiError::validation("window", "must be 1d, 7d or 30d")),
    };
    let by_text = query.by.unwrap_or_else(|| "requests".into());
    let by = match by_text.as_str() {
        "requests" => keygate_store::TopBy::Requests,
        "rejections" => keygate_store::TopBy::Rejections,
        _ => return Err(ApiError::validation("by", "must be requests or rejections")),
    };
    let (since, keys) = state
        .engine
        .top_keys(&actor, &id, days, by, query.limit.unwrap_or(10))
        .await?;
    Ok(Json(TopKeys {
        workspace_id: id,
        window,
        by: by_text,
        since,
        data: keys
            .into_iter()
            .map(|k| TopKey {
                key_id: k.key_id,
                name: k.name,
                requests: k.requests,
                rejected: k.rejected,
            })
            .collect(),
    }))
}

/// Requests of all of a workspace's keys per bucket, by outcome.
#[utoipa::path(get, path = "/v1/workspaces/{id}/usage", tag = "workspaces",
    params(("id" = String, Path), ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("granularity" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = WorkspaceUsage), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
async fn workspace_usage(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Json<WorkspaceUsage>, ApiError> {
    let range = UsageRange::of(query, &state)?;
    let buckets = state
        .engine
        .workspace_usage(&actor, &id, range.from, range.to, range.granularity)
        .await?;
    Ok(Json(WorkspaceUsage {
        workspace_id: id,
        granularity: range.granularity_text,
        from: range.from,
        to: range.to,
        data: buckets.iter().map(UsagePoint::from).collect(),
    }))
}

/// The gateway's decision for a key, without sending a request through it.
#[utoipa::path(post, path = "/v1/keys/verify", tag = "keys", request_body = VerifyKey,
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = VerifyResult), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)))]
async fn verify_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<VerifyKey>,
) -> Result<Response, ApiError> {
    let ip = match body.ip.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse()
                .map_err(|_| ApiError::validation("ip", format!("`{text}` is not an IP address")))?,
        ),
    };
    let resource = body
        .resource
        .as_deref()
        .unwrap_or(keygate_core::limits::DEFAULT_RESOURCE);
    let scopes = keygate_core::scope::validate_scopes(&body.scopes)
        .map_err(|e| ApiError::validation("scopes", e.to_string()))?;
    match state
        .engine
        .verify_for(&actor, body.key.0.expose_secret(), &scopes, ip, resource, body.dry_run)
        .await
    {
        Ok(verified) => {
            let cached = &verified.key;
            let result = VerifyResult {
                valid: true,
                key: KeyView::new(&cached.key, state.engine.now()),
                workspace: WorkspaceSummary {
                    id: cached.workspace.id.clone(),
                    name: cached.workspace.name.clone(),
                    plan: cached.workspace.plan.clone(),
                },
                ratelimit: RateLimitView {
                    limits: verified
                        .limits
                        .as_ref()
                        .map(crate::http::ratelimit::views)
                        .unwrap_or_default(),
                },
            };
            Ok(Json(result).into_response())
        }
        Err(rejection) => {
            let live = state.config.snapshot();
            let mut response = render(&live.verify_catalog, &rejection.error);
            if let Some(limits) = &rejection.limits {
                crate::http::ratelimit::add_headers(response.headers_mut(), limits, live.headers);
            }
            Ok(response)
        }
    }
}

/// Re-reads the config file (as SIGHUP does): routes, targets, plans, error
/// messages and header policy change for new requests; requests in flight
/// finish on the old ones. Refused whole, naming the field, when the file is
/// invalid or changes a setting that needs a restart (crates/keygate-server/src/reload.rs).
#[utoipa::path(post, path = "/v1/config/reload", tag = "operations",
    security(("api_key" = []), ("bearer" = [])), responses(
        (status = 200, body = ConfigReloaded),
        (status = 403, description = "Not an admin key", body = ErrorEnvelope),
        (status = 409, description = "`CONFIG_NEEDS_RESTART`: `data.fields` names the settings", body = ErrorEnvelope),
        (status = 422, description = "`INVALID_CONFIG`: `data.field` names the field", body = ErrorEnvelope)))]
async fn reload_config(
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

#[utoipa::path(get, path = "/v1/audit-events", tag = "audit",
    params(("workspace_id" = Option<String>, Query), ("key_id" = Option<String>, Query), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = AuditEventList)))]
async fn audit_events(
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

/// A one-time dashboard link for a customer: the provider's app calls this and
/// sends its user to `url`.
#[utoipa::path(post, path = "/v1/portal-sessions", tag = "dashboard", request_body = CreatePortalSession,
    security(("api_key" = []), ("bearer" = [])), responses((status = 201, body = PortalSession), (status = 404, body = ErrorEnvelope)))]
async fn create_portal_session(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody<CreatePortalSession>,
) -> Result<(StatusCode, Json<PortalSession>), ApiError> {
    let link = state.engine.create_portal_link(&actor, &body.workspace_id).await?;
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

/// The outbox: what webhooks receive, newest first.
#[utoipa::path(get, path = "/v1/events", tag = "webhooks",
    params(("workspace_id" = Option<String>, Query), ("key_id" = Option<String>, Query), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = EventList), (status = 404, body = ErrorEnvelope)))]
async fn list_events(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    QueryParams(query): QueryParams<EventQuery>,
) -> Result<Json<EventList>, ApiError> {
    let filter = EventListFilter {
        workspace_id: query.workspace_id,
        subject: query.key_id,
    };
    let paged = state
        .engine
        .list_events(&actor, filter, &page(query.limit, query.cursor)?)
        .await?;
    Ok(Json(EventList {
        data: paged.items.iter().map(EventView::from).collect(),
        next_cursor: paged.next_cursor,
    }))
}

/// Creates an endpoint. The response is the only place its signing secret appears.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    security(("api_key" = []), ("bearer" = [])), responses((status = 201, body = CreatedWebhook), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
async fn create_webhook(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let endpoint = state.engine.create_webhook(&actor, body.into()).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            secret: endpoint.secret.expose(),
            webhook: WebhookView::from(&endpoint),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    params(("workspace_id" = Option<String>, Query), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = WebhookList)))]
async fn list_webhooks(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    QueryParams(query): QueryParams<WebhookListQuery>,
) -> Result<Json<WebhookList>, ApiError> {
    let paged = state
        .engine
        .list_webhooks(&actor, query.workspace_id.as_deref(), &page(query.limit, query.cursor)?)
        .await?;
    Ok(Json(WebhookList {
        data: paged.items.iter().map(WebhookView::from).collect(),
        next_cursor: paged.next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = WebhookView), (status = 404, body = ErrorEnvelope)))]
async fn get_webhook(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let endpoint = state.engine.get_webhook(&actor, &id).await?;
    Ok(Json(WebhookView::from(&endpoint)))
}

/// Stops deliveries to the endpoint; its pending deliveries are dropped as failed.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 204), (status = 404, body = ErrorEnvelope)))]
async fn delete_webhook(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_webhook(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deliveries to the endpoint, newest first, each with every attempt.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    security(("api_key" = []), ("bearer" = [])), responses((status = 200, body = DeliveryList), (status = 404, body = ErrorEnvelope)))]
async fn webhook_deliveries(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let paged = state
        .engine
        .webhook_deliveries(&actor, &id, &page(query.limit, query.cursor)?)
        .await?;
    Ok(Json(DeliveryList {
        data: paged.items.iter().map(DeliveryView::from).collect(),
        next_cursor: paged.next_cursor,
    }))
}

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keygate admin API", description = "Workspaces, API keys, verification, audit events, events and webhooks."),
    paths(
        healthz, readyz, metrics, create_workspace, list_workspaces, get_workspace, update_workspace, delete_workspace,
        create_key, list_keys, get_key, update_key, delete_key, revoke_key, rotate_key, key_usage, workspace_usage, top_keys, verify_key,
        audit_events, create_portal_session, list_events, create_webhook, list_webhooks, get_webhook, delete_webhook,
        webhook_deliveries, reload_config
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

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
