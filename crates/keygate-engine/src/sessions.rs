//! Dashboard sessions and portal links.
//!
//! A session is opened by signing in with an admin key (or a workspace key
//! holding `keys:manage`), or by redeeming a portal link that the provider's
//! own app created for one workspace. The browser holds a random secret in a
//! cookie; the store holds only its SHA-256, like keys, and the session's
//! CSRF token is derived from the secret, so it is not stored either.
//!
//! Sessions, the secrets a session shows once (sealed with the secrets key)
//! and portal links live in the store (issue 18): any node serves any
//! browser, a restart signs nobody out, and a portal link is used up by its
//! first redemption on any node. Liveness is pure: [`SessionSettings::is_live`]
//! takes `now`.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use keygate_core::model::KeyStatus;
use keygate_core::ErrorCode;
use keygate_core::PlaintextKey;
use keygate_store::{SessionRecord, StoreError};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::admin::{Actor, ActorScope, Admin};
use crate::context::Context;
use crate::verifier::Rejection;
use crate::AdminError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// A session unused this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, however busy.
    pub lifetime: Duration,
    /// How long a portal link can be redeemed (once).
    pub portal_link_ttl: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::minutes(30),
            lifetime: Duration::hours(12),
            portal_link_ttl: Duration::minutes(10),
        }
    }
}

impl SessionSettings {
    /// A session opened at `created_at` and last used at `last_seen_at` is
    /// still open at `now`.
    pub fn is_live(&self, created_at: DateTime<Utc>, last_seen_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now < last_seen_at + self.idle_timeout && now < created_at + self.lifetime
    }
}

/// A random secret given to a browser: a session cookie or a portal link token.
/// `Debug` prints nothing of it and its memory is zeroed when dropped (secrecy).
#[derive(Clone, Debug)]
pub struct BrowserSecret(SecretString);

/// 256 random bits from the OS, hex-encoded: tokens nobody can guess.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl BrowserSecret {
    fn generate() -> Self {
        Self(random_token().into())
    }

    /// Wraps what a browser sent; anything is accepted and simply not found.
    pub fn from_presented(value: &str) -> Self {
        Self(value.into())
    }

    /// The only way to read the secret: for the cookie or the link.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// What the store keeps: the SHA-256 of the secret, hex.
    fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.expose().as_bytes()))
    }

    /// The CSRF token of the session this secret opens: derived, never
    /// stored, and no help in finding the secret.
    fn csrf_token(&self) -> String {
        let mut digest = Sha256::new();
        digest.update(b"keygate dashboard csrf\0");
        digest.update(self.expose().as_bytes());
        hex::encode(digest.finalize())
    }
}

/// Who is signed in, for how long, and the token their forms must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSession {
    /// Public id (`sess_...`): the audit trail's actor is derived from it.
    pub id: String,
    pub actor: Actor,
    /// The key used to sign in; the session ends when that key stops being active.
    pub signed_in_with: Option<String>,
    /// Compared with every form post (the synchronizer-token pattern).
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

impl DashboardSession {
    /// The workspace a portal session is bound to; `None` for operators.
    pub fn workspace(&self) -> Option<&str> {
        match &self.actor.scope {
            ActorScope::Admin => None,
            ActorScope::Workspace(id) => Some(id),
        }
    }

    pub fn is_operator(&self) -> bool {
        self.actor.scope == ActorScope::Admin
    }
}

/// A secret shown once, on the next view of its page: a new key's
/// plaintext or a new webhook's signing secret.
#[derive(Debug, Clone)]
pub struct Revealed(SecretString);

impl Revealed {
    pub fn expose(&self) -> String {
        self.0.expose_secret().to_owned()
    }
}

impl From<PlaintextKey> for Revealed {
    fn from(plaintext: PlaintextKey) -> Self {
        Self(plaintext.expose().into())
    }
}

impl From<keygate_core::webhook::WebhookSecret> for Revealed {
    fn from(secret: keygate_core::webhook::WebhookSecret) -> Self {
        Self(secret.expose().into())
    }
}

/// A portal link as the API returns it.
#[derive(Debug, Clone)]
pub struct PortalLink {
    pub token: BrowserSecret,
    pub expires_at: DateTime<Utc>,
}

/// Why a browser has no usable session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session, or it has ended")]
    SignedOut,
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Dashboard sessions and portal links, in the store, and the admin checks
/// that open and keep a session.
pub struct Sessions {
    context: Arc<Context>,
    settings: SessionSettings,
    admin: Arc<Admin>,
}

impl Sessions {
    pub(crate) fn new(context: Arc<Context>, settings: SessionSettings, admin: Arc<Admin>) -> Self {
        Self {
            context,
            settings,
            admin,
        }
    }

    pub fn settings(&self) -> SessionSettings {
        self.settings
    }

    /// Signs in with an admin key, or a workspace key holding `keys:manage`.
    pub async fn sign_in(
        &self,
        presented: &str,
        client_ip: IpAddr,
    ) -> Result<(BrowserSecret, DashboardSession), Rejection> {
        let actor = self.admin.authenticate_admin(presented, client_ip).await?;
        let now = self.context.now();
        let session_id = self.context.new_id("sess", now);
        let key_id = actor.id.clone();
        let actor = Actor {
            id: format!("dashboard:{key_id}"),
            ..actor
        };
        self.open(session_id, actor, Some(key_id), now).await.map_err(|err| {
            tracing::error!(error = %err, "session not stored");
            Rejection::anonymous(ErrorCode::ServiceUnavailable)
        })
    }

    /// Stores a new session (and forgets ended ones).
    async fn open(
        &self,
        id: String,
        actor: Actor,
        signed_in_with: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(BrowserSecret, DashboardSession), StoreError> {
        self.prune(now).await?;
        let secret = BrowserSecret::generate();
        let record = SessionRecord {
            id,
            actor_id: actor.id.clone(),
            workspace_id: match &actor.scope {
                ActorScope::Admin => None,
                ActorScope::Workspace(id) => Some(id.clone()),
            },
            environment: actor.environment.clone(),
            signed_in_with,
            created_at: now,
            last_seen_at: now,
        };
        self.context.store().insert_session(&secret.hash(), &record).await?;
        let session = session_of(record, &secret, actor.ip);
        Ok((secret, session))
    }

    /// Deletes ended sessions, what they had yet to show, and expired portal links.
    async fn prune(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.context
            .store()
            .prune_sessions(now - self.settings.idle_timeout, now - self.settings.lifetime, now)
            .await
    }

    /// The session a cookie names, as seen from `client_ip`, marked as seen
    /// now. A session opened with a key ends as soon as that key is revoked,
    /// expired or deleted.
    pub async fn session(&self, secret: &BrowserSecret, client_ip: IpAddr) -> Result<DashboardSession, SessionError> {
        let now = self.context.now();
        let hash = secret.hash();
        let store = self.context.store();
        let record = store
            .session(&hash)
            .await
            .map_err(AdminError::from)?
            .ok_or(SessionError::SignedOut)?;
        if !self.settings.is_live(record.created_at, record.last_seen_at, now) {
            store.delete_session(&hash).await.map_err(AdminError::from)?;
            return Err(SessionError::SignedOut);
        }
        if let Some(key_id) = &record.signed_in_with {
            let key = store.get_key(key_id).await.map_err(AdminError::from)?;
            if key.is_none_or(|key| key.status(now) != KeyStatus::Active) {
                store.delete_session(&hash).await.map_err(AdminError::from)?;
                return Err(SessionError::SignedOut);
            }
        }
        store.touch_session(&hash, now).await.map_err(AdminError::from)?;
        let record = SessionRecord {
            last_seen_at: now,
            ..record
        };
        Ok(session_of(record, secret, Some(client_ip.to_string())))
    }

    /// Ends the session on every node.
    pub async fn sign_out(&self, secret: &BrowserSecret) -> Result<(), AdminError> {
        Ok(self.context.store().delete_session(&secret.hash()).await?)
    }

    /// Keeps a new key's plaintext (or a webhook's secret), sealed, until the
    /// page that shows it once asks for it, on whichever node that is.
    pub async fn hold_reveal(
        &self,
        secret: &BrowserSecret,
        object_id: &str,
        revealed: impl Into<Revealed>,
    ) -> Result<(), AdminError> {
        let hash = secret.hash();
        let revealed = revealed.into();
        let sealed = self.context.keyring().seal(
            revealed.0.expose_secret().as_bytes(),
            &reveal_context(&hash, object_id),
            &mut rand::thread_rng(),
        );
        Ok(self.context.store().hold_reveal(&hash, object_id, &sealed).await?)
    }

    /// The held secret of `object_id`, removed: a second call (a reload) gets nothing.
    pub async fn take_reveal(&self, secret: &BrowserSecret, object_id: &str) -> Result<Option<Revealed>, AdminError> {
        let hash = secret.hash();
        let Some(sealed) = self.context.store().take_reveal(&hash, object_id).await? else {
            return Ok(None);
        };
        let opened = self.context.keyring().open(&sealed, &reveal_context(&hash, object_id));
        match opened
            .ok()
            .and_then(|bytes| String::from_utf8(bytes.expose_secret().to_vec()).ok())
        {
            Some(text) => Ok(Some(Revealed(text.into()))),
            None => {
                // Sealed with a key this node no longer has: shown as gone.
                tracing::warn!(object = %object_id, "a secret to show once could not be opened");
                Ok(None)
            }
        }
    }

    /// `POST /v1/portal-sessions`: a one-time link into one workspace's dashboard.
    pub async fn create_portal_link(&self, actor: &Actor, workspace_id: &str) -> Result<PortalLink, AdminError> {
        // Reading the workspace checks that it exists and that the caller may see it.
        self.admin.get_workspace(actor, workspace_id).await?;
        let now = self.context.now();
        self.prune(now).await?;
        let token = BrowserSecret::generate();
        let expires_at = now + self.settings.portal_link_ttl;
        self.context
            .store()
            .insert_portal_link(&token.hash(), workspace_id, expires_at)
            .await?;
        Ok(PortalLink { token, expires_at })
    }

    /// Opens a session bound to the link's workspace; `None` if the link is
    /// unknown, used (on any node) or expired, or its workspace is gone.
    pub async fn redeem_portal_link(
        &self,
        token: &BrowserSecret,
        client_ip: IpAddr,
    ) -> Result<Option<(BrowserSecret, DashboardSession)>, AdminError> {
        let now = self.context.now();
        let Some((workspace_id, expires_at)) = self.context.store().redeem_portal_link(&token.hash()).await? else {
            return Ok(None);
        };
        if now >= expires_at || self.context.store().get_workspace(&workspace_id).await?.is_none() {
            return Ok(None);
        }
        let session_id = self.context.new_id("sess", now);
        let actor = Actor {
            id: format!("portal:{session_id}"),
            ip: Some(client_ip.to_string()),
            scope: ActorScope::Workspace(workspace_id),
            // The provider opened the link for the whole workspace.
            environment: None,
        };
        Ok(Some(self.open(session_id, actor, None, now).await?))
    }
}

/// What seals a secret to show once: it opens only for the same session and object.
fn reveal_context(session_hash: &str, object_id: &str) -> String {
    format!("reveal:{session_hash}:{object_id}")
}

/// The session a stored record and the browser's secret describe.
fn session_of(record: SessionRecord, secret: &BrowserSecret, ip: Option<String>) -> DashboardSession {
    DashboardSession {
        id: record.id,
        actor: Actor {
            id: record.actor_id,
            ip,
            scope: record.workspace_id.map_or(ActorScope::Admin, ActorScope::Workspace),
            environment: record.environment,
        },
        signed_in_with: record.signed_in_with,
        csrf_token: secret.csrf_token(),
        created_at: record.created_at,
        last_seen_at: record.last_seen_at,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn a_session_ends_after_the_idle_timeout_unless_used() {
        let settings = SessionSettings::default();
        let used = t0() + Duration::minutes(29);
        assert!(settings.is_live(t0(), t0(), used));
        // Each use restarts the idle clock.
        assert!(settings.is_live(t0(), used, used + Duration::minutes(29)));
        assert!(!settings.is_live(t0(), used, used + Duration::minutes(30)));
    }

    #[test]
    fn a_busy_session_still_ends_at_its_lifetime() {
        let settings = SessionSettings::default();
        let mut now = t0();
        while now < t0() + Duration::hours(12) - Duration::minutes(10) {
            now += Duration::minutes(10);
            assert!(settings.is_live(t0(), now - Duration::minutes(10), now), "{now}");
        }
        let end = t0() + Duration::hours(12);
        assert!(!settings.is_live(t0(), end - Duration::minutes(1), end));
    }

    #[test]
    fn the_csrf_token_is_the_secret_s_own_and_reveals_nothing_of_it() {
        let secret = BrowserSecret::generate();
        let other = BrowserSecret::generate();
        assert_eq!(
            secret.csrf_token(),
            BrowserSecret::from_presented(secret.expose()).csrf_token()
        );
        assert_ne!(secret.csrf_token(), other.csrf_token());
        assert_ne!(
            secret.csrf_token(),
            secret.hash(),
            "the token is not what the store keeps"
        );
        assert!(!secret.csrf_token().contains(secret.expose()));
        assert_eq!(secret.hash().len(), 64);
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = BrowserSecret::generate();
        assert_eq!(secret.expose().len(), 64);
        assert!(!format!("{secret:?}").contains(secret.expose()));
        let revealed = Revealed("kg_live_secret".to_owned().into());
        assert!(!format!("{revealed:?}").contains("kg_live_secret"));
    }
}
