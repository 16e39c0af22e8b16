//! `GET /v1/keys/changes`: the keys this node has dropped from its cache
//! since a follower's cursor (crates/keygate-engine/src/verifier/forgotten.rs),
//! for services that cache keygate's answers (keygate-client's remote layer
//! with `cache_for`). Admin keys only: the hashes of every workspace's
//! changed keys go out, and when they changed.

use std::time::Duration;

use keygate_core::KeyHash;

use super::{Actor, Admin};
use crate::AdminError;

/// A cursor as the document states it: the node's id, a dot, a number.
pub const CURSOR_PATTERN: &str = r"^[a-z0-9_]{1,64}\.[0-9]{1,19}$";

/// What changed after a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChanges {
    /// Where the next call starts (`node.number`).
    pub cursor: String,
    /// Drop every cached answer: the changes cannot be told key by key (a
    /// first call, a cursor of another node or from before a restart, a
    /// follower too far behind, or a change to a whole workspace).
    pub reset: bool,
    /// The keys whose cached answers must go.
    pub keys: Vec<KeyHash>,
}

/// `node.number`, or `None` for text that is not a cursor (the server checks
/// it against [`CURSOR_PATTERN`]: crates/keygate-server/src/http/grammar.rs).
pub fn parse_cursor(text: &str) -> Option<(&str, u64)> {
    let (node, number) = text.rsplit_once('.')?;
    let node_ok = (1..=64).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let number_ok = (1..=19).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit());
    if !(node_ok && number_ok) {
        return None;
    }
    Some((node, number.parse().ok()?))
}

impl Admin {
    /// The keys dropped after `after`, waiting up to `wait` for one if none was.
    pub async fn key_changes(
        &self,
        actor: &Actor,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<KeyChanges, AdminError> {
        actor.require_admin()?;
        let node = self.context.node_id();
        let after = match after {
            None => None,
            Some(text) => {
                let (from, number) = parse_cursor(text).ok_or_else(|| {
                    AdminError::validation("after", "must be a cursor this endpoint gave (`node.number`)")
                })?;
                // Another node's numbers (or this node's before a restart) mean nothing here.
                (from == node).then_some(number)
            }
        };
        let since = self.verifier.forgotten_since(after, wait).await;
        Ok(KeyChanges {
            cursor: format!("{node}.{}", since.cursor),
            reset: since.reset,
            keys: since.keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_a_node_id_a_dot_and_a_number() {
        assert_eq!(
            parse_cursor("node_01m935yj3qaq60rr38e2a2tkbx.42"),
            Some(("node_01m935yj3qaq60rr38e2a2tkbx", 42))
        );
        for bad in [
            "",
            ".",
            "node.",
            ".1",
            "node",
            "Node.1",
            "node.-1",
            "node.1x",
            "no de.1",
            "node.12345678901234567890",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }
}
