//! The admin API's requests and answers, as the OpenAPI document
//! (`/openapi.json`) describes them; `tests/client/document.rs` checks each
//! field against the document a real node serves. Answers ignore fields
//! they do not name, so a newer keygate can add some.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/workspaces`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewWorkspace {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_allowlist: Vec<String>,
}

/// A workspace: a customer team.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub plan: Option<String>,
    pub ip_allowlist: Vec<String>,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/workspaces/{id}/keys`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewKey {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// `90d`, `1h`: when the key stops working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_allowlist: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// A key as the admin API shows it: never its plaintext.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Key {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub environment: String,
    /// `kg_live_AbCd...wxyz`.
    pub masked: String,
    /// `active`, `revoked`, `expired` or `deleted`.
    pub status: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub ip_allowlist: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    /// Imported in another system's format.
    pub legacy: bool,
}

/// A new key (created or rotated): the one answer that carries its plaintext.
#[derive(Clone, Deserialize)]
pub struct CreatedKey {
    /// The key itself, shown once: give it to its holder now.
    pub key: secrecy::SecretString,
    #[serde(flatten)]
    pub details: Key,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("details", &self.details)
            .finish_non_exhaustive()
    }
}

/// A page of a list; pass `next_cursor` back for the next one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `POST /v1/keys/verify`: the gateway's decision for a key, asked by a
/// service that does not sit behind the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct Verify {
    /// The key as the client sent it.
    #[serde(serialize_with = "expose")]
    pub key: secrecy::SecretString,
    /// Scopes the operation needs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The rate-limit resource it counts against (`default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The end client's address, checked against allowlists (a key with an
    /// allowlist is refused without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Decide without charging limits or recording usage.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Refusals in the deployment's error format instead of the envelope
    /// (set by [`crate::Client::verify_as_gateway`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gateway_errors: bool,
}

impl Verify {
    /// A check of `key` with no scope, on the default resource.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: secrecy::SecretString::from(key.into()),
            scopes: Vec::new(),
            resource: None,
            ip: None,
            dry_run: false,
            gateway_errors: false,
        }
    }
}

fn expose<S: serde::Serializer>(key: &secrecy::SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secrecy::ExposeSecret::expose_secret(key))
}

/// A key keygate admitted, with what it is allowed and has left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verified {
    pub valid: bool,
    pub key: VerifiedKey,
    pub workspace: WorkspaceSummary,
    pub ratelimit: RateLimits,
}

/// The admitted key, as a handler sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifiedKey {
    pub id: String,
    pub name: String,
    pub environment: String,
    pub masked: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub metadata: Map<String, Value>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceSummary {
    pub id: String,
    pub name: String,
    pub plan: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RateLimits {
    pub limits: Vec<LimitState>,
}

/// One limit after this request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LimitState {
    pub resource: String,
    pub limit: u64,
    /// `1m`, `1h`, ...
    pub window: String,
    pub remaining: u64,
    /// Unix seconds at which it next regains capacity.
    pub reset: u64,
}

/// What keygate's node dropped from its cache since a cursor
/// (`GET /v1/keys/changes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyChanges {
    /// Ask with this next.
    pub cursor: String,
    /// Drop every cached answer: the changes cannot be told key by key.
    pub reset: bool,
    /// SHA-256 of each changed key, as 64 lowercase hex digits.
    pub key_hashes: Vec<String>,
}
