//! Webhook endpoints and the outbox, as the admin API sees them. Delivery
//! is `crate::webhooks::Deliveries`.

use keygate_core::events::EventFilter;
use keygate_core::id::{self, ADMIN_WORKSPACE_ID, WEBHOOK_PREFIX};
use keygate_core::webhook::WebhookSecret;
use keygate_store::{Delivery, EventListFilter, Page, Paged, StoreError, StoredEvent, WebhookEndpoint};
use serde_json::json;

use super::{Actor, ActorScope, Admin};
use crate::webhooks::{validate_description, validate_url, NewWebhook};
use crate::AdminError;

/// What [`Admin::reseal_webhook_secrets`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Sealed again under the first key (or sealed for the first time).
    pub resealed: u64,
    /// Already under the first key.
    pub current: u64,
    /// Sealed with a key this node does not hold, or damaged.
    pub unopened: u64,
}

impl Admin {
    // ----- endpoints -----

    /// Creates an endpoint. Its secret is returned to be shown once; the
    /// store keeps it sealed.
    pub async fn create_webhook(
        &self,
        actor: &Actor,
        input: NewWebhook,
    ) -> Result<(WebhookEndpoint, WebhookSecret), AdminError> {
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
        let id = self.context.new_id(WEBHOOK_PREFIX, now);
        let secret = WebhookSecret::generate(&mut rand::thread_rng());
        let endpoint = WebhookEndpoint {
            secret: secret.seal(&self.context.keyring(), &id, &mut rand::thread_rng()),
            id,
            workspace_id: input.workspace_id,
            url: validate_url(&input.url)?,
            events,
            description: validate_description(input.description)?,
            created_at: now,
            created_by: Some(actor.id.clone()),
        };
        let details = json!({"url": endpoint.url, "events": endpoint.events.names()});
        let audit_ws = endpoint.workspace_id.as_deref().unwrap_or(ADMIN_WORKSPACE_ID);
        let event = self.audit_event(actor, "webhook.created", &endpoint.id, audit_ws, details, now);
        self.context.store().insert_webhook(&endpoint, &event).await?;
        Ok((endpoint, secret))
    }

    /// Seals every stored webhook secret under the keyring's first key:
    /// plaintexts left by a keygate from before sealing, and values sealed
    /// with an older key (`keygate secrets rotate`). A value another node
    /// changed meanwhile is left to it; one that does not open with this
    /// node's keys is counted and named in the log, never overwritten.
    pub async fn reseal_webhook_secrets(&self) -> Result<Resealed, StoreError> {
        // Held across the store calls: an owned Arc, not a guard.
        let keyring = arc_swap::Guard::into_inner(self.context.keyring());
        let mut report = Resealed::default();
        for (id, stored) in self.context.store().webhook_secrets().await? {
            if keyring.is_current(&stored) {
                report.current += 1;
                continue;
            }
            let secret = match WebhookSecret::open(&stored, &keyring, &id) {
                Ok(secret) => secret,
                Err(err) => {
                    tracing::warn!(endpoint = %id, error = %err, "a webhook secret does not open with this node's keys; left as it is");
                    report.unopened += 1;
                    continue;
                }
            };
            let sealed = secret.seal(&keyring, &id, &mut rand::thread_rng());
            if self
                .context
                .store()
                .replace_webhook_secret(&id, &stored, &sealed)
                .await?
            {
                report.resealed += 1;
            } else {
                report.current += 1;
            }
        }
        Ok(report)
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
        let asked = filter.workspace_id.take();
        filter.workspace_id = self.listed_workspace(actor, filter.subject.as_deref(), asked).await?;
        Ok(self.context.store().list_events(&filter, page).await?)
    }
}
