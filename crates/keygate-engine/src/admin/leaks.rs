//! Leak reports: a key found in public (by GitHub's secret scanning, or by
//! anyone) is acted on at once, as `leaks.on_report` says, with a trail: the
//! audit event `key.leaked` names the report's source and URL, and the same
//! transaction publishes it to webhooks.

use std::net::IpAddr;

use keygate_core::id::AUDIT_PREFIX;
use keygate_core::model::{ApiKey, KeyStatus, OnLeak};
use keygate_core::ratelimit::Rule;
use keygate_core::KeyHash;
use keygate_limiter::{Charge, CounterKey, LimitCheck};
use keygate_store::AuditEvent;
use serde_json::json;

use super::{later, Actor, Admin};
use crate::AdminError;

/// The action a live key's report took, as the audit event and the
/// `key.leaked` webhook event name it.
fn action_of(policy: OnLeak) -> &'static str {
    match policy {
        OnLeak::Revoke => "revoked",
        OnLeak::Expire => "expiring",
        OnLeak::Notify => "notified",
    }
}

/// Who reports, and where the key was found.
#[derive(Debug, Clone, Copy)]
pub struct LeakReport<'a> {
    /// The audit event's actor: `github` for GitHub's secret scanning.
    pub reporter: &'a str,
    /// Where the key was seen (a commit, a gist, an issue), if said.
    pub url: Option<&'a str>,
    /// The reporter's own word for where it looked (GitHub's `source`).
    pub source: Option<&'a str>,
    /// The address the report came from, when it is not a known reporter's.
    pub ip: Option<IpAddr>,
}

/// What a reported token turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakVerdict {
    /// A key of this deployment that worked until the report; the policy was applied.
    Live,
    /// A key of this deployment that no longer worked (revoked, expired, deleted).
    Dead,
    /// Not a key of this deployment: another prefix, a bad checksum, or no such key.
    Unknown,
}

impl LeakVerdict {
    /// Whether the token was one of this deployment's keys (GitHub's `true_positive`).
    pub fn is_ours(self) -> bool {
        self != Self::Unknown
    }
}

/// Reports one client address may send a minute to the public endpoint.
pub const PUBLIC_REPORTS_PER_MINUTE: u64 = 20;

/// Most hashes one `POST /v1/keys/lookup` may ask about: 500 fit the admin
/// API's 64 KiB body limit with room to spare.
pub const MAX_HASHES_PER_LOOKUP: usize = 500;

/// What the public endpoint answers: the same for every key, live, dead or
/// unknown, so it tells nobody which keys exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicReport {
    Received,
    /// Over [`PUBLIC_REPORTS_PER_MINUTE`]; nothing was looked at.
    TooMany {
        retry_after_secs: u64,
    },
}

impl Admin {
    /// The keys whose hashes are `hashes`, among those the caller may see:
    /// how `keygate keys scan --check` learns which found keys are live
    /// without sending a key over the wire. Deleted keys are listed too
    /// (as `deleted`); a hash of nothing the caller may see is left out.
    pub async fn keys_by_hash(&self, actor: &Actor, hashes: &[KeyHash]) -> Result<Vec<ApiKey>, AdminError> {
        if hashes.is_empty() || hashes.len() > MAX_HASHES_PER_LOOKUP {
            return Err(AdminError::validation(
                "hashes",
                format!("give 1 to {MAX_HASHES_PER_LOOKUP} hashes"),
            ));
        }
        let mut found = Vec::new();
        for hash in hashes {
            if let Some((key, _)) = self.context.store().find_key_by_hash(hash).await? {
                if actor.can_see(&key.workspace_id) {
                    found.push(key);
                }
            }
        }
        Ok(found)
    }

    /// The newest leak report of a key the caller has already read (and so
    /// may see): its `key.leaked` audit event, for the key page's banner.
    pub async fn last_leak_report(&self, key: &ApiKey) -> Result<Option<AuditEvent>, AdminError> {
        Ok(self.context.store().last_audit_event(&key.id, "key.leaked").await?)
    }

    /// A report from anyone (`leaks.report_path` on the data plane), counted
    /// per client address on the rate limiter (shared by every node on
    /// Redis), then acted on as GitHub's are. If the limiter cannot decide,
    /// the report is taken: losing one costs more than one more report.
    pub async fn report_leak_publicly(
        &self,
        presented: &str,
        url: Option<&str>,
        client: IpAddr,
    ) -> Result<PublicReport, AdminError> {
        let minute = 60_000;
        let check = LimitCheck::new(
            CounterKey::new(format!("leak-report:{client}"), "leak-reports", minute),
            Rule::new(PUBLIC_REPORTS_PER_MINUTE, minute),
        );
        let now_ms = u64::try_from(self.context.now().timestamp_millis()).unwrap_or_default();
        let decided = self
            .verifier
            .limiter()
            .check(&[check], 1, Charge::Consume, now_ms)
            .await;
        if let Ok(decision) = decided {
            if !decision.allowed {
                let retry_after_secs = decision.retry_after_secs().unwrap_or(60);
                return Ok(PublicReport::TooMany { retry_after_secs });
            }
        }
        let report = LeakReport {
            reporter: "public report",
            url,
            source: None,
            ip: Some(client),
        };
        self.report_leak(presented, report).await?;
        Ok(PublicReport::Received)
    }

    /// Acts on a report that `presented` was found in public. Only a live
    /// key changes; every report is audited with its URL: a key of this
    /// deployment as `key.leaked` (published to webhooks), anything else as
    /// `leak.reported` (no workspace: the operator's).
    pub async fn report_leak(&self, presented: &str, report: LeakReport<'_>) -> Result<LeakVerdict, AdminError> {
        let now = self.context.now();
        let parsed = self.verifier.key_format().parse(presented).ok();
        let found = match parsed {
            Some(parsed) => self.context.store().find_key_by_hash(&parsed.hash()).await?,
            None => None,
        };
        let Some((key, workspace)) = found else {
            let token = parsed.map(|parsed| parsed.hash().to_hex());
            let details = json!({"url": report.url, "source": report.source, "token_sha256": token});
            let event = self.leak_event(&report, "leak.reported", None, details, now);
            self.context.store().record_audit(&event).await?;
            return Ok(LeakVerdict::Unknown);
        };
        if key.status(now) != KeyStatus::Active {
            let details = json!({"url": report.url, "source": report.source, "action": "none"});
            let event = self.leak_event(&report, "key.leaked", Some(&key), details, now);
            self.context.store().record_audit(&event).await?;
            return Ok(LeakVerdict::Dead);
        }
        // The workspace's own policy, else the config's (`leaks.on_report`).
        let policy = workspace.leak_policy.unwrap_or(self.settings.on_leak);
        let details = json!({"url": report.url, "source": report.source, "action": action_of(policy)});
        let event = self.leak_event(&report, "key.leaked", Some(&key), details, now);
        let store = self.context.store();
        match policy {
            OnLeak::Revoke => {
                let reason = format!("leaked: reported by {}", report.reporter);
                store.revoke_key(&key.id, now, Some(&reason), &event).await?;
            }
            OnLeak::Expire => {
                let until = later("leaks.grace", now, self.settings.leak_grace)?;
                let mut expiring = key.clone();
                expiring.expires_at = Some(key.expires_at.map_or(until, |at| at.min(until)));
                store.update_key(&expiring, &event).await?;
            }
            OnLeak::Notify => store.update_key(&key, &event).await?,
        }
        self.verifier.forget_key(&key.hash);
        Ok(LeakVerdict::Live)
    }

    /// The audit event of one reported token, by the reporter: about the
    /// key it is, or (no key) about the report alone, in no workspace.
    fn leak_event(
        &self,
        report: &LeakReport<'_>,
        action: &str,
        key: Option<&ApiKey>,
        details: serde_json::Value,
        now: chrono::DateTime<chrono::Utc>,
    ) -> AuditEvent {
        AuditEvent {
            id: self.context.new_id(AUDIT_PREFIX, now),
            at: now,
            actor: report.reporter.to_owned(),
            actor_ip: report.ip.map(|ip| ip.to_string()),
            action: action.to_owned(),
            object_type: if key.is_some() { "key" } else { "leak" }.to_owned(),
            object_id: key.map(|key| key.id.clone()).unwrap_or_default(),
            workspace_id: key.map(|key| key.workspace_id.clone()),
            details,
        }
    }
}
