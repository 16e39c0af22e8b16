//! Rate-limit headers and JSON: `X-RateLimit-*` for the limit the header
//! policy picks (the closest to exhaustion by default), and optionally the IETF draft-11 `RateLimit-Policy` and
//! `RateLimit` fields for every limit.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use keygate_core::duration::format_duration;
use keygate_core::ratelimit::LimitState;
use keygate_engine::RateLimits;
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::RateLimitHeaderStyle;

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const X_SHADOW_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-shadow-limit");
const X_SHADOW_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-shadow-remaining");
const X_SHADOW_RESET: HeaderName = HeaderName::from_static("x-ratelimit-shadow-reset");

fn seconds_until(at_ms: u64, now_ms: u64) -> u64 {
    at_ms.saturating_sub(now_ms).div_ceil(1000)
}

fn policy_name(resource: &str, limit: &LimitState) -> String {
    format!(
        "{resource}-{}",
        format_duration(std::time::Duration::from_millis(limit.rule.window_ms))
    )
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whether `name` is one of the headers [`add_headers`] writes besides the
/// credits one, which must not share a name with them (config.rs): one
/// would hide the other.
pub fn is_rate_limit_header(name: &HeaderName) -> bool {
    [
        X_RATELIMIT_LIMIT,
        X_RATELIMIT_REMAINING,
        X_RATELIMIT_RESET,
        X_SHADOW_LIMIT,
        X_SHADOW_REMAINING,
        X_SHADOW_RESET,
        RATELIMIT_POLICY,
        RATELIMIT,
    ]
    .contains(name)
}

/// Where [`add_headers`] writes: a `HeaderMap` on hyper's path, or an
/// answer head being written as bytes on the fast path
/// (gateway/raw.rs), which then needs no allocation per header.
pub trait HeaderSink {
    /// Sets `name` to a number.
    fn number(&mut self, name: &HeaderName, value: u64);
    /// Sets `name` to a text, left out if it is not a valid header value.
    fn text(&mut self, name: &HeaderName, value: &str);
}

impl HeaderSink for HeaderMap {
    fn number(&mut self, name: &HeaderName, value: u64) {
        self.insert(name.clone(), HeaderValue::from(value));
    }

    fn text(&mut self, name: &HeaderName, value: &str) {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.insert(name.clone(), value);
        }
    }
}

/// The limit the `X-RateLimit-*` headers describe, for a request's span.
pub fn tightest(limits: &RateLimits, style: &RateLimitHeaderStyle) -> Option<crate::telemetry::Tightest> {
    let described = limits.decision.described(limits.describe.unwrap_or(style.describe))?;
    Some(crate::telemetry::Tightest {
        limit: described.rule.requests,
        remaining: described.remaining,
    })
}

pub fn add_headers(headers: &mut impl HeaderSink, limits: &RateLimits, style: &RateLimitHeaderStyle) {
    let decision = &limits.decision;
    if let Some(balance) = decision.balance() {
        headers.number(&style.credits, balance.remaining);
    }
    if style.x_ratelimit {
        if let Some(described) = decision.described(limits.describe.unwrap_or(style.describe)) {
            // Every identified request gets these: numbers straight into the
            // header value, no `String` in between.
            headers.number(&X_RATELIMIT_LIMIT, described.rule.requests);
            headers.number(&X_RATELIMIT_REMAINING, described.remaining);
            headers.number(&X_RATELIMIT_RESET, described.reset_ms.div_ceil(1000));
        }
    }
    // Opt-in (`headers.shadow`): a client trying a stricter plan sees where it would stand.
    if let Some(shadow) = decision.tightest_shadow().filter(|_| style.shadow) {
        headers.number(&X_SHADOW_LIMIT, shadow.rule.requests);
        headers.number(&X_SHADOW_REMAINING, shadow.remaining);
        headers.number(&X_SHADOW_RESET, shadow.reset_ms.div_ceil(1000));
    }
    if style.ietf && decision.enforced().next().is_some() {
        // Shadow limits are not the client's business: only enforced ones are listed.
        let named = || {
            decision
                .limits
                .iter()
                .zip(limits.checks.iter().map(|c| c.key.resource()))
                .filter(|(limit, _)| !limit.rule.shadow && !limit.rule.is_balance())
        };
        let policy: Vec<String> = named()
            .map(|(l, r)| {
                format!(
                    "\"{}\";q={};w={}",
                    policy_name(r, l),
                    l.rule.requests,
                    l.rule.window_ms / 1000
                )
            })
            .collect();
        let current: Vec<String> = named()
            .map(|(l, r)| {
                format!(
                    "\"{}\";r={};t={}",
                    policy_name(r, l),
                    l.remaining,
                    seconds_until(l.reset_ms, decision.now_ms)
                )
            })
            .collect();
        headers.text(&RATELIMIT_POLICY, &policy.join(", "));
        headers.text(&RATELIMIT, &current.join(", "));
    }
}

/// One limit as `whoami` and the verify API show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitView {
    pub resource: String,
    pub limit: u64,
    /// `1m`, `1h`, ...
    pub window: String,
    pub remaining: u64,
    /// Unix seconds at which the limit next regains capacity.
    pub reset: u64,
    /// `shadow` for a limit that is counted but never refuses; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
}

pub fn views(limits: &RateLimits) -> Vec<LimitView> {
    limits
        .decision
        .limits
        .iter()
        .zip(limits.checks.iter().map(|c| c.key.resource()))
        .filter(|(l, _)| !l.rule.is_balance())
        .map(|(l, resource)| LimitView {
            resource: resource
                .strip_suffix(keygate_engine::SHADOW_SUFFIX)
                .unwrap_or(resource)
                .to_string(),
            mode: l.rule.shadow.then_some("shadow"),
            limit: l.rule.requests,
            window: format_duration(std::time::Duration::from_millis(l.rule.window_ms)),
            remaining: l.remaining,
            reset: l.reset_ms.div_ceil(1000),
        })
        .collect()
}

/// A key's credits as `whoami` and the verify API show them, after this request.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsView {
    /// What is left to spend now.
    pub remaining: u64,
    /// When the balance is next set back to its refill amount; absent when it never refills.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refill_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The key's balance, if it has credits.
pub fn credits_view(limits: &RateLimits) -> Option<CreditsView> {
    let balance = keygate_engine::CreditBalance::of(&limits.decision)?;
    Some(CreditsView {
        remaining: balance.remaining,
        refill_at: balance.refill_at,
    })
}
