//! Object ids: a type prefix and a lowercase ULID (`key_01j9...`).
//!
//! ULIDs sort by creation time, so "newest first" paging is an index range scan
//! on the id alone, and the cursor is simply the last id of a page.

use chrono::{DateTime, Utc};
use rand::RngCore;
use ulid::Ulid;

pub const WORKSPACE_PREFIX: &str = "ws";
pub const KEY_PREFIX: &str = "key";
pub const AUDIT_PREFIX: &str = "evt";
/// Outbox events: `msg_` as Standard Webhooks message ids are commonly named.
pub const EVENT_PREFIX: &str = "msg";
pub const WEBHOOK_PREFIX: &str = "wh";
/// A node of the deployment, new at every start.
pub const NODE_PREFIX: &str = "node";
/// A receipt: the marker nodes confirm (crates/keygate-engine/src/nodes.rs).
pub const RECEIPT_PREFIX: &str = "rcp";
/// The built-in workspace whose keys administer every workspace.
pub const ADMIN_WORKSPACE_ID: &str = "ws_admin";

/// A random id for `now`. Two ids of the same millisecond sort randomly; use
/// [`IdGenerator`] where creation order must show.
pub fn new_id(prefix: &str, now: DateTime<Utc>, rng: &mut impl RngCore) -> String {
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    let random = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) & ((1u128 << 80) - 1);
    format_id(prefix, Ulid::from_parts(millis, random))
}

fn format_id(prefix: &str, ulid: Ulid) -> String {
    format!("{prefix}_{}", ulid.to_string().to_ascii_lowercase())
}

/// Ids that sort in creation order even within one millisecond (monotonic ULIDs),
/// so "newest first" lists are exact.
#[derive(Default)]
pub struct IdGenerator(ulid::Generator);

impl std::fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdGenerator")
    }
}

impl IdGenerator {
    pub fn new() -> Self {
        Self(ulid::Generator::new())
    }

    /// The random part comes from the ulid crate's own generator.
    pub fn next(&mut self, prefix: &str, now: DateTime<Utc>) -> String {
        match self.0.generate_from_datetime(now.into()) {
            Ok(ulid) => format_id(prefix, ulid),
            // 2^80 ids in one millisecond: fall back to a random one.
            Err(_) => new_id(prefix, now, &mut rand::thread_rng()),
        }
    }
}

/// Cheap shape check so malformed ids are answered `NOT_FOUND` without a query.
pub fn looks_like(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| !rest.is_empty() && rest.len() <= 32 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn generated_ids_sort_in_creation_order_within_a_millisecond() {
        let mut generator = IdGenerator::new();
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let ids: Vec<String> = (0..100).map(|_| generator.next(KEY_PREFIX, t0)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn ids_sort_by_time() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let a = new_id(KEY_PREFIX, t0, &mut rng);
        let b = new_id(KEY_PREFIX, t0 + chrono::Duration::milliseconds(1), &mut rng);
        assert!(a < b);
        assert!(looks_like(KEY_PREFIX, &a));
        assert!(!looks_like(WORKSPACE_PREFIX, &a));
        assert!(looks_like(WORKSPACE_PREFIX, ADMIN_WORKSPACE_ID));
        assert!(!looks_like(KEY_PREFIX, "key_../../etc"));
    }
}
