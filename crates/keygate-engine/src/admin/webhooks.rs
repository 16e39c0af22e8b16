//! Webhook endpoints and the outbox, as the admin API sees them. Delivery
//! is `crate::webhooks::Deliveries`.

use keygate_core::events::EventFilter;
use keygate_core::id::{self, ADMIN_WORKSPACE_ID, WEBHOOK_PREFIX};
use keygate_core::webhook::WebhookSecret;
use keygate_store::{Delivery, EventListFilter, Page, Paged, StoredEvent, WebhookEndpoint};
use serde_json::json;

use super::{Actor, ActorScope, Admin};
use crate::webhooks::{validate_description, validate_url, NewWebhook};
use crate::AdminError;

impl Admin {
    // ----- endpoints -----

    /// Creates an endpoint; its secret is in the result, to be shown once.
    pub async fn create_webhook(&self, actor: &Actor, input: NewWebhook) -> Result<WebhookEndpoint, AdminError> {
        match &input.workspace_id {
            None if actor.scope != ActorScope::Admin => {
                return Err(AdminError::Forbidden("a global webhook needs an admin key"))
            }
            None => {}
            Some(workspace_id) => {
                self.get_workspace(actor, workspace_id).await?;
            }
        }
        let events = EventFilter::parse(&input.events).map_err(|e| AdminError::validation("events", e))?;
        let now = self.context.now();
        let endpoint = WebhookEndpoint {
            id: self.context.new_id(WEBHOOK_PREFIX, now),
            workspace_id: input.workspace_id,
            url: validate_url(&input.url)?,
            secret: WebhookSecret::generate(&mut rand::thread_rng()),
            events,
            description: validate_description(input.description)?,
            created_at: now,
            created_by: Some(actor.id.clone()),
        };
        let details = json!({"url": endpoint.url, "events": endpoint.events.names()});
        let audit_ws = endpoint.workspace_id.as_deref().unwrap_or(ADMIN_WORKSPACE_ID);
        let event = self.audit_event(actor, "webhook.created", &endpoint.id, audit_ws, details, now);
        self.context.store().insert_webhook(&endpoint, &event).await?;
        Ok(endpoint)
    }

    /// An endpoint the caller may see: its workspace's, or any for an admin.
    pub async fn get_webhook(&self, actor: &Actor, id: &str) -> Result<WebhookEndpoint, AdminError> {
        if !id::looks_like(WEBHOOK_PREFIX, id) {
            return Err(AdminError::NotFound);
        }
        match self.context.store().get_webhook(id).await? {
            Some(endpoint) if self.may_see_webhook(actor, &endpoint) => Ok(endpoint),
            _ => Err(AdminError::NotFound),
        }
    }

    fn may_see_webhook(&self, actor: &Actor, endpoint: &WebhookEndpoint) -> bool {
        match (&actor.scope, &endpoint.workspace_id) {
            (ActorScope::Admin, _) => true,
            (ActorScope::Workspace(own), Some(workspace_id)) => own == workspace_id,
            (ActorScope::Workspace(_), None) => false,
        }
    }

    /// A workspace key lists its workspace's endpoints; an admin lists one
    /// workspace's, or every endpoint.
    pub async fn list_webhooks(
        &self,
        actor: &Actor,
        workspace_id: Option<&str>,
        page: &Page,
    ) -> Result<Paged<WebhookEndpoint>, AdminError> {
        let workspace_id = match (&actor.scope, workspace_id) {
            (ActorScope::Workspace(own), Some(asked)) if own != asked => return Err(AdminError::NotFound),
            (ActorScope::Workspace(own), _) => Some(own.as_str()),
            (ActorScope::Admin, asked) => asked,
        };
        Ok(self.context.store().list_webhooks(workspace_id, page).await?)
    }

    /// Returns the endpoint as it was, for callers that show where it belonged.
    pub async fn delete_webhook(&self, actor: &Actor, id: &str) -> Result<WebhookEndpoint, AdminError> {
        let endpoint = self.get_webhook(actor, id).await?;
        let now = self.context.now();
        let audit_ws = endpoint.workspace_id.as_deref().unwrap_or(ADMIN_WORKSPACE_ID);
        let event = self.audit_event(
            actor,
            "webhook.deleted",
            id,
            audit_ws,
            json!({"url": endpoint.url}),
            now,
        );
        self.context.store().delete_webhook(id, now, &event).await?;
        Ok(endpoint)
    }

    pub async fn webhook_deliveries(
        &self,
        actor: &Actor,
        id: &str,
        page: &Page,
    ) -> Result<Paged<Delivery>, AdminError> {
        self.get_webhook(actor, id).await?;
        Ok(self.context.store().list_deliveries(id, page).await?)
    }

    /// The outbox, newest first: a workspace's events, or a key's.
    pub async fn list_events(
        &self,
        actor: &Actor,
        mut filter: EventListFilter,
        page: &Page,
    ) -> Result<Paged<StoredEvent>, AdminError> {
        if let Some(key_id) = &filter.subject {
            if let Some(workspace_id) = self.workspace_of_filtered_key(actor, key_id).await? {
                filter.workspace_id.get_or_insert(workspace_id);
            }
        }
        if let ActorScope::Workspace(own) = &actor.scope {
            if filter.workspace_id.as_ref().is_some_and(|ws| ws != own) {
                return Err(AdminError::NotFound);
            }
            filter.workspace_id = Some(own.clone());
        }
        Ok(self.context.store().list_events(&filter, page).await?)
    }
}
