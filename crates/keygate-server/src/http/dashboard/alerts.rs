//! Alerts and Webhooks: a workspace's recent events, its webhook endpoints,
//! and each endpoint's deliveries. The handlers call the engine's webhook
//! operations with the session's actor, as the admin API does.

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use keygate_core::events::EventType;
use keygate_core::model::Workspace;
use keygate_engine::sessions::Revealed;
use keygate_engine::webhooks::NewWebhook;
use keygate_store::{EventListFilter, Page};
use serde::Deserialize;

use super::session::{Posted, SignedIn};
use super::views::{AlertsPage, DeliveryRow, EventRow, Layout, WebhookPage, WebhookRow};
use super::{form_urlencoded_pairs, html, optional, redirect, PageResult, PathParam, QueryParam, PAGE_SIZE};
use crate::http::admin::AdminState;
use crate::http::dashboard::DashboardError;

/// Endpoints listed on the page; more are a sign of a mistake, and the API lists them all.
const ENDPOINTS_SHOWN: u32 = 100;

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/dashboard/alerts", get(alerts))
        .route("/dashboard/webhooks", post(create_webhook))
        .route("/dashboard/webhooks/{id}", get(webhook))
        .route("/dashboard/webhooks/{id}/delete", post(delete_webhook))
}

#[derive(Deserialize)]
struct AlertsQuery {
    #[serde(default)]
    workspace_id: String,
    cursor: Option<String>,
}

async fn alerts(
    State(state): State<AdminState>,
    signed_in: SignedIn,
    QueryParam(query): QueryParam<AlertsQuery>,
) -> PageResult {
    let session = &signed_in.session;
    let workspace_id = optional(&query.workspace_id).or_else(|| session.workspace().map(str::to_owned));
    let workspace: Option<Workspace> = match &workspace_id {
        Some(id) => Some(state.engine.admin().get_workspace(&session.actor, id).await?),
        None => None,
    };
    let filter = EventListFilter {
        workspace_id: workspace_id.clone(),
        subject: None,
    };
    let page = Page {
        limit: PAGE_SIZE,
        cursor: query.cursor,
    };
    let events = state.engine.admin().list_events(&session.actor, filter, &page).await?;
    let endpoints = state
        .engine
        .admin()
        .list_webhooks(&session.actor, workspace_id.as_deref(), &Page::first(ENDPOINTS_SHOWN))
        .await?;
    let next_page = events.next_cursor.as_deref().map(|cursor| {
        let pairs = [
            ("workspace_id", workspace_id.as_deref().unwrap_or_default()),
            ("cursor", cursor),
        ];
        format!("/dashboard/alerts?{}", form_urlencoded_pairs(&pairs))
    });
    html(&AlertsPage {
        layout: Layout::signed_in(
            &state.dashboard.settings.product_name,
            "Alerts & Webhooks",
            session,
            workspace.as_ref(),
            "alerts",
        ),
        events: events.items.iter().map(EventRow::of).collect(),
        endpoints: endpoints.items.iter().map(WebhookRow::of).collect(),
        workspace_id: workspace_id.unwrap_or_default(),
        event_types: EventType::ALL.iter().map(|kind| kind.as_str()).collect(),
        next_page,
    })
}

#[derive(Deserialize)]
struct WebhookForm {
    url: String,
    /// Empty: every workspace (operators only).
    #[serde(default)]
    workspace_id: String,
    /// Event types separated by spaces or commas; empty for all.
    #[serde(default)]
    events: String,
    #[serde(default)]
    description: String,
}

async fn create_webhook(State(state): State<AdminState>, posted: Posted<WebhookForm>) -> PageResult {
    let Posted { signed_in, form } = posted;
    let input = NewWebhook {
        url: form.url,
        workspace_id: optional(&form.workspace_id),
        events: form
            .events
            .split([' ', ','])
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect(),
        description: optional(&form.description),
    };
    let (endpoint, secret) = state
        .engine
        .admin()
        .create_webhook(&signed_in.session.actor, input)
        .await?;
    state
        .engine
        .sessions()
        .hold_reveal(&signed_in.secret, &endpoint.id, secret)
        .await?;
    Ok(redirect(&format!("/dashboard/webhooks/{}", endpoint.id)))
}

async fn webhook(State(state): State<AdminState>, signed_in: SignedIn, PathParam(id): PathParam<String>) -> PageResult {
    let session = &signed_in.session;
    let endpoint = state.engine.admin().get_webhook(&session.actor, &id).await?;
    let workspace = match &endpoint.workspace_id {
        Some(ws) => Some(state.engine.admin().get_workspace(&session.actor, ws).await?),
        None => None,
    };
    let deliveries = state
        .engine
        .admin()
        .webhook_deliveries(&session.actor, &id, &Page::first(PAGE_SIZE))
        .await?;
    let revealed = state.engine.sessions().take_reveal(&signed_in.secret, &id).await?;
    html(&WebhookPage {
        layout: Layout::signed_in(
            &state.dashboard.settings.product_name,
            "Webhook",
            session,
            workspace.as_ref(),
            "alerts",
        ),
        endpoint: WebhookRow::of(&endpoint),
        revealed: revealed.as_ref().map(Revealed::expose),
        deliveries: deliveries.items.iter().map(DeliveryRow::of).collect(),
    })
}

#[derive(Deserialize)]
struct DeleteForm {
    #[serde(default)]
    confirm: String,
}

async fn delete_webhook(
    State(state): State<AdminState>,
    PathParam(id): PathParam<String>,
    posted: Posted<DeleteForm>,
) -> PageResult {
    if posted.form.confirm != "yes" {
        return Err(DashboardError::bad_form(
            "Tick “I understand” to confirm that this endpoint should stop receiving events.",
        ));
    }
    let actor = &posted.signed_in.session.actor;
    let endpoint = state.engine.admin().delete_webhook(actor, &id).await?;
    let back = match endpoint.workspace_id {
        Some(ws) => format!("/dashboard/alerts?workspace_id={ws}"),
        None => "/dashboard/alerts".to_owned(),
    };
    Ok(redirect(&back))
}
