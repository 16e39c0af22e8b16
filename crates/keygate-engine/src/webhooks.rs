//! Webhook endpoints (admin operations) and the delivery loop.
//!
//! Delivery reads only the outbox: events are fanned out to one delivery row
//! per matching endpoint, a node leases due rows, sends them signed, and
//! writes each attempt's result under its lease. A node that dies mid-send
//! leaves a lease that lapses, and another node (or itself, restarted) sends
//! again; nothing is held only in memory. The delivery guarantee is at least
//! once with a stable `webhook-id`; a repeat happens only if a node dies
//! between the receiver's answer and recording it.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keygate_core::webhook::{retry_delay, WebhookSecret};
use keygate_store::{ClaimedDelivery, DeliveryAttempt, DeliveryNext, StoreError};
use regex::Regex;

use crate::context::Context;
use crate::AdminError;

pub const MAX_URL_LEN: usize = 2_000;
pub const MAX_DESCRIPTION_LEN: usize = 500;
/// Events fanned out per round.
const FAN_OUT_BATCH: u32 = 500;
/// A lease outlives the send's timeout by this much, so a slow answer is
/// recorded before another node may take the delivery over.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// `[webhooks]` of the config.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// The longest one attempt may take.
    pub timeout: Duration,
    /// The wait after the first failed attempt; it doubles after each.
    pub retry_base: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// A delivery still failing this long after its event is given up.
    pub give_up_after: chrono::Duration,
    /// How often a node looks for due deliveries.
    pub poll_interval: Duration,
    /// Deliveries one node sends at once.
    pub batch: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            give_up_after: chrono::Duration::hours(24),
            poll_interval: Duration::from_secs(1),
            batch: 32,
        }
    }
}

/// One signed POST to a receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Sends a webhook and returns the receiver's HTTP status, or why no answer
/// came. The HTTP layer implements it; tests can too.
#[async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    async fn send(&self, request: WebhookRequest, timeout: Duration) -> Result<u16, String>;
}

#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    pub url: String,
    /// `None`: a global endpoint, for every workspace's events (admin keys only).
    pub workspace_id: Option<String>,
    pub events: Vec<String>,
    pub description: Option<String>,
}

/// What one delivery round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryRound {
    pub delivered: u32,
    pub failed: u32,
    pub gave_up: u32,
}

impl DeliveryRound {
    pub fn attempts(&self) -> u32 {
        self.delivered + self.failed + self.gave_up
    }
}

/// The URL grammar of [`keygate_core::grammar::webhook_url`], compiled once.
static WEBHOOK_URL: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(&keygate_core::grammar::webhook_url()).ok());

/// The URL a webhook endpoint is created with, normalised. It must fit the
/// grammar the OpenAPI document states, and parse as a URL: a client that
/// follows the document is never refused, and one that does not is.
pub fn validate_url(url: &str) -> Result<String, AdminError> {
    // Characters as sent, as the document's `maxLength` counts them.
    if url.chars().count() > MAX_URL_LEN {
        return Err(AdminError::validation(
            "url",
            format!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    let url = url.trim();
    if !WEBHOOK_URL.as_ref().is_some_and(|grammar| grammar.is_match(url)) {
        return Err(AdminError::validation(
            "url",
            "must be http:// or https://, a host name (ASCII letters, digits and single hyphens), \
             an IPv4 or [IPv6] address, an optional port, then a path; no user or password",
        ));
    }
    let parsed = url::Url::parse(url).map_err(|e| AdminError::validation("url", format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(AdminError::validation(
            "url",
            "must be an http:// or https:// URL with a host",
        ));
    }
    Ok(parsed.to_string())
}

pub(crate) fn validate_description(description: Option<String>) -> Result<Option<String>, AdminError> {
    // Counted as sent, as the document's `maxLength` counts.
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN)
    {
        return Err(AdminError::validation(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    Ok(description.map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()))
}

/// Webhook delivery: the rounds of the background work.
pub struct Deliveries {
    context: Arc<Context>,
    settings: WebhookSettings,
}

impl Deliveries {
    pub(crate) fn new(context: Arc<Context>, settings: WebhookSettings) -> Self {
        Self { context, settings }
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// One round: fan out new events, lease the due deliveries, send them
    /// concurrently and record every attempt.
    pub async fn deliver(&self, sender: &dyn WebhookSender) -> Result<DeliveryRound, StoreError> {
        let now = self.context.now();
        self.context
            .background_store()
            .fan_out_events(now, FAN_OUT_BATCH)
            .await?;
        let settings = &self.settings;
        let lease = chrono::Duration::from_std(settings.timeout + LEASE_MARGIN).unwrap_or(chrono::Duration::MAX);
        let token = self.context.new_id("lease", now);
        let claimed = self
            .context
            .background_store()
            .claim_deliveries(now, now + lease, &token, settings.batch)
            .await?;
        let results = futures::future::join_all(
            in_order_per_endpoint(&claimed)
                .into_iter()
                .map(|deliveries| self.attempt_in_turn(sender, deliveries)),
        )
        .await;
        let mut round = DeliveryRound::default();
        for result in results.into_iter().flatten() {
            match result? {
                DeliveryNext::Delivered => round.delivered += 1,
                DeliveryNext::RetryAt(_) => round.failed += 1,
                DeliveryNext::GiveUp => round.gave_up += 1,
            }
        }
        Ok(round)
    }

    /// One endpoint's deliveries, one after another: a receiver sees the
    /// first attempts of its events in the order the events happened.
    async fn attempt_in_turn(
        &self,
        sender: &dyn WebhookSender,
        deliveries: Vec<&ClaimedDelivery>,
    ) -> Vec<Result<DeliveryNext, StoreError>> {
        let mut results = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            results.push(self.attempt(sender, delivery).await);
        }
        results
    }

    async fn attempt(
        &self,
        sender: &dyn WebhookSender,
        delivery: &ClaimedDelivery,
    ) -> Result<DeliveryNext, StoreError> {
        let sent_at = self.context.now();
        let timestamp = sent_at.timestamp();
        // Opened here, not earlier: a key file read again since the claim
        // (a rotation) is used at once.
        let secret = WebhookSecret::open(&delivery.secret, &self.context.keyring(), &delivery.endpoint_id);
        let started = Instant::now();
        let answer = match secret {
            Ok(secret) => {
                let request = signed_request(delivery, &secret, timestamp);
                sender.send(request, self.settings.timeout).await
            }
            // Retried like any failure: the keyring may hold the key by then.
            Err(err) => Err(format!("not sent: the endpoint's signing secret does not open ({err})")),
        };
        let took = started.elapsed();
        let (status_code, error) = match answer {
            Ok(code) if (200..300).contains(&code) => (Some(code), None),
            Ok(code) => (Some(code), Some(format!("the receiver answered HTTP {code}"))),
            Err(error) => (None, Some(error)),
        };
        let next = if error.is_none() {
            DeliveryNext::Delivered
        } else {
            self.next_try(delivery, self.context.now())
        };
        let attempt = DeliveryAttempt {
            attempt: delivery.attempts + 1,
            at: sent_at,
            status_code,
            error,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        };
        let result = match next {
            DeliveryNext::Delivered => "delivered",
            DeliveryNext::RetryAt(_) => "failed",
            DeliveryNext::GiveUp => "gave_up",
        };
        self.context.metrics().webhook_attempt(result, took);
        if !self
            .context
            .background_store()
            .finish_delivery(&delivery.id, &delivery.lease_token, &attempt, next)
            .await?
        {
            tracing::warn!(delivery = %delivery.id, "a webhook lease lapsed before its result was written");
        }
        Ok(next)
    }

    /// Backoff after a failure, with one last try at the give-up time.
    fn next_try(&self, delivery: &ClaimedDelivery, now: DateTime<Utc>) -> DeliveryNext {
        let settings = &self.settings;
        let give_up_at = delivery.event_at + settings.give_up_after;
        if now >= give_up_at {
            return DeliveryNext::GiveUp;
        }
        let wait = retry_delay(delivery.attempts + 1, settings.retry_base, settings.retry_max);
        let retry_at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        DeliveryNext::RetryAt(retry_at.min(give_up_at))
    }
}

/// A delivery as Standard Webhooks receivers expect it, signed.
fn signed_request(delivery: &ClaimedDelivery, secret: &WebhookSecret, timestamp: i64) -> WebhookRequest {
    WebhookRequest {
        url: delivery.url.clone(),
        headers: vec![
            ("content-type", "application/json".to_owned()),
            ("webhook-id", delivery.event_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                secret.sign(&delivery.event_id, timestamp, &delivery.body),
            ),
        ],
        body: delivery.body.clone(),
    }
}

/// The claimed deliveries grouped by endpoint, each group oldest event
/// first (issue 15, section 4): endpoints are sent to in parallel, one
/// endpoint's deliveries in turn.
fn in_order_per_endpoint(claimed: &[ClaimedDelivery]) -> Vec<Vec<&ClaimedDelivery>> {
    let mut by_endpoint: BTreeMap<&str, Vec<&ClaimedDelivery>> = BTreeMap::new();
    for delivery in claimed {
        by_endpoint
            .entry(delivery.endpoint_id.as_str())
            .or_default()
            .push(delivery);
    }
    let mut groups: Vec<Vec<&ClaimedDelivery>> = by_endpoint.into_values().collect();
    for group in &mut groups {
        group.sort_by(|a, b| (a.event_at, &a.event_id).cmp(&(b.event_at, &b.event_id)));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_with_a_host() {
        assert_eq!(
            validate_url(" https://example.com/hook ").unwrap(),
            "https://example.com/hook"
        );
        for bad in [
            "ftp://example.com",
            "not a url",
            "https://",
            "file:///etc/passwd",
            "mailto:a@b.c",
        ] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
        assert!(validate_url(&format!("https://example.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn descriptions_are_trimmed_and_bounded() {
        assert_eq!(validate_description(Some("  ".into())).unwrap(), None);
        assert_eq!(
            validate_description(Some(" ops ".into())).unwrap().as_deref(),
            Some("ops")
        );
        assert!(validate_description(Some("x".repeat(MAX_DESCRIPTION_LEN + 1))).is_err());
    }
}
