//! A key as the verify path keeps it: what a decision reads, laid out
//! together, and the rest of its row boxed apart for the views that show it.
//!
//! Memory per cached key is a goal of its own (BENCHMARKS.md, "Memory per
//! cached key"): a node holds up to `cache.capacity` of these, and every
//! request reads one. The whole `ApiKey` row was 504 bytes inline plus about
//! ten strings; a decision reads five of its fields.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keygate_core::credits::CreditSpec;
use keygate_core::limits::LimitSpec;
use keygate_core::model::{ApiKey, Workspace};
use keygate_core::KeyAccess;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use smallvec::SmallVec;

use super::MemoizedChecks;
use crate::usage::{KeyTally, Tallied};

/// A key and its workspace as the verify path needs them.
#[derive(Debug)]
pub struct CachedKey {
    id: Arc<str>,
    /// The same `Arc` as `id` for a key that was never rotated.
    lineage_id: Arc<str>,
    workspace: SharedWorkspace,
    environment: Box<str>,
    access: KeyAccess,
    limits: Box<[LimitSpec]>,
    /// When the store last confirmed this key (Unix ms, engine clock).
    loaded_at_ms: i64,
    /// Limit checks per resource list, computed on first use for one
    /// generation of plans (crates/keygate-engine/src/verifier/limits.rs).
    /// Most keys see one list: it is kept inline.
    pub(crate) limit_checks: Mutex<(u64, SmallVec<[MemoizedChecks; 1]>)>,
    /// Usage counted since the last flush.
    usage: KeyTally,
    profile: Box<KeyProfile>,
}

/// A workspace and its id as an `Arc<str>`, both shared by the cached keys
/// of the workspace (`WorkspaceShare` in crates/keygate-engine/src/verifier/mod.rs).
#[derive(Debug, Clone)]
pub(crate) struct SharedWorkspace {
    pub(crate) workspace: Arc<Workspace>,
    pub(crate) id: Arc<str>,
}

impl SharedWorkspace {
    pub(crate) fn new(workspace: Workspace) -> Self {
        let id = Arc::from(workspace.id.as_str());
        Self {
            workspace: Arc::new(workspace),
            id,
        }
    }
}

/// The fields of the row no decision reads, shown by `whoami` and the
/// verify API's key view. A view is only made of an admitted key, so the
/// revocation and deletion times (always empty there) and the hash (never
/// shown) are not kept.
#[derive(Debug)]
struct KeyProfile {
    name: Box<str>,
    hint: Box<str>,
    metadata: Map<String, Value>,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    created_by: Option<Box<str>>,
    last_used_ip: Option<Box<str>>,
    rotated_from: Option<Box<str>>,
    rotated_to: Option<Box<str>>,
    /// The key's own credits (read once per memoized limit set).
    credits: Option<Box<CreditSpec>>,
    /// Where its credit periods start (`ApiKey::credits_origin`), Unix ms.
    credits_origin_ms: i64,
    /// Imported, not in this deployment's format (`ApiKey::legacy`).
    legacy: bool,
}

fn boxed(text: Option<String>) -> Option<Box<str>> {
    text.map(String::into_boxed_str)
}

impl CachedKey {
    /// Takes the row apart; `workspace` is the shared copy of its workspace.
    pub(crate) fn new(key: ApiKey, workspace: SharedWorkspace, loaded_at: DateTime<Utc>) -> Self {
        let credits_origin_ms = key.credits_origin().timestamp_millis();
        let id: Arc<str> = Arc::from(key.id);
        let lineage_id = if *key.lineage_id == *id {
            id.clone()
        } else {
            Arc::from(key.lineage_id)
        };
        let revoked = key.revoked_at.is_some() || key.deleted_at.is_some();
        Self {
            id,
            lineage_id,
            workspace,
            environment: key.environment.into_boxed_str(),
            access: KeyAccess::new(revoked, key.expires_at, key.ip_allowlist, key.scopes, key.roles),
            limits: key.limits.into_boxed_slice(),
            loaded_at_ms: loaded_at.timestamp_millis(),
            limit_checks: Mutex::new((0, SmallVec::new())),
            usage: KeyTally::default(),
            profile: Box::new(KeyProfile {
                name: key.name.into_boxed_str(),
                hint: key.hint.into_boxed_str(),
                metadata: key.metadata,
                created_at: key.created_at,
                last_used_at: key.last_used_at,
                created_by: boxed(key.created_by),
                last_used_ip: boxed(key.last_used_ip),
                rotated_from: boxed(key.rotated_from),
                rotated_to: boxed(key.rotated_to),
                credits: key.credits.map(Box::new),
                credits_origin_ms,
                legacy: key.legacy,
            }),
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The first key of its rotation chain: rate-limit counters are kept per lineage.
    pub fn lineage_id(&self) -> &Arc<str> {
        &self.lineage_id
    }

    pub fn workspace(&self) -> &Arc<Workspace> {
        &self.workspace.workspace
    }

    pub fn workspace_id(&self) -> &Arc<str> {
        &self.workspace.id
    }

    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// What the access checks read: state, expiry, allowlist, scopes.
    pub fn access(&self) -> &KeyAccess {
        &self.access
    }

    pub fn scopes(&self) -> &[String] {
        self.access.scopes()
    }

    pub fn roles(&self) -> &[String] {
        self.access.roles()
    }

    /// The key's own limit overrides.
    pub fn limits(&self) -> &[LimitSpec] {
        &self.limits
    }

    pub fn name(&self) -> &str {
        &self.profile.name
    }

    /// `kg_live_AbCd...wxyz`.
    pub fn hint(&self) -> &str {
        &self.profile.hint
    }

    /// Imported from another system (crates/keygate-core/src/legacy.rs).
    pub fn is_legacy(&self) -> bool {
        self.profile.legacy
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        self.profile.created_at
    }

    /// The key's own credits, if it has them (not its workspace's or plan's).
    pub fn own_credits(&self) -> Option<&CreditSpec> {
        self.profile.credits.as_deref()
    }

    /// Where the key's credit periods start, Unix ms.
    pub fn credits_origin_ms(&self) -> u64 {
        u64::try_from(self.profile.credits_origin_ms).unwrap_or(0)
    }

    pub(crate) fn loaded_at_ms(&self) -> i64 {
        self.loaded_at_ms
    }

    pub fn metadata(&self) -> &Map<String, Value> {
        &self.profile.metadata
    }

    /// Who created it: an admin key's id, `cli` or a dashboard user.
    pub fn created_by(&self) -> Option<&str> {
        self.profile.created_by.as_deref()
    }

    /// The last use the store knew of when this key was read.
    pub fn last_used(&self) -> (Option<DateTime<Utc>>, Option<&str>) {
        (self.profile.last_used_at, self.profile.last_used_ip.as_deref())
    }

    /// The key it replaced and the key that replaced it (rotation).
    pub fn rotation(&self) -> (Option<&str>, Option<&str>) {
        (self.profile.rotated_from.as_deref(), self.profile.rotated_to.as_deref())
    }
}

impl Tallied for CachedKey {
    fn tally(&self) -> &KeyTally {
        &self.usage
    }

    fn key_id(&self) -> &Arc<str> {
        &self.id
    }

    fn workspace_id(&self) -> &Arc<str> {
        &self.workspace.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::ip::IpAllowlist;
    use keygate_core::KeyHash;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn row() -> ApiKey {
        let mut metadata = Map::new();
        metadata.insert("team".into(), Value::from("billing"));
        ApiKey {
            id: "key_2".into(),
            workspace_id: "ws_1".into(),
            lineage_id: "key_1".into(),
            name: "Production Server".into(),
            environment: "live".into(),
            hash: KeyHash::of("kg_live_x"),
            hint: "kg_live_abcd...wxyz".into(),
            scopes: vec!["invoices:read".into()],
            roles: vec!["reader".into()],
            ip_allowlist: IpAllowlist::parse(&["10.0.0.0/8".into()]).unwrap(),
            expires_at: Some(at(100)),
            metadata,
            limits: vec![serde_json::from_value(serde_json::json!({"requests": 5, "per": "1m"})).unwrap()],
            credits: None,
            credits_set_at: None,
            created_at: at(0),
            created_by: Some("cli".into()),
            last_used_at: Some(at(10)),
            last_used_ip: Some("10.1.2.3".into()),
            revoked_at: Some(at(20)),
            revoked_reason: Some("leaked".into()),
            rotated_from: Some("key_1".into()),
            rotated_to: Some("key_3".into()),
            deleted_at: Some(at(30)),
            legacy: true,
        }
    }

    fn workspace() -> SharedWorkspace {
        SharedWorkspace::new(Workspace {
            id: "ws_1".into(),
            name: "Acme".into(),
            plan: None,
            ip_allowlist: IpAllowlist::default(),
            limits: vec![],
            credits: None,
            disabled: false,
            leak_policy: None,
            created_at: at(0),
            updated_at: at(0),
        })
    }

    #[test]
    fn what_a_view_shows_is_kept() {
        let cached = CachedKey::new(row(), workspace(), at(40));
        let key = row();
        assert_eq!(cached.access(), &KeyAccess::of(&key));
        assert_eq!((&**cached.id(), &**cached.workspace_id()), ("key_2", "ws_1"));
        assert_eq!(
            (cached.name(), cached.hint(), cached.environment()),
            ("Production Server", "kg_live_abcd...wxyz", "live")
        );
        assert_eq!(cached.metadata(), &key.metadata);
        assert_eq!(cached.limits(), &key.limits[..]);
        assert_eq!((cached.created_at(), cached.created_by()), (at(0), Some("cli")));
        assert!(cached.is_legacy());
        assert_eq!(cached.last_used(), (Some(at(10)), Some("10.1.2.3")));
        assert_eq!(cached.rotation(), (Some("key_1"), Some("key_3")));
        assert_eq!(cached.loaded_at_ms(), at(40).timestamp_millis());
    }

    #[test]
    fn a_key_never_rotated_shares_its_id_as_its_lineage() {
        let mut first = row();
        first.lineage_id = first.id.clone();
        let cached = CachedKey::new(first, workspace(), at(0));
        assert!(Arc::ptr_eq(cached.id(), cached.lineage_id()));
        let rotated = CachedKey::new(row(), workspace(), at(0));
        assert_eq!(&**rotated.lineage_id(), "key_1");
    }
}
