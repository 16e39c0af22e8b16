//! A key as the verify path keeps it: what a decision reads, laid out
//! together first, and after it the rest of its row for the views that
//! show it.
//!
//! Memory per cached key is a goal of its own (BENCHMARKS.md, "Memory per
//! cached key"): a node holds up to `cache.capacity` of these, and every
//! request reads one. The whole `ApiKey` row was 504 bytes inline plus about
//! ten strings; a decision reads five of its fields.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use keygate_core::credits::CreditSpec;
use keygate_core::limits::LimitSpec;
use keygate_core::model::{ApiKey, Workspace};
use keygate_core::prefetch::prefetch;
use keygate_core::KeyAccess;
use keygate_limiter::ArcStr;
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};
use serde_json::{Map, Value};

use super::limits::MemoizedLimits;
use super::shares::{SharedWorkspace, Shares};
use crate::usage::{KeyTally, Tallied};

/// A key and its workspace as the verify path needs them. In the order
/// written (`repr(C)`): what a decision reads comes first, together, and the
/// profile no decision reads last. The profile was boxed apart; inline it
/// costs a decision no more memory lines, and every key 8 bytes less
/// (memory per cached key, BENCHMARKS.md).
#[derive(Debug)]
#[repr(C)]
pub struct CachedKey {
    id: ArcStr,
    /// With the key's environment.
    workspace: SharedWorkspace,
    access: KeyAccess,
    /// When the store last confirmed this key (Unix ms, engine clock).
    loaded_at_ms: i64,
    /// What requests change, under one lock: one lock word a key, not
    /// two (memory per cached key, BENCHMARKS.md). It is held for a few
    /// field updates, or to compute the key's checks once per plan
    /// generation, so sharing it costs no waiting worth the name. Under it
    /// only locks that never wait for a key's are taken: the usage flush
    /// list's (`UsageRecorder::record`) and the shared tables'
    /// (crates/keygate-engine/src/verifier/shares.rs).
    changing: Mutex<Changing>,
    profile: KeyProfile,
}

#[derive(Debug)]
struct Changing {
    /// Limit checks per resource list, computed on first use for one
    /// generation of plans (crates/keygate-engine/src/verifier/limits.rs).
    limit_checks: MemoizedLimits,
    /// Usage counted since the last flush.
    usage: KeyTally,
}

/// The fields of the row no decision reads, shown by `whoami` and the
/// verify API's key view. A view is only made of an admitted key, so the
/// revocation and deletion times (always empty there) and the hash (never
/// shown) are not kept. What most keys have is kept here; what few have is
/// boxed apart, so a key without it pays one empty pointer (memory per
/// cached key, BENCHMARKS.md).
#[derive(Debug)]
struct KeyProfile {
    /// The name, then the hint: one allocation, not two.
    name_and_hint: Box<str>,
    name_len: u32,
    created_by: Option<Arc<String>>,
    created_at: DateTime<Utc>,
    rare: Option<Box<RareProfile>>,
}

/// Metadata, rotation, a key's own limits and credits, and whether it was
/// imported: empty for most keys. The limits are read once per memoized
/// limit set, not per request.
#[derive(Debug, Default, PartialEq)]
struct RareProfile {
    /// Imported, not in this deployment's format (`ApiKey::legacy`).
    legacy: bool,
    metadata: Map<String, Value>,
    limits: Box<[LimitSpec]>,
    rotated_from: Option<Box<str>>,
    rotated_to: Option<Box<str>>,
    /// The first key of its rotation chain, when that is another key. Read
    /// once per memoized limit set (and per concurrency permit), not per
    /// request, so a key never rotated pays nothing for it.
    lineage_id: Option<ArcStr>,
    /// The key's own credits (read once per memoized limit set).
    credits: Option<CreditSpec>,
    /// When its credits were last set (`ApiKey::credits_set_at`); its
    /// credit periods start there, or at its creation when never set.
    credits_set_at: Option<DateTime<Utc>>,
}

impl KeyProfile {
    /// Where the name ends: a character boundary, as it was a whole string.
    fn name_len(&self) -> usize {
        usize::try_from(self.name_len).unwrap_or(usize::MAX)
    }
}

impl RareProfile {
    /// `None` when the key has none of it.
    fn of(key: &mut ApiKey) -> Option<Box<Self>> {
        let lineage_id = (key.lineage_id != key.id).then(|| ArcStr::from(std::mem::take(&mut key.lineage_id)));
        let rare = Self {
            legacy: key.legacy,
            metadata: std::mem::take(&mut key.metadata),
            limits: std::mem::take(&mut key.limits).into_boxed_slice(),
            rotated_from: boxed(key.rotated_from.take()),
            rotated_to: boxed(key.rotated_to.take()),
            lineage_id,
            credits: key.credits.take(),
            credits_set_at: key.credits_set_at,
        };
        (rare != Self::default()).then(|| Box::new(rare))
    }
}

/// What [`CachedKey::metadata`] shows of a key without metadata.
static NO_METADATA: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

fn boxed(text: Option<String>) -> Option<Box<str>> {
    text.map(String::into_boxed_str)
}

impl CachedKey {
    /// Takes the row apart; what other keys share comes from `shares`.
    pub(crate) fn new(mut key: ApiKey, workspace: Workspace, shares: &Shares, loaded_at: DateTime<Utc>) -> Self {
        let rare = RareProfile::of(&mut key);
        let lists = shares.access_lists(&mut key);
        let id = ArcStr::from(key.id);
        let revoked = key.revoked_at.is_some() || key.deleted_at.is_some();
        let last_used_ip = key.last_used_ip.as_deref().and_then(|ip| ip.parse().ok());
        Self {
            id,
            workspace: shares.workspace(workspace, key.environment),
            access: KeyAccess::new(revoked, key.expires_at, lists),
            loaded_at_ms: loaded_at.timestamp_millis(),
            changing: Mutex::new(Changing {
                limit_checks: MemoizedLimits::default(),
                usage: KeyTally::known(key.last_used_at, last_used_ip),
            }),
            profile: KeyProfile {
                name_len: u32::try_from(key.name.len()).unwrap_or(u32::MAX),
                name_and_hint: (key.name + &key.hint).into_boxed_str(),
                created_by: key.created_by.map(|actor| shares.name(actor)),
                created_at: key.created_at,
                rare,
            },
        }
    }

    pub fn id(&self) -> &ArcStr {
        &self.id
    }

    /// Starts loading the lines of this key that a decision reads after the
    /// one the cache's count brought in: its lock with its checks, and its
    /// usage tally (88 bytes that start 48 bytes in, so often two lines).
    /// Each would otherwise be a miss of its own, in turn (BENCHMARKS.md,
    /// "Prefetched lines").
    pub(crate) fn prefetch(&self) {
        let changing = std::ptr::from_ref(&self.changing).cast::<u8>();
        prefetch(changing);
        prefetch(changing.wrapping_add(64));
    }

    /// The first key of its rotation chain: rate-limit counters are kept
    /// per lineage. The key's own id (the same shared string) if it was
    /// never rotated.
    pub fn lineage_id(&self) -> &ArcStr {
        self.rare()
            .and_then(|rare| rare.lineage_id.as_ref())
            .unwrap_or(&self.id)
    }

    pub fn workspace(&self) -> &Workspace {
        self.workspace.workspace()
    }

    pub fn workspace_id(&self) -> &ArcStr {
        self.workspace.id()
    }

    pub fn environment(&self) -> &str {
        self.workspace.environment()
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
        self.rare().map_or(&[], |rare| &rare.limits)
    }

    pub fn name(&self) -> &str {
        self.profile
            .name_and_hint
            .get(..self.profile.name_len())
            .unwrap_or_default()
    }

    /// `kg_live_AbCd...wxyz`.
    pub fn hint(&self) -> &str {
        self.profile
            .name_and_hint
            .get(self.profile.name_len()..)
            .unwrap_or_default()
    }

    /// Imported from another system (crates/keygate-core/src/legacy.rs).
    pub fn is_legacy(&self) -> bool {
        self.rare().is_some_and(|rare| rare.legacy)
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        self.profile.created_at
    }

    /// The key's own credits, if it has them (not its workspace's or plan's).
    pub fn own_credits(&self) -> Option<&CreditSpec> {
        self.rare()?.credits.as_ref()
    }

    /// Where the key's credit periods start, Unix ms (`ApiKey::credits_origin`).
    pub fn credits_origin_ms(&self) -> u64 {
        let origin = self.rare().and_then(|rare| rare.credits_set_at);
        u64::try_from(origin.unwrap_or(self.profile.created_at).timestamp_millis()).unwrap_or(0)
    }

    fn rare(&self) -> Option<&RareProfile> {
        self.profile.rare.as_deref()
    }

    /// Its limit checks per resource list, locked.
    pub(crate) fn limit_checks(&self) -> MappedMutexGuard<'_, MemoizedLimits> {
        MutexGuard::map(self.changing.lock(), |changing| &mut changing.limit_checks)
    }

    pub(crate) fn loaded_at_ms(&self) -> i64 {
        self.loaded_at_ms
    }

    pub fn metadata(&self) -> &Map<String, Value> {
        self.rare().map_or(&*NO_METADATA, |rare| &rare.metadata)
    }

    /// Who created it: an admin key's id, `cli` or a dashboard user.
    pub fn created_by(&self) -> Option<&str> {
        self.profile.created_by.as_deref().map(String::as_str)
    }

    /// The latest use known: the store's when this key was read, then each
    /// request's this node counted (to the millisecond). Read from the usage
    /// tally, which keeps it anyway, rather than kept twice (memory per
    /// cached key, BENCHMARKS.md).
    pub fn last_used(&self) -> (Option<DateTime<Utc>>, Option<IpAddr>) {
        self.changing.lock().usage.last_use()
    }

    /// The key it replaced and the key that replaced it (rotation).
    pub fn rotation(&self) -> (Option<&str>, Option<&str>) {
        match self.rare() {
            Some(rare) => (rare.rotated_from.as_deref(), rare.rotated_to.as_deref()),
            None => (None, None),
        }
    }
}

impl Tallied for CachedKey {
    fn tally(&self) -> MappedMutexGuard<'_, KeyTally> {
        MutexGuard::map(self.changing.lock(), |changing| &mut changing.usage)
    }

    fn key_id(&self) -> &ArcStr {
        &self.id
    }

    fn workspace_id(&self) -> &ArcStr {
        self.workspace.id()
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

    fn workspace() -> Workspace {
        Workspace {
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
        }
    }

    fn cache_row(key: ApiKey, loaded_at: DateTime<Utc>) -> CachedKey {
        CachedKey::new(key, workspace(), &Shares::default(), loaded_at)
    }

    #[test]
    fn what_a_view_shows_is_kept() {
        let key = row();
        let cached = cache_row(row(), at(40));
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
        assert_eq!(cached.last_used(), (Some(at(10)), "10.1.2.3".parse().ok()));
        assert_eq!(cached.rotation(), (Some("key_1"), Some("key_3")));
        assert_eq!(cached.loaded_at_ms(), at(40).timestamp_millis());
    }

    #[test]
    fn a_key_with_no_metadata_rotation_limits_or_credits_keeps_none_of_them() {
        let mut plain = row();
        plain.metadata = Map::new();
        plain.limits = vec![];
        (plain.rotated_from, plain.rotated_to) = (None, None);
        plain.lineage_id = plain.id.clone();
        plain.legacy = false;
        let cached = cache_row(plain, at(40));
        assert!(cached.profile.rare.is_none());
        assert!(cached.metadata().is_empty());
        assert_eq!(cached.rotation(), (None, None));
        assert_eq!((cached.own_credits(), cached.limits()), (None, &[][..]));
        assert_eq!(cached.credits_origin_ms(), 1_700_000_000_000);
    }

    #[test]
    fn credit_periods_start_when_credits_were_set() {
        let mut key = row();
        key.credits = Some(serde_json::from_value(serde_json::json!({"remaining": 100})).unwrap());
        key.credits_set_at = Some(at(5));
        let cached = cache_row(key.clone(), at(40));
        assert_eq!(cached.own_credits(), key.credits.as_ref());
        assert_eq!(cached.credits_origin_ms(), 1_700_000_005_000);
    }

    #[test]
    fn keys_of_one_workspace_with_the_same_lists_share_them() {
        let shares = Shares::default();
        let other_scopes = ApiKey {
            scopes: vec!["invoices:write".into()],
            ..row()
        };
        let [a, b, c] = [row(), row(), other_scopes].map(|key| CachedKey::new(key, workspace(), &shares, at(0)));
        assert!(std::ptr::eq(a.scopes(), b.scopes()));
        assert!(std::ptr::eq(a.workspace(), c.workspace()));
        assert!(std::ptr::eq(a.environment(), c.environment()));
        assert!(std::ptr::eq(a.created_by().unwrap(), c.created_by().unwrap()));
        let test_key = CachedKey::new(
            ApiKey {
                environment: "test".into(),
                ..row()
            },
            workspace(),
            &shares,
            at(0),
        );
        assert_eq!((test_key.environment(), a.environment()), ("test", "live"));
        assert_eq!(test_key.workspace(), a.workspace());
        assert!(!std::ptr::eq(a.scopes(), c.scopes()));
        assert_eq!(
            (a.access(), c.scopes()),
            (&KeyAccess::of(&row()), &["invoices:write".to_owned()][..])
        );
    }

    /// Every cached key pays these (memory per cached key, BENCHMARKS.md):
    /// a field added here should be worth its bytes.
    #[test]
    fn a_cached_key_stays_small() {
        assert!(std::mem::size_of::<CachedKey>() <= 184);
        assert!(std::mem::size_of::<KeyProfile>() <= 48);
        assert!(std::mem::size_of::<KeyAccess>() <= 24);
    }

    #[test]
    fn a_key_s_tally_starts_from_the_last_use_the_store_had() {
        use crate::usage::{Outcome, UsageRecorder};
        let recorder = UsageRecorder::default();
        let (stored, other): (std::net::IpAddr, std::net::IpAddr) =
            ("10.1.2.3".parse().unwrap(), "10.9.9.9".parse().unwrap());
        let cached = Arc::new(cache_row(row(), at(40)));
        recorder.record(&cached, Outcome::Admitted, Some(stored), at(50));
        let batch = recorder.take("ub".into(), at(50));
        assert_eq!(batch.counts.len(), 1);
        assert!(batch.last_uses.is_empty(), "the store has a use from there 40 s before");
        recorder.record(&cached, Outcome::Admitted, Some(other), at(55));
        let uses: Vec<_> = recorder
            .take("ub".into(), at(55))
            .last_uses
            .into_iter()
            .map(|u| u.ip)
            .collect();
        assert_eq!(uses, ["10.9.9.9"]);
    }

    #[test]
    fn a_key_shows_the_latest_use_known() {
        use crate::usage::{Outcome, UsageRecorder};
        let recorder = UsageRecorder::default();
        let other: IpAddr = "10.9.9.9".parse().unwrap();
        let cached = Arc::new(cache_row(row(), at(40)));
        let later = at(50) + chrono::Duration::milliseconds(123);
        recorder.record(&cached, Outcome::Admitted, Some(other), later);
        assert_eq!(cached.last_used(), (Some(later), Some(other)));
        recorder.record(&cached, Outcome::Admitted, "10.1.2.3".parse().ok(), at(49));
        assert_eq!(
            cached.last_used(),
            (Some(later), Some(other)),
            "an older use is not the latest"
        );
    }

    #[test]
    fn a_stored_use_without_an_address_is_shown() {
        let key = ApiKey {
            last_used_ip: None,
            ..row()
        };
        assert_eq!(cache_row(key, at(40)).last_used(), (Some(at(10)), None));
        let never = ApiKey {
            last_used_at: None,
            last_used_ip: None,
            ..row()
        };
        assert_eq!(cache_row(never, at(40)).last_used(), (None, None));
    }

    #[test]
    fn a_key_is_legacy_only_if_imported_so() {
        let native = ApiKey { legacy: false, ..row() };
        assert!(!cache_row(native, at(0)).is_legacy());
        let mut plain_import = row();
        plain_import.metadata = Map::new();
        plain_import.limits = vec![];
        (plain_import.rotated_from, plain_import.rotated_to) = (None, None);
        plain_import.lineage_id = plain_import.id.clone();
        let cached = cache_row(plain_import, at(0));
        assert!(cached.is_legacy(), "a legacy key with nothing else rare keeps the flag");
    }

    #[test]
    fn a_key_never_rotated_shares_its_id_as_its_lineage() {
        let mut first = row();
        first.lineage_id = first.id.clone();
        let first = cache_row(first, at(0));
        assert!(ArcStr::ptr_eq(first.id(), first.lineage_id()));
        let rotated = cache_row(row(), at(0));
        assert_eq!(&**rotated.lineage_id(), "key_1");
    }
}
