//! The admin API's JSON shapes. Requests refuse unknown fields; responses
//! never carry a plaintext key except `CreatedKey`, the one response that creates it.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use keygate_core::credits::{CreditSpec, RefillSpec};
use keygate_core::limits::{Enforcement, LimitScope, LimitSpec};
use keygate_core::model::{ApiKey, KeyStatus, OnLeak, Workspace};
use keygate_engine::admin::UsageBucket;
use keygate_engine::CachedKey;
use keygate_store::{AuditEvent, Delivery, Paged, StoredEvent, WebhookEndpoint};
use secrecy::SecretString;
use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::http::grammar;

/// Distinguishes "absent" (`None`) from "null" (`Some(None)`) in PATCH bodies.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A count, also when written with a fraction (`10.0`): JSON Schema, and so
/// the OpenAPI document, counts that as the integer it equals.
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Whole;
    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // 2^64: the first float past u64::MAX.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_any(Whole)
}

/// [`whole_number`], or nothing (`null` or absent).
fn optional_whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] u64);
    Ok(Option::<Whole>::deserialize(d)?.map(|Whole(n)| n))
}

/// A key sent in a request body; `Debug` never prints it and its memory is
/// zeroed when dropped (secrecy).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String)]
pub struct SecretKeyText(pub SecretString);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// What the limit counts; routes name their resource. Default `default`.
    #[serde(default = "default_resource")]
    #[schema(schema_with = grammar::resource)]
    pub resource: String,
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
    pub requests: u64,
    #[schema(schema_with = grammar::window)]
    pub per: String,
    /// `key` (per key lineage, default) or `workspace` (shared).
    #[serde(default)]
    #[schema(value_type = String, pattern = "^(key|workspace)$")]
    pub scope: LimitScope,
    /// `enforce` (default) or `shadow`: counted and reported, never refusing.
    #[serde(default, skip_serializing_if = "Enforcement::is_enforce")]
    #[schema(value_type = String, pattern = "^(enforce|shadow)$")]
    pub mode: Enforcement,
}

fn default_resource() -> String {
    keygate_core::limits::DEFAULT_RESOURCE.to_owned()
}

impl From<Limit> for LimitSpec {
    fn from(l: Limit) -> Self {
        LimitSpec {
            resource: l.resource,
            requests: l.requests,
            per: l.per,
            scope: l.scope,
            mode: l.mode,
        }
    }
}

impl From<&LimitSpec> for Limit {
    fn from(l: &LimitSpec) -> Self {
        Limit {
            resource: l.resource.clone(),
            requests: l.requests,
            per: l.per.clone(),
            scope: l.scope,
            mode: l.mode,
        }
    }
}

/// Usage credits: a balance each admitted request spends its cost from
/// (`USAGE_EXCEEDED` at zero), set back to `refill.amount` every `refill.every`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credits {
    /// The balance from when they are set.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    pub remaining: u64,
    /// Absent or null: never refilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    /// What the balance is set to at each refill (unspent credits do not roll over).
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
    pub amount: u64,
    #[schema(schema_with = grammar::window)]
    pub every: String,
}

impl From<Credits> for CreditSpec {
    fn from(c: Credits) -> Self {
        CreditSpec {
            remaining: c.remaining,
            refill: c.refill.map(|r| RefillSpec {
                amount: r.amount,
                every: r.every,
            }),
        }
    }
}

impl From<&CreditSpec> for Credits {
    fn from(c: &CreditSpec) -> Self {
        Credits {
            remaining: c.remaining,
            refill: c.refill.as_ref().map(|r| Refill {
                amount: r.amount,
                every: r.every.clone(),
            }),
        }
    }
}

fn limits_in(limits: Option<Vec<Limit>>) -> Option<Vec<LimitSpec>> {
    limits.map(|l| l.into_iter().map(LimitSpec::from).collect())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// 1 to 200 characters, not only spaces, no control characters.
    #[schema(schema_with = grammar::name)]
    pub name: String,
    /// One of the configured plans (listed here by the running server).
    pub plan: Option<String>,
    #[serde(default)]
    #[schema(schema_with = grammar::ip_allowlist)]
    pub ip_allowlist: Vec<String>,
    #[serde(default)]
    /// At most 32, no two on one counter (the same resource, window, scope and mode).
    #[schema(max_items = 32)]
    pub limits: Vec<Limit>,
    /// Credits for each of its keys, overriding the plan's.
    pub credits: Option<Credits>,
    /// What a leak report of one of its live keys does: `revoke`, `expire`
    /// (after `leaks.grace`) or `notify`; absent or null: the config's `leaks.on_report`.
    #[schema(value_type = Option<String>, pattern = "^(revoke|expire|notify)$")]
    pub leak_policy: Option<OnLeak>,
}

impl From<CreateWorkspace> for keygate_engine::admin::NewWorkspace {
    fn from(r: CreateWorkspace) -> Self {
        Self {
            name: r.name,
            plan: r.plan,
            ip_allowlist: r.ip_allowlist,
            limits: r.limits.into_iter().map(Into::into).collect(),
            credits: r.credits.map(Into::into),
            leak_policy: r.leak_policy,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkspace {
    #[schema(schema_with = grammar::name_or_null)]
    pub name: Option<String>,
    /// A plan name, or null to clear it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub plan: Option<Option<String>>,
    #[schema(schema_with = grammar::ip_allowlist_or_null)]
    pub ip_allowlist: Option<Vec<String>>,
    /// At most 32, no two on one counter (the same resource, window, scope and mode).
    #[schema(max_items = 32)]
    pub limits: Option<Vec<Limit>>,
    /// Credits for each of its keys, or null to follow the plan's again.
    #[serde(default, deserialize_with = "present")]
    pub credits: Option<Option<Credits>>,
    pub disabled: Option<bool>,
    /// `revoke`, `expire` or `notify`, or null to follow `leaks.on_report` again.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^(revoke|expire|notify)$")]
    pub leak_policy: Option<Option<OnLeak>>,
}

impl From<UpdateWorkspace> for keygate_engine::admin::WorkspacePatch {
    fn from(r: UpdateWorkspace) -> Self {
        Self {
            name: r.name,
            plan: r.plan,
            ip_allowlist: r.ip_allowlist,
            limits: limits_in(r.limits),
            credits: r.credits.map(|c| c.map(Into::into)),
            disabled: r.disabled,
            leak_policy: r.leak_policy,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A descriptive name, e.g. "Production Server": 1 to 200 characters, no control characters.
    #[schema(schema_with = grammar::name)]
    pub name: String,
    /// One of the configured environments; default the first. In the admin
    /// workspace (`ws_admin`) only `admin`, its default, and `admin` nowhere else.
    pub environment: Option<String>,
    #[serde(default)]
    #[schema(schema_with = grammar::scopes)]
    pub scopes: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = grammar::roles)]
    pub roles: Vec<String>,
    /// In the future; exclusive with `expires_in`.
    pub expires_at: Option<DateTime<Utc>>,
    #[schema(schema_with = grammar::expires_in_or_null)]
    pub expires_in: Option<String>,
    #[serde(default)]
    #[schema(schema_with = grammar::ip_allowlist)]
    pub ip_allowlist: Vec<String>,
    /// Yours to use: at most `keys.max_metadata_bytes` (4096) bytes as JSON, no NUL character.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    /// At most 32, no two on one counter (the same resource, window, scope and mode).
    #[schema(max_items = 32)]
    pub limits: Vec<Limit>,
    /// The key's own credits, overriding its workspace's and plan's.
    pub credits: Option<Credits>,
}

impl From<CreateKey> for keygate_engine::admin::NewKey {
    fn from(r: CreateKey) -> Self {
        Self {
            name: r.name,
            environment: r.environment,
            scopes: r.scopes,
            roles: r.roles,
            expires_at: r.expires_at,
            expires_in: r.expires_in,
            ip_allowlist: r.ip_allowlist,
            metadata: r.metadata,
            limits: r.limits.into_iter().map(Into::into).collect(),
            credits: r.credits.map(Into::into),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[schema(schema_with = grammar::name_or_null)]
    pub name: Option<String>,
    #[schema(schema_with = grammar::scopes_or_null)]
    pub scopes: Option<Vec<String>>,
    #[schema(schema_with = grammar::roles_or_null)]
    pub roles: Option<Vec<String>>,
    #[schema(schema_with = grammar::ip_allowlist_or_null)]
    pub ip_allowlist: Option<Vec<String>>,
    /// A time, or null to remove the expiry.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// Yours to use: at most `keys.max_metadata_bytes` (4096) bytes as JSON, no NUL character.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// At most 32, no two on one counter (the same resource, window, scope and mode).
    #[schema(max_items = 32)]
    pub limits: Option<Vec<Limit>>,
    /// Sets the key's credits, a new balance from now; null goes back to its
    /// workspace's or plan's, also from now.
    #[serde(default, deserialize_with = "present")]
    pub credits: Option<Option<Credits>>,
}

impl From<UpdateKey> for keygate_engine::admin::KeyPatch {
    fn from(r: UpdateKey) -> Self {
        Self {
            name: r.name,
            scopes: r.scopes,
            roles: r.roles,
            ip_allowlist: r.ip_allowlist,
            expires_at: r.expires_at,
            metadata: r.metadata,
            limits: limits_in(r.limits),
            credits: r.credits.map(|c| c.map(Into::into)),
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKey {
    /// Kept in the key's record and its audit event.
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    #[schema(schema_with = grammar::grace_or_null)]
    pub grace: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePortalSession {
    /// The workspace the link opens, and the only one its session can see.
    pub workspace_id: String,
}

/// A one-time link into one workspace's dashboard.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalSession {
    /// Open it once, before `expires_at`; it signs the browser in to the workspace.
    pub url: String,
    pub workspace_id: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyKey {
    /// The key to check, as the client sent it.
    pub key: SecretKeyText,
    /// Scopes the operation needs.
    #[serde(default)]
    #[schema(schema_with = grammar::scopes)]
    pub scopes: Vec<String>,
    /// The rate-limit resource the operation counts against (`default`).
    #[schema(schema_with = grammar::resource_or_null)]
    pub resource: Option<String>,
    #[schema(schema_with = grammar::resources_or_null)]
    pub resources: Option<Vec<String>>,
    #[schema(schema_with = grammar::ip_or_null)]
    pub ip: Option<String>,
    /// Check without recording usage.
    #[serde(default)]
    pub dry_run: bool,
    /// What the operation spends of each rate limit, all or nothing, as a
    /// route's `cost` does (1 when absent).
    #[serde(default, deserialize_with = "optional_whole_number")]
    #[schema(minimum = 1_f64, maximum = 9007199254740991_f64)]
    pub cost: Option<u64>,
    /// Refuse as the gateway would: the data plane's error format
    /// (`errors.format`) instead of the envelope, with the same statuses and
    /// headers. For a middleware that passes refusals on to its own clients.
    #[serde(default)]
    pub gateway_errors: bool,
}

/// `GET /v1/keys/changes`: where to start, and how long to wait for a change.
#[derive(Debug, Default, Deserialize)]
pub struct ChangesQuery {
    pub after: Option<String>,
    #[serde(default, deserialize_with = "wait_duration")]
    pub wait: Option<std::time::Duration>,
}

/// The keys whose cached answers must go, since the cursor asked with.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyChangesView {
    /// Ask with this next (`after`).
    pub cursor: String,
    /// Drop every cached answer: the changes cannot be told key by key.
    pub reset: bool,
    /// SHA-256 of each changed key, 64 lowercase hex digits.
    pub key_hashes: Vec<String>,
}

impl From<keygate_engine::admin::KeyChanges> for KeyChangesView {
    fn from(changes: keygate_engine::admin::KeyChanges) -> Self {
        Self {
            cursor: changes.cursor,
            reset: changes.reset,
            key_hashes: changes.keys.iter().map(|hash| hash.to_hex()).collect(),
        }
    }
}

/// `POST /v1/keys/lookup`: which of these key hashes are keys the caller may see.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupKeys {
    /// SHA-256 of each key, as 64 lowercase hex digits: the keys themselves never travel.
    #[schema(max_items = 500, min_items = 1, inline)]
    pub hashes: Vec<HashText>,
}

/// A key's SHA-256, 64 lowercase hex digits.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
pub struct HashText(pub String);

/// A key found by its hash: enough to tell whether it is live, and which it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct FoundKey {
    pub hash: String,
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    /// `active`, `revoked`, `expired` or `deleted`.
    pub status: String,
    pub masked: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub plan: Option<String>,
    pub ip_allowlist: Vec<String>,
    pub limits: Vec<Limit>,
    /// Credits for each of its keys; null: the plan's.
    pub credits: Option<Credits>,
    pub disabled: bool,
    /// `revoke`, `expire` or `notify`; null: the config's `leaks.on_report`.
    #[schema(value_type = Option<String>)]
    pub leak_policy: Option<OnLeak>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Workspace> for WorkspaceView {
    fn from(w: &Workspace) -> Self {
        Self {
            id: w.id.clone(),
            name: w.name.clone(),
            plan: w.plan.clone(),
            ip_allowlist: w.ip_allowlist.to_strings(),
            limits: w.limits.iter().map(Limit::from).collect(),
            credits: w.credits.as_ref().map(Credits::from),
            disabled: w.disabled,
            leak_policy: w.leak_policy,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub environment: String,
    /// `kg_live_AbCd...wxyz`: the first and last four characters of the random part.
    pub masked: String,
    /// `active`, `revoked`, `expired` or `deleted`.
    pub status: String,
    pub scopes: Vec<String>,
    /// Role names; what each grants is the config's `[roles]`.
    pub roles: Vec<String>,
    pub ip_allowlist: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub limits: Vec<Limit>,
    /// The key's own credits as set; null: its workspace's or plan's. Its
    /// balance now is in `whoami` and the verify API.
    pub credits: Option<Credits>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Imported in another system's format: it works with `keys.legacy =
    /// true` only, and is worth rotating to a key of this deployment's.
    pub legacy: bool,
}

impl KeyView {
    pub fn new(k: &ApiKey, now: DateTime<Utc>) -> Self {
        Self {
            id: k.id.clone(),
            workspace_id: k.workspace_id.clone(),
            name: k.name.clone(),
            environment: k.environment.clone(),
            masked: k.hint.clone(),
            status: k.status(now).as_str().to_owned(),
            scopes: k.scopes.clone(),
            roles: k.roles.clone(),
            ip_allowlist: k.ip_allowlist.to_strings(),
            expires_at: k.expires_at,
            metadata: k.metadata.clone(),
            limits: k.limits.iter().map(Limit::from).collect(),
            credits: k.credits.as_ref().map(Credits::from),
            created_at: k.created_at,
            created_by: k.created_by.clone(),
            last_used_at: k.last_used_at,
            last_used_ip: k.last_used_ip.clone(),
            revoked_at: k.revoked_at,
            revoked_reason: k.revoked_reason.clone(),
            rotated_from: k.rotated_from.clone(),
            rotated_to: k.rotated_to.clone(),
            deleted_at: k.deleted_at,
            legacy: k.legacy,
        }
    }

    /// A key the verify path has just admitted, from what its cache entry
    /// keeps (crates/keygate-engine/src/verifier/cached_key.rs): active, so
    /// never revoked or deleted.
    pub fn admitted(key: &CachedKey) -> Self {
        let (last_used_at, last_used_ip) = key.last_used();
        let (rotated_from, rotated_to) = key.rotation();
        Self {
            id: key.id().to_string(),
            workspace_id: key.workspace_id().to_string(),
            name: key.name().to_owned(),
            environment: key.environment().to_owned(),
            masked: key.hint().to_owned(),
            status: KeyStatus::Active.as_str().to_owned(),
            scopes: key.scopes().to_vec(),
            roles: key.roles().to_vec(),
            ip_allowlist: key.access().ip_allowlist().to_strings(),
            expires_at: key.access().expires_at(),
            metadata: key.metadata().clone(),
            limits: key.limits().iter().map(Limit::from).collect(),
            credits: key.own_credits().map(Credits::from),
            created_at: key.created_at(),
            created_by: key.created_by().map(str::to_owned),
            last_used_at,
            last_used_ip: last_used_ip.map(|ip| ip.to_string()),
            revoked_at: None,
            revoked_reason: None,
            rotated_from: rotated_from.map(str::to_owned),
            rotated_to: rotated_to.map(str::to_owned),
            deleted_at: None,
            legacy: key.is_legacy(),
        }
    }
}

/// `POST /v1/workspaces/{id}/keys/import`: keys that already exist
/// elsewhere. Each row is checked on its own: a row that is not valid is
/// refused in the answer's `refused`, with its index, and the others are
/// imported. A key the workspace already holds is counted in `existing`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportKeys {
    /// Take keys that are not in this deployment's format even if this node
    /// does not verify them yet (`keys.legacy = false`): for importing before
    /// switching legacy keys on.
    #[serde(default)]
    pub legacy: bool,
    #[schema(min_items = 1, max_items = 1000)]
    pub keys: Vec<ImportKey>,
}

/// One key to import: `key` or `hash`, not both.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportKey {
    /// The key as clients send it: this deployment's format, or (a legacy
    /// key) 8 to 256 printable ASCII characters without spaces.
    #[schema(value_type = Option<String>)]
    pub key: Option<SecretKeyText>,
    /// The key's SHA-256, when only that is known: 64 hex digits, or base64
    /// (standard or URL-safe, padded or not). Imported as a legacy key.
    pub hash: Option<String>,
    /// How lists show a hash-only key: 1 to 64 printable ASCII characters.
    /// Default: `sha256:` and the start of the hash.
    pub hint: Option<String>,
    /// 1 to 200 characters, no control characters.
    pub name: String,
    /// One of the configured environments; a key in this deployment's format has its own.
    pub environment: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A key whose expiry has passed is imported as expired.
    pub expires_at: Option<DateTime<Utc>>,
    /// At most `keys.max_metadata_bytes` (4096) bytes as JSON.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

impl From<ImportKey> for keygate_engine::admin::ImportRow {
    fn from(r: ImportKey) -> Self {
        Self {
            key: r.key.map(|key| key.0),
            hash: r.hash,
            hint: r.hint,
            name: r.name,
            environment: r.environment,
            scopes: r.scopes,
            expires_at: r.expires_at,
            metadata: r.metadata,
        }
    }
}

/// What an import call did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportedKeys {
    /// Keys added.
    pub imported: u64,
    /// Of those, keys in another system's format.
    pub legacy: u64,
    /// Rows whose key the workspace already held: a re-run adds nothing.
    pub existing: u64,
    /// Rows not imported, by their index in `keys`.
    pub refused: Vec<RefusedRow>,
    /// Whether this node verifies legacy keys now (`keys.legacy`).
    pub legacy_keys_verified: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RefusedRow {
    /// Index in the request's `keys`, from 0.
    pub row: usize,
    /// The row's field at fault.
    pub field: String,
    pub message: String,
}

impl ImportedKeys {
    pub fn new(report: keygate_engine::admin::ImportReport, legacy_keys_verified: bool) -> Self {
        Self {
            imported: report.imported,
            legacy: report.legacy,
            existing: report.existing,
            refused: report
                .refused
                .into_iter()
                .map(|r| RefusedRow {
                    row: r.row,
                    field: r.field,
                    message: r.message,
                })
                .collect(),
            legacy_keys_verified,
        }
    }
}

/// The one response that carries a key's plaintext. It is not stored anywhere.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key itself. Shown once: store it now.
    pub key: String,
    #[serde(flatten)]
    pub details: KeyView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceSummary {
    pub id: String,
    pub name: String,
    pub plan: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResult {
    pub valid: bool,
    pub key: KeyView,
    pub workspace: WorkspaceSummary,
    pub ratelimit: RateLimitView,
    /// The key's balance after this check; absent when it has no credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits: Option<crate::http::ratelimit::CreditsView>,
}

impl VerifyResult {
    /// The verify API's answer for an admitted key (and the embedded
    /// layer's, crates/keygate-server/src/embedded.rs).
    pub fn of(verified: &keygate_engine::Verified) -> Self {
        let cached = &verified.key;
        Self {
            valid: true,
            key: KeyView::admitted(cached),
            workspace: WorkspaceSummary {
                id: cached.workspace().id.clone(),
                name: cached.workspace().name.clone(),
                plan: cached.workspace().plan.clone(),
            },
            ratelimit: RateLimitView {
                limits: verified
                    .limits
                    .as_ref()
                    .map(crate::http::ratelimit::views)
                    .unwrap_or_default(),
            },
            credits: verified.limits.as_ref().and_then(crate::http::ratelimit::credits_view),
        }
    }
}

/// The key's limits for the checked resource, after this check.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitView {
    pub limits: Vec<crate::http::ratelimit::LimitView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventView {
    pub id: String,
    pub at: DateTime<Utc>,
    /// A key id, `cli`, or a dashboard session.
    pub actor: String,
    pub actor_ip: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub workspace_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: Value,
}

impl From<&AuditEvent> for AuditEventView {
    fn from(e: &AuditEvent) -> Self {
        Self {
            id: e.id.clone(),
            at: e.at,
            actor: e.actor.clone(),
            actor_ip: e.actor_ip.clone(),
            action: e.action.clone(),
            object_type: e.object_type.clone(),
            object_id: e.object_id.clone(),
            workspace_id: e.workspace_id.clone(),
            details: e.details.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsagePoint {
    pub start: DateTime<Utc>,
    pub total: u64,
    /// Requests by outcome: `admitted` or the rejection's error code.
    pub outcomes: BTreeMap<String, u64>,
}

impl From<&UsageBucket> for UsagePoint {
    fn from(b: &UsageBucket) -> Self {
        Self {
            start: b.start,
            total: b.outcomes.values().sum(),
            outcomes: b.outcomes.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyUsage {
    pub key_id: String,
    pub granularity: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub data: Vec<UsagePoint>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceUsage {
    pub workspace_id: String,
    pub granularity: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub data: Vec<UsagePoint>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TopKeysQuery {
    /// `1d` (today), `7d` (default) or `30d`: whole UTC days, today included.
    pub window: Option<String>,
    /// `requests` (default) or `rejections` (every outcome but `admitted`).
    pub by: Option<String>,
    /// 1 to 100; default 10.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopKey {
    pub key_id: String,
    pub name: String,
    pub requests: u64,
    pub rejected: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopKeys {
    pub workspace_id: String,
    pub window: String,
    pub by: String,
    /// The first day counted (00:00 UTC).
    pub since: DateTime<Utc>,
    pub data: Vec<TopKey>,
}

/// Every error of the admin API.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub success: bool,
    pub status: u16,
    /// A stable code such as `VALIDATION_ERROR` or `NOT_FOUND`.
    pub code: String,
    pub message: String,
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// One page of any list, and where the next one starts (`None` on the last).
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> List<T> {
    /// The page the store returned, each item as the API shows it.
    pub fn of<'a, S: 'a>(paged: &'a Paged<S>) -> Self
    where
        T: From<&'a S>,
    {
        Self {
            data: paged.items.iter().map(T::from).collect(),
            next_cursor: paged.next_cursor.clone(),
        }
    }
}

/// `limit` and `cursor` of every list call, read by the `Pagination` extractor
/// (crates/keygate-server/src/http/extract.rs).
#[derive(Debug, Deserialize, ToSchema)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct KeyListQuery {
    /// `active`, `revoked`, `expired` or `deleted`; default all but deleted.
    pub status: Option<String>,
    pub environment: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AuditQuery {
    pub workspace_id: Option<String>,
    pub key_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UsageQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// `minute` (default), `hour` or `day`.
    pub granularity: Option<String>,
}

// ----- events and webhooks -----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    #[schema(schema_with = grammar::webhook_url_text)]
    pub url: String,
    /// The workspace whose events it receives; absent for every workspace's
    /// (admin keys only).
    pub workspace_id: Option<String>,
    #[serde(default)]
    #[schema(schema_with = grammar::event_types)]
    pub events: Vec<String>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

impl From<CreateWebhook> for keygate_engine::webhooks::NewWebhook {
    fn from(w: CreateWebhook) -> Self {
        Self {
            url: w.url,
            workspace_id: w.workspace_id,
            events: w.events,
            description: w.description,
        }
    }
}

/// A webhook endpoint. Its signing secret is shown only when it is created.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub workspace_id: Option<String>,
    /// The event types it receives; empty means all.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

impl From<&WebhookEndpoint> for WebhookView {
    fn from(w: &WebhookEndpoint) -> Self {
        Self {
            id: w.id.clone(),
            url: w.url.clone(),
            workspace_id: w.workspace_id.clone(),
            events: w.events.names(),
            description: w.description.clone(),
            created_at: w.created_at,
            created_by: w.created_by.clone(),
        }
    }
}

/// A new endpoint with its signing secret: the only response that carries it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// `whsec_...`: verify deliveries with it (Standard Webhooks). Shown once.
    pub secret: String,
    #[serde(flatten)]
    pub webhook: WebhookView,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct WebhookListQuery {
    pub workspace_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status; absent when no answer came.
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One event on its way to one endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    /// The `webhook-id` header of every attempt.
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempts: Vec<AttemptView>,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        Self {
            id: d.id.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            status: d.status.as_str().to_owned(),
            created_at: d.created_at,
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
            attempts: d
                .attempts
                .iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    at: a.at,
                    status_code: a.status_code,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
        }
    }
}

/// An event from the outbox, as its webhooks receive it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: DateTime<Utc>,
    pub workspace_id: Option<String>,
    /// The body every delivery sends: `{type, timestamp, data}`.
    #[schema(value_type = Object)]
    pub payload: Value,
}

impl From<&StoredEvent> for EventView {
    fn from(e: &StoredEvent) -> Self {
        Self {
            id: e.id.clone(),
            kind: e.kind.clone(),
            at: e.at,
            workspace_id: e.workspace_id.clone(),
            payload: serde_json::from_str(&e.body).unwrap_or(Value::Null),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EventQuery {
    pub workspace_id: Option<String>,
    pub key_id: Option<String>,
}

/// `POST /v1/config/reload`: the config now in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigReloaded {
    /// Always `reloaded`.
    pub status: &'static str,
    /// The live fields whose values changed (`routes`, `plans`, `limiter.default_plan`, `errors`, `headers`).
    pub changed: Vec<&'static str>,
    /// How many routes the gateway has now.
    pub routes: usize,
}

// ----- nodes and receipts -----

/// `?wait=2s` on a change that can make a cached key decide differently
/// (revoke, rotate, delete; a workspace's change or deletion): answer once
/// every live node has confirmed it, or when the wait ends.
#[derive(Debug, Default, Deserialize)]
pub struct WaitQuery {
    #[serde(default, deserialize_with = "wait_duration")]
    pub wait: Option<std::time::Duration>,
}

/// `0`, `1ms` to `9999ms`, or `1s` to `10s` (crates/keygate-core/src/grammar.rs, `WAIT`).
fn wait_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(d)?;
    keygate_core::duration::parse_wait(&text)
        .map(Some)
        .ok_or_else(|| de::Error::custom("must be 0, 1ms to 9999ms, or 1s to 10s"))
}

/// Which live nodes confirmed a change: `confirmed` of `nodes`, the slowest
/// in `slowest_ms` from when the change was answered (this node's is 0),
/// and the ids of those that did not confirm within the wait.
#[derive(Debug, Serialize, ToSchema)]
pub struct PropagationView {
    pub nodes: usize,
    pub confirmed: usize,
    pub slowest_ms: u64,
    pub unconfirmed: Vec<String>,
}

impl From<keygate_engine::nodes::Receipt> for PropagationView {
    fn from(receipt: keygate_engine::nodes::Receipt) -> Self {
        Self {
            nodes: receipt.nodes,
            confirmed: receipt.confirmed,
            slowest_ms: receipt.slowest_ms,
            unconfirmed: receipt.unconfirmed,
        }
    }
}

/// A change's answer, with its receipt when `?wait` asked for one.
#[derive(Debug, Serialize, ToSchema)]
pub struct Propagated<T: ToSchema> {
    #[serde(flatten)]
    pub result: T,
    /// Present when the call had `?wait`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<PropagationView>,
}

/// The answer of a workspace deletion with `?wait` (without it: 204).
#[derive(Debug, Serialize, ToSchema)]
pub struct PropagationOnly {
    pub propagation: PropagationView,
}

/// A node of the deployment, as its last heartbeat described it.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub version: String,
    pub gateway_addr: String,
    pub admin_addr: String,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    /// `listening`, `not_listening` or `not_needed` (one node on SQLite).
    pub hearing: String,
    /// Keys in its cache.
    pub cache_size: u64,
    /// The node that answered this call.
    pub this_node: bool,
}

impl NodeView {
    pub fn new(node: keygate_store::NodeRecord, this_node: &str) -> Self {
        Self {
            this_node: node.id == this_node,
            id: node.id,
            version: node.version,
            gateway_addr: node.gateway_addr,
            admin_addr: node.admin_addr,
            started_at: node.started_at,
            last_heartbeat: node.last_heartbeat,
            hearing: node.hearing,
            cache_size: node.cache_size,
        }
    }
}
