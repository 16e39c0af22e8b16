//! API keys: a workspace's keys, and `/v1/keys` to read, change, revoke, rotate and verify one.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keygate_core::model::KeyStatus;
use keygate_core::KeyHash;
use keygate_engine::nodes::Changed;
use keygate_engine::{LimitMode, VerifyRequest};
use keygate_store::KeyFilter;
use secrecy::ExposeSecret;

use crate::http::dto::*;
use crate::http::error::{render, ApiError};
use crate::http::extract::{JsonBody, Pagination, PathParam, QueryParams};

use super::nodes::receipt;
use super::{AdminState, Caller};

/// Creates a key. The response is the only place its plaintext ever appears.
#[utoipa::path(post, path = "/v1/workspaces/{id}/keys", tag = "keys", params(("id" = String, Path)), request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn create_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(workspace_id): PathParam<String>,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let (key, plaintext) = state
        .engine
        .admin()
        .create_key(&actor, &workspace_id, body.into())
        .await?;
    let details = KeyView::new(&key, state.engine.now());
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: plaintext.expose().to_owned(),
            details,
        }),
    ))
}

/// Imports keys that already exist elsewhere (crates/keygate-engine/src/admin/import.rs).
#[utoipa::path(post, path = "/v1/workspaces/{id}/keys/import", tag = "keys", params(("id" = String, Path)), request_body = ImportKeys,
    responses((status = 200, body = ImportedKeys), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn import_keys(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(workspace_id): PathParam<String>,
    JsonBody(body): JsonBody<ImportKeys>,
) -> Result<Json<ImportedKeys>, ApiError> {
    let rows = body.keys.into_iter().map(Into::into).collect();
    let report = state
        .engine
        .admin()
        .import_keys(&actor, &workspace_id, rows, body.legacy)
        .await?;
    let verified = state.engine.verifier().takes_legacy_keys();
    Ok(Json(ImportedKeys::new(report, verified)))
}

#[utoipa::path(get, path = "/v1/workspaces/{id}/keys", tag = "keys",
    params(("id" = String, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200), ("cursor" = Option<String>, Query), ("status" = Option<String>, Query, pattern = "^(active|revoked|expired|deleted)$"), ("environment" = Option<String>, Query)),
    responses((status = 200, body = List<KeyView>), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn list_keys(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(workspace_id): PathParam<String>,
    QueryParams(query): QueryParams<KeyListQuery>,
    Pagination(page): Pagination,
) -> Result<Json<List<KeyView>>, ApiError> {
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
        leaked: false,
    };
    let paged = state
        .engine
        .admin()
        .list_keys(&actor, &workspace_id, &filter, &page)
        .await?;
    let now = state.engine.now();
    Ok(Json(List {
        data: paged.items.iter().map(|k| KeyView::new(k, now)).collect(),
        next_cursor: paged.next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn get_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<KeyView>, ApiError> {
    let key = state.engine.admin().get_key(&actor, &id).await?;
    Ok(Json(KeyView::new(&key, state.engine.now())))
}

#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)), request_body = UpdateKey,
    responses((status = 200, body = KeyView), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn update_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<UpdateKey>,
) -> Result<Json<KeyView>, ApiError> {
    let key = state.engine.admin().update_key(&actor, &id, body.into()).await?;
    Ok(Json(KeyView::new(&key, state.engine.now())))
}

/// Revokes the key (idempotent) and hides it from lists; the row stays for the audit trail.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path), ("wait" = Option<String>, Query, pattern = "^(0|[1-9][0-9]{0,3}ms|[1-9]s|10s)$", description = "Wait up to this long (`2s`; `0`, `1ms` to `9999ms`, or `1s` to `10s`) for every live node to confirm the change; the answer then has `propagation`")),
    responses((status = 200, body = Propagated<KeyView>), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn delete_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(wait): QueryParams<WaitQuery>,
) -> Result<Json<Propagated<KeyView>>, ApiError> {
    let key = state.engine.admin().delete_key(&actor, &id).await?;
    Ok(Json(key_with_receipt(&state, &actor, &wait, "key.deleted", &key).await))
}

/// Revokes the key. Takes effect on this node's next request, and on every
/// other node's within a second; `?wait` answers once they all confirmed.
/// Revoking twice is harmless.
#[utoipa::path(post, path = "/v1/keys/{id}/revoke", tag = "keys", params(("id" = String, Path), ("wait" = Option<String>, Query, pattern = "^(0|[1-9][0-9]{0,3}ms|[1-9]s|10s)$", description = "Wait up to this long (`2s`; `0`, `1ms` to `9999ms`, or `1s` to `10s`) for every live node to confirm the change; the answer then has `propagation`")), request_body = RevokeKey,
    responses((status = 200, body = Propagated<KeyView>), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn revoke_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(wait): QueryParams<WaitQuery>,
    JsonBody(body): JsonBody<RevokeKey>,
) -> Result<Json<Propagated<KeyView>>, ApiError> {
    let key = state.engine.admin().revoke_key(&actor, &id, body.reason).await?;
    Ok(Json(key_with_receipt(&state, &actor, &wait, "key.revoked", &key).await))
}

/// The key's view, with the receipt of `action` if the call waits for one.
async fn key_with_receipt(
    state: &AdminState,
    actor: &keygate_engine::Actor,
    wait: &WaitQuery,
    action: &str,
    key: &keygate_core::model::ApiKey,
) -> Propagated<KeyView> {
    let changed = Changed {
        action,
        object_type: "key",
        object_id: &key.id,
        workspace_id: &key.workspace_id,
    };
    Propagated {
        propagation: receipt(state, actor, wait, changed).await,
        result: KeyView::new(key, state.engine.now()),
    }
}

/// Issues a successor key (shown once); the old key works until now + grace.
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", params(("id" = String, Path), ("wait" = Option<String>, Query, pattern = "^(0|[1-9][0-9]{0,3}ms|[1-9]s|10s)$", description = "Wait up to this long (`2s`; `0`, `1ms` to `9999ms`, or `1s` to `10s`) for every live node to confirm the change; the answer then has `propagation`")), request_body = RotateKey,
    responses((status = 201, body = Propagated<CreatedKey>), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub(super) async fn rotate_key(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(wait): QueryParams<WaitQuery>,
    JsonBody(body): JsonBody<RotateKey>,
) -> Result<(StatusCode, Json<Propagated<CreatedKey>>), ApiError> {
    let (key, plaintext) = state
        .engine
        .admin()
        .rotate_key(&actor, &id, body.grace.as_deref())
        .await?;
    let changed = Changed {
        action: "key.rotated",
        object_type: "key",
        object_id: &id,
        workspace_id: &key.workspace_id,
    };
    let propagation = receipt(&state, &actor, &wait, changed).await;
    let details = KeyView::new(&key, state.engine.now());
    Ok((
        StatusCode::CREATED,
        Json(Propagated {
            result: CreatedKey {
                key: plaintext.expose().to_owned(),
                details,
            },
            propagation,
        }),
    ))
}

/// The keys behind these hashes, among those the caller may see; a hash of
/// anything else is left out. `keygate keys scan --check` asks this.
#[utoipa::path(post, path = "/v1/keys/lookup", tag = "keys", request_body = LookupKeys,
    responses((status = 200, body = List<FoundKey>), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn lookup_keys(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<LookupKeys>,
) -> Result<Json<List<FoundKey>>, ApiError> {
    let hashes = body
        .hashes
        .iter()
        .map(|HashText(text)| {
            KeyHash::from_hex(text)
                .ok_or_else(|| ApiError::validation("hashes", format!("`{text}` is not 64 lowercase hex digits")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let found = state.engine.admin().keys_by_hash(&actor, &hashes).await?;
    let now = state.engine.now();
    let data = found
        .iter()
        .map(|key| FoundKey {
            hash: key.hash.to_hex(),
            id: key.id.clone(),
            workspace_id: key.workspace_id.clone(),
            name: key.name.clone(),
            status: key.status(now).as_str().to_owned(),
            masked: key.hint.clone(),
        })
        .collect();
    Ok(Json(List {
        data,
        next_cursor: None,
    }))
}

/// The keys this node has dropped from its cache since `after` (revoked,
/// rotated, changed, deleted, here or on another node), for a service that
/// caches keygate's answers and must drop them too. Without `after`, or
/// with a cursor this node cannot continue (another node's, one from before
/// a restart, one too far behind), the answer is a reset: drop everything.
/// Waits up to `wait` for a change when there is none. Admin keys only.
#[utoipa::path(get, path = "/v1/keys/changes", tag = "keys", params(("after" = Option<String>, Query, pattern = "^[a-z0-9_]{1,64}\\.[0-9]{1,19}$", description = "The `cursor` of the previous answer"), ("wait" = Option<String>, Query, pattern = "^(0|[1-9][0-9]{0,3}ms|[1-9]s|10s)$", description = "Wait up to this long (`0`, `1ms` to `9999ms`, or `1s` to `10s`; default `0`) for a change")),
    responses((status = 200, body = KeyChangesView), (status = 403, body = ErrorEnvelope)))]
pub(super) async fn key_changes(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    QueryParams(query): QueryParams<ChangesQuery>,
) -> Result<Json<KeyChangesView>, ApiError> {
    let wait = query.wait.unwrap_or_default();
    let changes = state
        .engine
        .admin()
        .key_changes(&actor, query.after.as_deref(), wait)
        .await?;
    Ok(Json(changes.into()))
}

/// On a refusal of the checked key (never on one of the caller's own key):
/// `Keygate-Verdict: refused`, so a middleware passes on only those.
const KEYGATE_VERDICT: HeaderName = HeaderName::from_static("keygate-verdict");

/// The gateway's decision for a key, without sending a request through it.
///
/// Refusals come in the envelope described here; with `gateway_errors`
/// they come as the gateway sends them, in the deployment's `errors.format`.
#[utoipa::path(post, path = "/v1/keys/verify", tag = "keys", request_body = VerifyKey,
    responses((status = 200, body = VerifyResult), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)))]
pub(super) async fn verify_key(
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
    let named = match (body.resource.clone(), body.resources.clone()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "resources",
                "give `resource` or `resources`, not both",
            ));
        }
        (Some(resource), None) => Some(vec![resource]),
        (None, Some(resources)) if resources.is_empty() || resources.len() > 16 => {
            return Err(ApiError::validation("resources", "name 1 to 16 resources"));
        }
        (None, resources) => resources,
    };
    let resources = named.as_deref().unwrap_or(keygate_engine::default_resources());
    let scopes = keygate_core::scope::validate_scopes(&body.scopes)
        .map_err(|e| ApiError::validation("scopes", e.to_string()))?;
    let cost = body.cost.unwrap_or(1);
    if !(1..=keygate_core::ratelimit::MAX_COST).contains(&cost) {
        return Err(ApiError::validation(
            "cost",
            format!("`cost` must be from 1 to {}", keygate_core::ratelimit::MAX_COST),
        ));
    }
    let request = VerifyRequest {
        presented: body.key.0.expose_secret(),
        client_ip: ip,
        required_scopes: &scopes,
        resources,
        cost,
        limits: if body.dry_run {
            LimitMode::DryRun
        } else {
            LimitMode::Enforce
        },
        record: !body.dry_run,
    };
    match state.engine.admin().verify_for(&actor, request).await {
        Ok(verified) => Ok(Json(VerifyResult::of(&verified)).into_response()),
        Err(rejection) => {
            let live = state.config.snapshot();
            let catalog = if body.gateway_errors {
                &live.catalog
            } else {
                &live.verify_catalog
            };
            let mut response = render(catalog, &rejection.error);
            if let Some(limits) = &rejection.limits {
                crate::http::ratelimit::add_headers(response.headers_mut(), limits, &live.headers);
            }
            // Tells a refusal of the checked key from one of the caller's own
            // (a wrong or unauthorized key, which the API answers before this).
            response
                .headers_mut()
                .insert(KEYGATE_VERDICT, HeaderValue::from_static("refused"));
            Ok(response)
        }
    }
}
