//! Deciding events: the gateway's (`ratelimit.exceeded`,
//! `auth.failure_burst`), which travel to the store with the usage flush, and
//! the periodic scan's (`key.expiring`, `key.expired`,
//! `key.max_age_exceeded`, `usage.anomaly`), which read the store.
//!
//! Every event that may repeat carries a dedup name or a quiet period, so the
//! store keeps one however many requests, scans or nodes decide it. The key
//! lifecycle's own events (`key.created`, ...) are written by the store with
//! the change itself.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keygate_core::duration::format_duration;
use keygate_core::events::{event_body, AnomalyRule, EventType};
use keygate_core::id::EVENT_PREFIX;
use keygate_core::model::ApiKey;
use keygate_core::ratelimit::{Decision, LimitState};
use keygate_limiter::ArcStr;
use keygate_store::{KeyActivity, KeyEventScan, NewEvent, StoreError};
use serde_json::{json, Value};

use crate::context::Context;
use crate::usage::Usage;
use crate::verifier::CachedKey;

/// Most keys one scan announces per lifecycle event type; the rest follow
/// on the next scan.
const SCAN_LIMIT: u32 = 1_000;
/// How far back a scan still announces an expiry it missed (node down).
const EXPIRED_LOOKBACK_DAYS: i64 = 30;

/// `[events]` of the config.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSettings {
    /// Off: no gateway events, no scans, no deliveries (the benchmark's
    /// baseline). The lifecycle events of admin changes are still stored.
    pub enabled: bool,
    /// `key.expiring` this long before a key expires.
    pub expiring_within: chrono::Duration,
    /// `key.max_age_exceeded` for keys older than this (`keys.max_age`).
    pub max_key_age: Option<chrono::Duration>,
    pub anomaly: AnomalyRule,
    /// At most one `usage.anomaly` per key in this long.
    pub anomaly_cooldown: chrono::Duration,
    /// How often the lifecycle and anomaly scan runs.
    pub scan_interval: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            expiring_within: chrono::Duration::days(7),
            max_key_age: Some(chrono::Duration::days(90)),
            anomaly: AnomalyRule::default(),
            anomaly_cooldown: chrono::Duration::hours(1),
            scan_interval: Duration::from_secs(60),
        }
    }
}

/// The fixed window of a limit that a refusal falls in: `ratelimit.exceeded`
/// is announced once per key, limit and window.
/// A limit that refused (or, in shadow, would have): which event, the
/// counter's resource (deduplication) and the configured one (the event's).
struct Refusal<'a> {
    kind: EventType,
    counter: &'a str,
    resource: &'a str,
    limit: &'a LimitState,
    decided_at_ms: u64,
}

/// Deciding events: the gateway's, stored with the usage flush, and the
/// periodic scan's.
pub struct Events {
    context: Arc<Context>,
    settings: EventSettings,
    usage: Arc<Usage>,
    /// `(key, resource, window length, window start)` of the refusals this
    /// node has announced, so a flood of 429s makes one event, not one each.
    announced_refusals: moka::sync::Cache<(ArcStr, Arc<str>, u64, u64), ()>,
}

impl Events {
    pub(crate) fn new(context: Arc<Context>, settings: EventSettings, usage: Arc<Usage>) -> Self {
        Self {
            context,
            settings,
            usage,
            announced_refusals: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    pub fn settings(&self) -> &EventSettings {
        &self.settings
    }

    fn new_event(
        &self,
        kind: EventType,
        now: DateTime<Utc>,
        workspace_id: Option<&str>,
        subject: &str,
        data: Value,
    ) -> NewEvent {
        NewEvent {
            id: self.context.new_id(EVENT_PREFIX, now),
            kind,
            at: now,
            workspace_id: workspace_id.map(str::to_owned),
            subject: Some(subject.to_owned()),
            dedup_key: None,
            quiet_since: None,
            body: event_body(kind, now, &data),
        }
    }

    /// Called for every 429: cheap after the first of its window, which this
    /// node remembers.
    pub(crate) fn rate_limit_exceeded(
        &self,
        cached: &CachedKey,
        resource: &str,
        decision: &Decision,
        now: DateTime<Utc>,
    ) {
        if let Some(limit) = decision.refusing() {
            let refusal = Refusal {
                kind: EventType::RateLimitExceeded,
                counter: resource,
                resource,
                limit,
                decided_at_ms: decision.now_ms,
            };
            self.limit_refused(cached, refusal, now);
        }
    }

    /// Called for every request a shadow limit would have refused (it was
    /// admitted): one `ratelimit.shadow_exceeded` per limit and window.
    pub(crate) fn shadow_limit_exceeded(
        &self,
        cached: &CachedKey,
        (counter, resource): (&str, &str),
        limit: &LimitState,
        decision: &Decision,
        now: DateTime<Utc>,
    ) {
        let refusal = Refusal {
            kind: EventType::RateLimitShadowExceeded,
            counter,
            resource,
            limit,
            decided_at_ms: decision.now_ms,
        };
        self.limit_refused(cached, refusal, now);
    }

    fn limit_refused(&self, cached: &CachedKey, refusal: Refusal<'_>, now: DateTime<Utc>) {
        if !self.settings.enabled {
            return;
        }
        let window_ms = refusal.limit.rule.window_ms.max(1);
        let window_start = refusal.decided_at_ms / window_ms * window_ms;
        let seen = (
            cached.id().clone(),
            Arc::<str>::from(refusal.counter),
            window_ms,
            window_start,
        );
        if self.announced_refusals.contains_key(&seen) {
            return;
        }
        self.announced_refusals.insert(seen, ());
        let resource = refusal.resource;
        let data = json!({
            "key_id": &**cached.id(),
            "workspace_id": &**cached.workspace_id(),
            "resource": resource,
            "limit": refusal.limit.rule.requests,
            "window": format_duration(Duration::from_millis(window_ms)),
            "window_start": DateTime::from_timestamp_millis(window_start as i64),
        });
        let mut event = self.new_event(refusal.kind, now, Some(cached.workspace_id()), cached.id(), data);
        event.dedup_key = Some(format!(
            "{}:{}:{resource}:{window_ms}:{window_start}",
            refusal.kind.as_str(),
            cached.id()
        ));
        self.usage.record_event(event);
    }

    /// Called when a client's invalid keys reach the throttle's threshold:
    /// once per client and failure window on this node.
    pub(crate) fn failure_burst(
        &self,
        ip: IpAddr,
        failures: u32,
        window: Duration,
        window_started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        if !self.settings.enabled {
            return;
        }
        let data = json!({
            "ip": ip.to_string(),
            "failures": failures,
            "window": format_duration(window),
        });
        let subject = ip.to_string();
        let mut event = self.new_event(EventType::AuthFailureBurst, now, None, &subject, data);
        event.dedup_key = Some(format!(
            "auth.failure_burst:{subject}:{}",
            window_started.timestamp_millis()
        ));
        event.quiet_since = chrono::Duration::from_std(window).ok().map(|window| now - window);
        self.usage.record_event(event);
    }

    /// The lifecycle and anomaly scan: stores the events that are due and
    /// returns how many were new.
    pub async fn scan(&self) -> Result<u64, StoreError> {
        let now = self.context.now();
        let mut events = self.lifecycle_events(now).await?;
        events.extend(self.anomaly_events(now).await?);
        if events.is_empty() {
            return Ok(0);
        }
        self.context.background_store().insert_events(&events).await
    }

    async fn lifecycle_events(&self, now: DateTime<Utc>) -> Result<Vec<NewEvent>, StoreError> {
        let settings = &self.settings;
        let scan = KeyEventScan {
            now,
            expiring_before: now + settings.expiring_within,
            expired_since: now - chrono::Duration::days(EXPIRED_LOOKBACK_DAYS),
            created_before: settings.max_key_age.map(|age| now - age),
            limit: SCAN_LIMIT,
        };
        let due = self.context.background_store().keys_due_for_events(&scan).await?;
        Ok(due
            .into_iter()
            .map(|(kind, key)| self.lifecycle_event(kind, &key, now))
            .collect())
    }

    /// The dedup names match the store's (`LIFECYCLE_DEDUP_SQL`), which is
    /// how a stored event stops the key from being due again.
    fn lifecycle_event(&self, kind: EventType, key: &ApiKey, now: DateTime<Utc>) -> NewEvent {
        let mut data = json!({
            "key_id": key.id,
            "workspace_id": key.workspace_id,
            "name": key.name,
            "environment": key.environment,
            "created_at": key.created_at,
            "expires_at": key.expires_at,
        });
        let dedup_key = match kind {
            EventType::KeyMaxAgeExceeded => {
                if let Some(age) = self.settings.max_key_age {
                    data["max_age_days"] = json!(age.num_days());
                }
                format!("{kind}:{}", key.id)
            }
            _ => format!(
                "{kind}:{}:{}",
                key.id,
                key.expires_at.map_or(0, |at| at.timestamp_millis())
            ),
        };
        let mut event = self.new_event(kind, now, Some(&key.workspace_id), &key.id, data);
        event.dedup_key = Some(dedup_key);
        event
    }

    /// Keys whose last minutes are anomalous (see [`AnomalyRule`]). Keys
    /// younger than the baseline window are left out: they have no baseline.
    async fn anomaly_events(&self, now: DateTime<Utc>) -> Result<Vec<NewEvent>, StoreError> {
        let rule = self.settings.anomaly;
        let this_minute = now.timestamp().div_euclid(60) * 60;
        let recent_from = this_minute - 60 * (i64::from(rule.recent_minutes) - 1);
        let baseline_from = recent_from - 60 * i64::from(rule.baseline_minutes);
        let active = self
            .context
            .background_store()
            .key_activity(baseline_from, recent_from, this_minute + 60, rule.floor)
            .await?;
        let quiet_since = now - self.settings.anomaly_cooldown;
        Ok(active
            .into_iter()
            .filter(|key| key.key_created_at.timestamp() <= baseline_from)
            .filter(|key| rule.is_anomalous(key.recent, key.baseline))
            .map(|key| self.anomaly_event(&key, rule, this_minute, quiet_since, now))
            .collect())
    }

    fn anomaly_event(
        &self,
        key: &KeyActivity,
        rule: AnomalyRule,
        minute: i64,
        quiet_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> NewEvent {
        let data = json!({
            "key_id": key.key_id,
            "workspace_id": key.workspace_id,
            "recent_requests": key.recent,
            "recent_minutes": rule.recent_minutes,
            "baseline_requests": key.baseline,
            "baseline_minutes": rule.baseline_minutes,
            "factor": rule.factor,
            "floor": rule.floor,
        });
        let mut event = self.new_event(EventType::UsageAnomaly, now, Some(&key.workspace_id), &key.key_id, data);
        event.dedup_key = Some(format!("usage.anomaly:{}:{minute}", key.key_id));
        event.quiet_since = Some(quiet_since);
        event
    }
}
