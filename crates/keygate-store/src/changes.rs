//! What one node tells the others so that they drop stale cache entries.
//!
//! A change is announced inside the transaction that makes it (PostgreSQL
//! delivers a NOTIFY only when its transaction commits), so a committed revoke
//! is always announced and a rolled-back one never is. Nothing is announced
//! that another node could not read back from the store right after.

use async_trait::async_trait;
use keygate_core::KeyHash;

use crate::StoreError;

/// The PostgreSQL channel every node listens on, one per schema: channels are
/// database-wide, and deployments (or test runs) in other schemas of the same
/// database must not hear each other.
pub fn channel_for_schema(schema: &str) -> String {
    format!("keygate_changes_{schema}")
}

/// A committed change that can make a cached key decide differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One key was revoked, updated, rotated or deleted.
    Key(KeyHash),
    /// A workspace's plan, allowlist, limits or state changed, or it was
    /// deleted: any key of it may decide differently.
    Workspace(String),
    /// Not a change: a marker that asks every node to confirm it heard
    /// everything committed before it (a revocation receipt,
    /// crates/keygate-engine/src/nodes.rs). A node hears it only after those
    /// changes, since the feed keeps commit order.
    Receipt(String),
}

impl Change {
    /// The NOTIFY payload. Only a key's hash travels, never the key.
    pub fn encode(&self) -> String {
        match self {
            Self::Key(hash) => format!("key:{}", hash.to_hex()),
            Self::Workspace(id) => format!("workspace:{id}"),
            Self::Receipt(id) => format!("receipt:{id}"),
        }
    }

    /// `None` for a payload this version does not know; the caller treats it
    /// as "anything may have changed".
    pub fn decode(payload: &str) -> Option<Self> {
        if let Some(hex) = payload.strip_prefix("key:") {
            return KeyHash::from_hex(hex).map(Self::Key);
        }
        let named = |prefix: &str| {
            payload
                .strip_prefix(prefix)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
        };
        named("workspace:")
            .map(Self::Workspace)
            .or_else(|| named("receipt:").map(Self::Receipt))
    }
}

/// What a node hears from the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    Changed(Change),
    /// A payload that could not be read (a newer node's format).
    Unreadable,
    /// The feed is (again) connected. Changes made while it was not were
    /// missed, so the listener drops everything it cached.
    Connected,
}

/// The changes every node commits, in commit order, for as long as it is
/// connected. After an error the next call reconnects.
#[async_trait]
pub trait ChangeFeed: Send {
    async fn next(&mut self) -> Result<FeedEvent, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_unknown_payloads_are_refused() {
        let hash = KeyHash::of("kg_live_example");
        for change in [
            Change::Key(hash),
            Change::Workspace("ws_01".into()),
            Change::Receipt("rcp_01".into()),
        ] {
            assert_eq!(Change::decode(&change.encode()), Some(change));
        }
        for bad in ["", "key:", "key:zz", "key:abcd", "workspace:", "receipt:", "tenant:1"] {
            assert_eq!(Change::decode(bad), None, "{bad:?}");
        }
    }
}
