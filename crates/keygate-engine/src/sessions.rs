//! Dashboard sessions and portal links.
//!
//! A session is opened by signing in with an admin key (or a workspace key
//! holding `keys:manage`), or by redeeming a portal link that the provider's
//! own app created for one workspace. The browser holds a random secret in a
//! cookie; this table holds only its SHA-256, like keys in the store.
//!
//! Sessions live in this node's memory: they end when the node restarts, and
//! a deployment of several nodes routes a browser to one node (see
//! `docs/decisions.md`). The table itself is pure: every method takes `now`.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use keygate_core::model::KeyStatus;
use keygate_core::PlaintextKey;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use std::sync::Arc;

use crate::admin::{Actor, ActorScope, Admin};
use crate::context::Context;
use crate::verifier::Rejection;
use crate::AdminError;

/// Most sessions (and, separately, unredeemed portal links) one node keeps;
/// the oldest is dropped first, so a flood of sign-ins cannot exhaust memory.
const MAX_ENTRIES: usize = 10_000;

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

    fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.expose().as_bytes()).into()
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

struct SessionEntry {
    session: DashboardSession,
    /// Plaintext keys waiting to be shown once, by key id.
    reveals: Vec<(String, Revealed)>,
}

/// A secret shown once, on the next view of its page: a new key's
/// plaintext or a new webhook's signing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revealed {
    Key(PlaintextKey),
    WebhookSecret(keygate_core::webhook::WebhookSecret),
}

impl Revealed {
    pub fn expose(&self) -> String {
        match self {
            Self::Key(plaintext) => plaintext.expose().to_owned(),
            Self::WebhookSecret(secret) => secret.expose(),
        }
    }
}

impl From<PlaintextKey> for Revealed {
    fn from(plaintext: PlaintextKey) -> Self {
        Self::Key(plaintext)
    }
}

impl From<keygate_core::webhook::WebhookSecret> for Revealed {
    fn from(secret: keygate_core::webhook::WebhookSecret) -> Self {
        Self::WebhookSecret(secret)
    }
}

struct PortalGrant {
    workspace_id: String,
    expires_at: DateTime<Utc>,
}

/// A portal link as the API returns it.
#[derive(Debug, Clone)]
pub struct PortalLink {
    pub token: BrowserSecret,
    pub expires_at: DateTime<Utc>,
}

/// The session table of one node. Pure: time comes in as `now`.
pub struct SessionTable {
    settings: SessionSettings,
    sessions: Mutex<HashMap<[u8; 32], SessionEntry>>,
    portal_links: Mutex<HashMap<[u8; 32], PortalGrant>>,
}

impl SessionTable {
    pub fn new(settings: SessionSettings) -> Self {
        Self {
            settings,
            sessions: Mutex::new(HashMap::new()),
            portal_links: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> SessionSettings {
        self.settings
    }

    pub fn open(
        &self,
        id: String,
        actor: Actor,
        signed_in_with: Option<String>,
        now: DateTime<Utc>,
    ) -> (BrowserSecret, DashboardSession) {
        let secret = BrowserSecret::generate();
        let session = DashboardSession {
            id,
            actor,
            signed_in_with,
            csrf_token: random_token(),
            created_at: now,
            last_seen_at: now,
        };
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, entry| self.is_live(&entry.session, now));
        if sessions.len() >= MAX_ENTRIES {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, e)| e.session.created_at)
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            secret.digest(),
            SessionEntry {
                session: session.clone(),
                reveals: Vec::new(),
            },
        );
        (secret, session)
    }

    /// The live session a cookie names, marked as seen now. An expired one is removed.
    pub fn find(&self, secret: &BrowserSecret, now: DateTime<Utc>) -> Option<DashboardSession> {
        let mut sessions = self.sessions.lock();
        let digest = secret.digest();
        let entry = sessions.get_mut(&digest)?;
        if !self.is_live(&entry.session, now) {
            sessions.remove(&digest);
            return None;
        }
        entry.session.last_seen_at = now;
        Some(entry.session.clone())
    }

    pub fn close(&self, secret: &BrowserSecret) {
        self.sessions.lock().remove(&secret.digest());
    }

    fn is_live(&self, session: &DashboardSession, now: DateTime<Utc>) -> bool {
        now < session.last_seen_at + self.settings.idle_timeout && now < session.created_at + self.settings.lifetime
    }

    /// Keeps a new key's plaintext until the page that shows it once asks for it.
    pub fn hold_reveal(&self, secret: &BrowserSecret, key_id: &str, plaintext: impl Into<Revealed>) {
        if let Some(entry) = self.sessions.lock().get_mut(&secret.digest()) {
            entry.reveals.retain(|(id, _)| id != key_id);
            entry.reveals.push((key_id.to_owned(), plaintext.into()));
        }
    }

    /// The held plaintext of `key_id`, removed: a second call (a reload) gets nothing.
    pub fn take_reveal(&self, secret: &BrowserSecret, key_id: &str) -> Option<Revealed> {
        let mut sessions = self.sessions.lock();
        let entry = sessions.get_mut(&secret.digest())?;
        let position = entry.reveals.iter().position(|(id, _)| id == key_id)?;
        Some(entry.reveals.remove(position).1)
    }

    pub fn issue_portal_link(&self, workspace_id: &str, now: DateTime<Utc>) -> PortalLink {
        let token = BrowserSecret::generate();
        let expires_at = now + self.settings.portal_link_ttl;
        let mut links = self.portal_links.lock();
        links.retain(|_, grant| now < grant.expires_at);
        if links.len() >= MAX_ENTRIES {
            if let Some(first) = links.iter().min_by_key(|(_, g)| g.expires_at).map(|(k, _)| *k) {
                links.remove(&first);
            }
        }
        links.insert(
            token.digest(),
            PortalGrant {
                workspace_id: workspace_id.to_owned(),
                expires_at,
            },
        );
        PortalLink { token, expires_at }
    }

    /// The workspace of a live portal link, which is used up by this call.
    pub fn redeem_portal_link(&self, token: &BrowserSecret, now: DateTime<Utc>) -> Option<String> {
        let grant = self.portal_links.lock().remove(&token.digest())?;
        (now < grant.expires_at).then_some(grant.workspace_id)
    }
}

/// Why a browser has no usable session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session, or it has ended")]
    SignedOut,
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Dashboard sessions and portal links: the table, and the admin checks
/// that open and keep a session. UI state, kept here until the store holds
/// it (issue 18, docs/decisions.md).
pub struct Sessions {
    context: Arc<Context>,
    table: SessionTable,
    admin: Arc<Admin>,
}

impl Sessions {
    pub(crate) fn new(context: Arc<Context>, settings: SessionSettings, admin: Arc<Admin>) -> Self {
        Self {
            context,
            table: SessionTable::new(settings),
            admin,
        }
    }

    pub fn table(&self) -> &SessionTable {
        &self.table
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
        Ok(self.table.open(session_id, actor, Some(key_id), now))
    }

    /// The session a cookie names, as seen from `client_ip`. A session opened
    /// with a key ends as soon as that key is revoked, expired or deleted.
    pub async fn session(&self, secret: &BrowserSecret, client_ip: IpAddr) -> Result<DashboardSession, SessionError> {
        let now = self.context.now();
        let mut session = self.table.find(secret, now).ok_or(SessionError::SignedOut)?;
        if let Some(key_id) = &session.signed_in_with {
            let key = self.context.store().get_key(key_id).await.map_err(AdminError::from)?;
            if key.is_none_or(|key| key.status(now) != KeyStatus::Active) {
                self.table.close(secret);
                return Err(SessionError::SignedOut);
            }
        }
        session.actor.ip = Some(client_ip.to_string());
        Ok(session)
    }

    /// `POST /v1/portal-sessions`: a one-time link into one workspace's dashboard.
    pub async fn create_portal_link(&self, actor: &Actor, workspace_id: &str) -> Result<PortalLink, AdminError> {
        // Reading the workspace checks that it exists and that the caller may see it.
        self.admin.get_workspace(actor, workspace_id).await?;
        Ok(self.table.issue_portal_link(workspace_id, self.context.now()))
    }

    /// Opens a session bound to the link's workspace; `None` if the link is
    /// unknown, used or expired, or its workspace is gone.
    pub async fn redeem_portal_link(
        &self,
        token: &BrowserSecret,
        client_ip: IpAddr,
    ) -> Result<Option<(BrowserSecret, DashboardSession)>, AdminError> {
        let now = self.context.now();
        let Some(workspace_id) = self.table.redeem_portal_link(token, now) else {
            return Ok(None);
        };
        if self.context.store().get_workspace(&workspace_id).await?.is_none() {
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
        Ok(Some(self.table.open(session_id, actor, None, now)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table() -> SessionTable {
        SessionTable::new(SessionSettings::default())
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn operator() -> Actor {
        Actor {
            id: "dashboard:key_1".into(),
            ip: None,
            scope: ActorScope::Admin,
            environment: None,
        }
    }

    #[test]
    fn a_session_ends_after_the_idle_timeout_unless_used() {
        let sessions = table();
        let (secret, _) = sessions.open("sess_1".into(), operator(), None, t0());
        let used = t0() + Duration::minutes(29);
        assert!(sessions.find(&secret, used).is_some());
        // Each use restarts the idle clock.
        assert!(sessions.find(&secret, used + Duration::minutes(29)).is_some());
        assert!(sessions
            .find(&secret, used + Duration::minutes(29) + Duration::minutes(30))
            .is_none());
        // Once ended, it stays ended.
        assert!(sessions.find(&secret, used).is_none());
    }

    #[test]
    fn a_busy_session_still_ends_at_its_lifetime() {
        let sessions = table();
        let (secret, _) = sessions.open("sess_1".into(), operator(), None, t0());
        let mut now = t0();
        while now < t0() + Duration::hours(12) - Duration::minutes(10) {
            now += Duration::minutes(10);
            assert!(sessions.find(&secret, now).is_some(), "{now}");
        }
        assert!(sessions.find(&secret, t0() + Duration::hours(12)).is_none());
    }

    #[test]
    fn only_the_secret_finds_a_session_and_closing_ends_it() {
        let sessions = table();
        let (secret, session) = sessions.open("sess_1".into(), operator(), None, t0());
        assert_eq!(sessions.find(&secret, t0()).unwrap().id, session.id);
        assert!(sessions
            .find(&BrowserSecret::from_presented(&session.csrf_token), t0())
            .is_none());
        assert!(sessions.find(&BrowserSecret::from_presented(""), t0()).is_none());
        sessions.close(&secret);
        assert!(sessions.find(&secret, t0()).is_none());
    }

    #[test]
    fn a_reveal_is_taken_once() {
        let sessions = table();
        let (secret, _) = sessions.open("sess_1".into(), operator(), None, t0());
        let (other, _) = sessions.open("sess_2".into(), operator(), None, t0());
        let format = keygate_core::KeyFormat::new("kg", &["live".to_owned()]).unwrap();
        let plaintext = format.generate("live", &mut rand::thread_rng()).unwrap();
        sessions.hold_reveal(&secret, "key_1", plaintext.clone());
        assert!(sessions.take_reveal(&other, "key_1").is_none());
        assert!(sessions.take_reveal(&secret, "key_2").is_none());
        assert_eq!(sessions.take_reveal(&secret, "key_1"), Some(Revealed::Key(plaintext)));
        assert!(sessions.take_reveal(&secret, "key_1").is_none());
    }

    #[test]
    fn a_portal_link_is_redeemed_once_and_only_before_it_expires() {
        let sessions = table();
        let link = sessions.issue_portal_link("ws_1", t0());
        assert_eq!(link.expires_at, t0() + Duration::minutes(10));
        assert_eq!(sessions.redeem_portal_link(&link.token, t0()).as_deref(), Some("ws_1"));
        assert_eq!(sessions.redeem_portal_link(&link.token, t0()), None);

        let late = sessions.issue_portal_link("ws_1", t0());
        assert_eq!(sessions.redeem_portal_link(&late.token, link.expires_at), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = BrowserSecret::generate();
        assert_eq!(secret.expose().len(), 64);
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }
}
