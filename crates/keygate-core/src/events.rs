//! The events keygate publishes to webhooks, and the rules that decide them.
//!
//! Events are facts about keys and traffic that an API owner wants to hear of
//! without polling: a key created or revoked, a key about to expire, a key
//! flooding its limit, a traffic spike, a client guessing keys. Each is stored
//! in the outbox first and delivered from there, so what is decided here is
//! pure: which audit actions are published, how an event body looks, and when
//! usage is anomalous.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

/// Every event type, as named in webhook bodies and endpoint filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    KeyDeleted,
    KeyExpiring,
    KeyExpired,
    KeyMaxAgeExceeded,
    /// A key was reported found in public (GitHub secret scanning, or anyone).
    KeyLeaked,
    RateLimitExceeded,
    /// A shadow limit would have refused a request (it was admitted).
    RateLimitShadowExceeded,
    UsageAnomaly,
    AuthFailureBurst,
}

impl EventType {
    pub const ALL: [Self; 12] = [
        Self::KeyCreated,
        Self::KeyRevoked,
        Self::KeyRotated,
        Self::KeyDeleted,
        Self::KeyExpiring,
        Self::KeyExpired,
        Self::KeyMaxAgeExceeded,
        Self::KeyLeaked,
        Self::RateLimitExceeded,
        Self::RateLimitShadowExceeded,
        Self::UsageAnomaly,
        Self::AuthFailureBurst,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreated => "key.created",
            Self::KeyRevoked => "key.revoked",
            Self::KeyRotated => "key.rotated",
            Self::KeyDeleted => "key.deleted",
            Self::KeyExpiring => "key.expiring",
            Self::KeyExpired => "key.expired",
            Self::KeyMaxAgeExceeded => "key.max_age_exceeded",
            Self::KeyLeaked => "key.leaked",
            Self::RateLimitExceeded => "ratelimit.exceeded",
            Self::RateLimitShadowExceeded => "ratelimit.shadow_exceeded",
            Self::UsageAnomaly => "usage.anomaly",
            Self::AuthFailureBurst => "auth.failure_burst",
        }
    }

    /// The audit actions that are also published, so their event is written
    /// in the same transaction as the change and its audit event.
    pub fn published_for_action(action: &str) -> Option<Self> {
        match action {
            "key.created" => Some(Self::KeyCreated),
            "key.revoked" => Some(Self::KeyRevoked),
            "key.rotated" => Some(Self::KeyRotated),
            "key.deleted" => Some(Self::KeyDeleted),
            "key.leaked" => Some(Self::KeyLeaked),
            _ => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{0}`")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownEventType(text.to_owned()))
    }
}

/// Which events an endpoint receives: the listed types, or all when none are listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter(Vec<EventType>);

impl EventFilter {
    /// Parses type names, refusing unknown ones and dropping repeats.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, UnknownEventType> {
        let mut kinds = names
            .iter()
            .map(|name| name.as_ref().parse())
            .collect::<Result<Vec<EventType>, _>>()?;
        kinds.sort();
        kinds.dedup();
        Ok(Self(kinds))
    }

    pub fn matches(&self, kind: EventType) -> bool {
        self.0.is_empty() || self.0.contains(&kind)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|kind| kind.as_str().to_owned()).collect()
    }
}

/// The body every delivery of an event carries, in the Standard Webhooks
/// shape: `{"type", "timestamp", "data"}`. Built once and stored, so retries
/// send (and sign) exactly the same bytes.
pub fn event_body(kind: EventType, at: DateTime<Utc>, data: &Value) -> String {
    json!({
        "type": kind.as_str(),
        "timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string()
}

/// When a key's traffic is a `usage.anomaly`: its requests in the recent
/// window exceed `factor` times what its baseline rate predicts for a window
/// of that length, and are at least `floor` (so a key going from 1 to 6
/// requests is not an incident).
///
/// The baseline is the key's mean rate over the `baseline_minutes` before
/// the recent window, with quiet minutes counted as zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyRule {
    pub factor: f64,
    /// Fewest requests in the recent window that can be anomalous.
    pub floor: u64,
    pub recent_minutes: u32,
    pub baseline_minutes: u32,
}

impl Default for AnomalyRule {
    fn default() -> Self {
        Self {
            factor: 5.0,
            floor: 100,
            recent_minutes: 5,
            baseline_minutes: 60,
        }
    }
}

impl AnomalyRule {
    /// `recent`: requests in the recent window; `baseline`: requests in the
    /// baseline window before it.
    pub fn is_anomalous(&self, recent: u64, baseline: u64) -> bool {
        if recent < self.floor || self.baseline_minutes == 0 {
            return false;
        }
        let expected = baseline as f64 * f64::from(self.recent_minutes) / f64::from(self.baseline_minutes);
        recent as f64 > self.factor * expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_name() {
        for kind in EventType::ALL {
            assert_eq!(kind.as_str().parse::<EventType>(), Ok(kind));
        }
        assert_eq!(
            "key.exploded".parse::<EventType>(),
            Err(UnknownEventType("key.exploded".into()))
        );
    }

    #[test]
    fn only_key_lifecycle_actions_are_published() {
        assert_eq!(
            EventType::published_for_action("key.revoked"),
            Some(EventType::KeyRevoked)
        );
        assert_eq!(EventType::published_for_action("key.updated"), None);
        assert_eq!(EventType::published_for_action("workspace.created"), None);
    }

    #[test]
    fn an_empty_filter_matches_everything_and_a_list_only_itself() {
        assert!(EventFilter::default().matches(EventType::UsageAnomaly));
        let filter = EventFilter::parse(&["key.revoked", "key.created", "key.revoked"]).unwrap();
        assert_eq!(filter.names(), ["key.created", "key.revoked"]);
        assert!(filter.matches(EventType::KeyRevoked));
        assert!(!filter.matches(EventType::UsageAnomaly));
        assert!(EventFilter::parse(&["nope"]).is_err());
    }

    #[test]
    fn the_body_has_type_timestamp_and_data() {
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let body = event_body(EventType::KeyCreated, at, &json!({"key_id": "key_1"}));
        assert_eq!(
            body,
            r#"{"type":"key.created","timestamp":"2023-11-14T22:13:20.123Z","data":{"key_id":"key_1"}}"#
        );
    }

    #[test]
    fn anomaly_needs_both_the_factor_and_the_floor() {
        let rule = AnomalyRule {
            factor: 5.0,
            floor: 50,
            recent_minutes: 5,
            baseline_minutes: 60,
        };
        // 120 requests an hour predict 10 in 5 minutes.
        assert!(!rule.is_anomalous(50, 120), "5x exactly is not more than 5x");
        assert!(rule.is_anomalous(51, 120));
        assert!(!rule.is_anomalous(49, 0), "below the floor");
        assert!(rule.is_anomalous(50, 0), "no baseline, above the floor");
        assert!(!rule.is_anomalous(10, 120), "steady traffic");
    }
}
