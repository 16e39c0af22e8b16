//! `/v1/events` and `/v1/webhooks`: events, endpoints and their deliveries.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keygate_store::EventListFilter;

use crate::http::dto::*;
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, Pagination, PathParam, QueryParams};

use super::{AdminState, Caller};

/// The outbox: what webhooks receive, newest first.
#[utoipa::path(get, path = "/v1/events", tag = "webhooks",
    params(("workspace_id" = Option<String>, Query), ("key_id" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = List<EventView>), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn list_events(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    QueryParams(query): QueryParams<EventQuery>,
    Pagination(page): Pagination,
) -> Result<Json<List<EventView>>, ApiError> {
    let filter = EventListFilter {
        workspace_id: query.workspace_id,
        subject: query.key_id,
    };
    let paged = state.engine.admin().list_events(&actor, filter, &page).await?;
    Ok(Json(List::of(&paged)))
}

/// Creates an endpoint. The response is the only place its signing secret appears.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = CreatedWebhook), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)))]
pub(super) async fn create_webhook(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let (endpoint, secret) = state.engine.admin().create_webhook(&actor, body.into()).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            secret: secret.expose(),
            webhook: WebhookView::from(&endpoint),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    params(("workspace_id" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = List<WebhookView>),
        (status = 404, description = "The workspace filtered by is not one the caller can see", body = ErrorEnvelope)))]
pub(super) async fn list_webhooks(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    QueryParams(query): QueryParams<WebhookListQuery>,
    Pagination(page): Pagination,
) -> Result<Json<List<WebhookView>>, ApiError> {
    let paged = state
        .engine
        .admin()
        .list_webhooks(&actor, query.workspace_id.as_deref(), &page)
        .await?;
    Ok(Json(List::of(&paged)))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn get_webhook(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let endpoint = state.engine.admin().get_webhook(&actor, &id).await?;
    Ok(Json(WebhookView::from(&endpoint)))
}

/// Stops deliveries to the endpoint; its pending deliveries are dropped as failed.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn delete_webhook(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.admin().delete_webhook(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deliveries to the endpoint, newest first, each with every attempt.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = List<DeliveryView>), (status = 404, body = ErrorEnvelope)))]
pub(super) async fn webhook_deliveries(
    State(state): State<AdminState>,
    Caller(actor): Caller,
    PathParam(id): PathParam<String>,
    Pagination(page): Pagination,
) -> Result<Json<List<DeliveryView>>, ApiError> {
    let paged = state.engine.admin().webhook_deliveries(&actor, &id, &page).await?;
    Ok(Json(List::of(&paged)))
}
