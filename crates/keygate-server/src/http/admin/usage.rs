//! Usage: a key's and a workspace's requests over time, and a workspace's top keys.

use axum::extract::State;
use axum::Json;
use keygate_engine::admin::Granularity;

use crate::http::dto::*;
use crate::http::error::ApiError;
use crate::http::extract::{PathParam, QueryParams};

use super::{AdminState, Caller};

#[utoipa::path(get, path = "/v1/keys/{id}/usage", tag = "keys",
    params(("id" = String, Path), ("from" = Option<DateTime<Utc>>, Query, description = "Before `to`, and at most 31 days earlier (366 per `day`); default `to` minus 24 hours"), ("to" = Option<DateTime<Utc>>, Query, description = "Default now"), ("granularity" = Option<String>, Query, pattern = "^(minute|hour|day)$")),
    responses((status = 200, body = KeyUsage), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn key_usage(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Json<KeyUsage>, ApiError> {
    let range = UsageRange::of(query, &state)?;
    let buckets = state
        .engine
        .admin()
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
    params(("id" = String, Path), ("window" = Option<String>, Query, pattern = "^(1d|7d|30d)$"), ("by" = Option<String>, Query, pattern = "^(requests|rejections)$"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100)),
    responses((status = 200, body = TopKeys), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn top_keys(
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
        .admin()
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
    params(("id" = String, Path), ("from" = Option<DateTime<Utc>>, Query, description = "Before `to`, and at most 31 days earlier (366 per `day`); default `to` minus 24 hours"), ("to" = Option<DateTime<Utc>>, Query, description = "Default now"), ("granularity" = Option<String>, Query, pattern = "^(minute|hour|day)$")),
    responses((status = 200, body = WorkspaceUsage), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn workspace_usage(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Json<WorkspaceUsage>, ApiError> {
    let range = UsageRange::of(query, &state)?;
    let buckets = state
        .engine
        .admin()
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
