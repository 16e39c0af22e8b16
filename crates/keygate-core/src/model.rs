//! Workspaces and keys as the domain sees them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credits::CreditSpec;
use crate::id::ADMIN_WORKSPACE_ID;
use crate::ip::IpAllowlist;
use crate::key::KeyHash;
use crate::limits::LimitSpec;

/// A customer team. Its allowlist applies to all its keys, in addition to each key's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub plan: Option<String>,
    pub ip_allowlist: IpAllowlist,
    pub limits: Vec<LimitSpec>,
    /// Credits for each of its keys, overriding the plan's; a key's own win.
    pub credits: Option<CreditSpec>,
    pub disabled: bool,
    /// What a leak report of one of its live keys does; `None`: the config's.
    pub leak_policy: Option<OnLeak>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a report that a live key leaked does (`leaks.on_report`, and per
/// workspace): revoke it at once, let it expire after `leaks.grace`, or only
/// notify (the audit and webhook events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLeak {
    Revoke,
    Expire,
    Notify,
}

impl OnLeak {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Expire => "expire",
            Self::Notify => "notify",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Revoke, Self::Expire, Self::Notify]
            .into_iter()
            .find(|policy| policy.as_str() == text)
    }
}

impl Workspace {
    pub fn is_admin(&self) -> bool {
        self.id == ADMIN_WORKSPACE_ID
    }
}

/// A stored key. It holds the hash, never the plaintext.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub workspace_id: String,
    /// The first key of a rotation chain; rate-limit counters are kept per lineage.
    pub lineage_id: String,
    pub name: String,
    pub environment: String,
    pub hash: KeyHash,
    /// `kg_live_AbCd...wxyz`.
    pub hint: String,
    pub scopes: Vec<String>,
    /// Role names from the config's `[roles]` (crates/keygate-core/src/role.rs).
    pub roles: Vec<String>,
    pub ip_allowlist: IpAllowlist,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub limits: Vec<LimitSpec>,
    /// The key's own credits, overriding its workspace's and plan's.
    pub credits: Option<CreditSpec>,
    /// When the credits were last set; `None`: when the lineage began. The
    /// balance's refill periods count from here (crates/keygate-core/src/credits.rs).
    pub credits_set_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Imported from another system and not in this deployment's format
    /// (crates/keygate-core/src/legacy.rs): verified only with
    /// `keys.legacy = true`, and worth rotating to a key of keygate's own.
    pub legacy: bool,
}

/// What a person sees in the key list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
    Deleted,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Revoked, Self::Expired, Self::Deleted]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

impl ApiKey {
    pub fn status(&self, now: DateTime<Utc>) -> KeyStatus {
        if self.deleted_at.is_some() {
            KeyStatus::Deleted
        } else if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.is_expired(now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// Where the key's credit periods start: when its credits were set, or
    /// else when it was created.
    pub fn credits_origin(&self) -> DateTime<Utc> {
        self.credits_set_at.unwrap_or(self.created_at)
    }

    /// A key expires at `expires_at` exactly: at that instant it no longer works.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}
