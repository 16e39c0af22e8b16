//! Limit specifications as written in plans and overrides: `{resource, requests, per}`.
//!
//! This module only validates and carries them; enforcement (rolling windows,
//! atomic multi-limit decisions) belongs to the rate-limit layer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::{format_duration, parse_duration};

pub const DEFAULT_RESOURCE: &str = "default";
/// Most limits one workspace or key override may hold.
pub const MAX_LIMITS: usize = 32;
/// Most requests one limit may allow: the largest integer PostgreSQL and the
/// OpenAPI document (`int64`) hold.
pub const MAX_REQUESTS: u64 = i64::MAX as u64;

/// Who shares a limit's counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// Per key lineage: rotations share the counter.
    #[default]
    Key,
    /// One counter for every key of the workspace.
    Workspace,
}

/// Whether a limit refuses (`enforce`) or is only counted and reported
/// (`shadow`: an operator watches a stricter limit before switching it on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    #[default]
    Enforce,
    Shadow,
}

impl Enforcement {
    pub fn is_enforce(&self) -> bool {
        *self == Self::Enforce
    }
}

/// A limit as written by people: `per` is a duration string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    #[serde(default = "default_resource")]
    pub resource: String,
    pub requests: u64,
    pub per: String,
    #[serde(default)]
    pub scope: LimitScope,
    #[serde(default, skip_serializing_if = "Enforcement::is_enforce")]
    pub mode: Enforcement,
}

fn default_resource() -> String {
    DEFAULT_RESOURCE.to_owned()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("`requests` must be at least 1")]
    ZeroRequests,
    #[error("`requests` must be at most 9223372036854775807")]
    TooManyRequests,
    #[error("{0}")]
    Window(#[from] crate::duration::DurationError),
    #[error("`per` must be at least 1s")]
    WindowTooShort,
    #[error("resource `{0}` must be 1 to 64 characters of a-z, 0-9, `_` and `-`")]
    Resource(String),
    #[error("at most 32 limits are allowed")]
    TooMany,
    #[error("two limits for resource `{resource}` per {per} with the same scope; keep one")]
    Duplicate { resource: String, per: String },
    #[error("concurrency `max` for `{0}` must be at least 1")]
    ZeroConcurrency(String),
    #[error("credits: {0}")]
    Credits(#[from] crate::credits::CreditError),
}

/// At most `max` requests of `resource` in flight per key lineage (WebSocket
/// connections, long downloads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySpec {
    #[serde(default = "default_resource")]
    pub resource: String,
    pub max: u32,
}

/// A plan from the config: the limits every workspace on it gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plan {
    pub limits: Vec<LimitSpec>,
    pub concurrency: Vec<ConcurrencySpec>,
    /// Which limit the `X-RateLimit-*` headers describe for this plan's
    /// keys; unset: `headers.describe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub describe: Option<crate::ratelimit::Describe>,
    /// Credits for each key of a workspace on this plan
    /// (crates/keygate-core/src/credits.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits: Option<crate::credits::CreditSpec>,
}

impl Plan {
    pub fn validate(&self) -> Result<Plan, LimitError> {
        if let Some(zero) = self.concurrency.iter().find(|c| c.max == 0) {
            return Err(LimitError::ZeroConcurrency(zero.resource.clone()));
        }
        if let Some(bad) = self.concurrency.iter().find(|c| !is_resource_name(&c.resource)) {
            return Err(LimitError::Resource(bad.resource.clone()));
        }
        Ok(Plan {
            limits: validate_limits(&self.limits)?,
            concurrency: self.concurrency.clone(),
            describe: self.describe,
            credits: self.credits.as_ref().map(|c| c.validate()).transpose()?,
        })
    }

    pub fn concurrency_for(&self, resource: &str) -> Option<u32> {
        self.concurrency.iter().find(|c| c.resource == resource).map(|c| c.max)
    }
}

/// The limits a request to `resource` counts against. Layers, most specific
/// first: the key's overrides, the workspace's overrides, the plan. For each
/// resource the first layer that names it wins entirely. A resource no layer
/// names falls back to the `default` resource's limits.
pub fn effective_limits<'a>(
    plan: &'a [LimitSpec],
    workspace: &'a [LimitSpec],
    key: &'a [LimitSpec],
    resource: &str,
) -> Vec<&'a LimitSpec> {
    let for_resource = |resource: &str| -> Vec<&'a LimitSpec> {
        [key, workspace, plan]
            .into_iter()
            .map(|layer| layer.iter().filter(|l| l.resource == resource).collect::<Vec<_>>())
            .find(|found| !found.is_empty())
            .unwrap_or_default()
    };
    let found = for_resource(resource);
    if found.is_empty() && resource != DEFAULT_RESOURCE {
        return for_resource(DEFAULT_RESOURCE);
    }
    found
}

impl LimitSpec {
    /// The window as a duration; validated by [`validate_limits`].
    pub fn window(&self) -> Result<Duration, LimitError> {
        let window = parse_duration(&self.per)?;
        if window < Duration::from_secs(1) {
            return Err(LimitError::WindowTooShort);
        }
        Ok(window)
    }
}

/// Validates limits and normalises their windows (`60m` -> `1h`).
pub fn validate_limits(limits: &[LimitSpec]) -> Result<Vec<LimitSpec>, LimitError> {
    if limits.len() > MAX_LIMITS {
        return Err(LimitError::TooMany);
    }
    let validated: Vec<LimitSpec> = limits
        .iter()
        .map(|limit| {
            if limit.requests == 0 {
                return Err(LimitError::ZeroRequests);
            }
            if limit.requests > MAX_REQUESTS {
                return Err(LimitError::TooManyRequests);
            }
            if !is_resource_name(&limit.resource) {
                return Err(LimitError::Resource(limit.resource.clone()));
            }
            Ok(LimitSpec {
                per: format_duration(limit.window()?),
                ..limit.clone()
            })
        })
        .collect::<Result<_, _>>()?;
    // Two limits on one counter would share it; refuse rather than guess.
    for (i, a) in validated.iter().enumerate() {
        if validated[..i]
            .iter()
            .any(|b| a.resource == b.resource && a.per == b.per && a.scope == b.scope && a.mode == b.mode)
        {
            return Err(LimitError::Duplicate {
                resource: a.resource.clone(),
                per: a.per.clone(),
            });
        }
    }
    Ok(validated)
}

fn is_resource_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(requests: u64, per: &str) -> LimitSpec {
        LimitSpec {
            resource: DEFAULT_RESOURCE.into(),
            requests,
            per: per.into(),
            scope: LimitScope::Key,
            mode: Enforcement::Enforce,
        }
    }

    #[test]
    fn the_most_specific_layer_wins_per_resource() {
        let plan = [
            spec(100, "1m"),
            LimitSpec {
                resource: "uploads".into(),
                ..spec(100, "1h")
            },
        ];
        let workspace = [spec(1000, "1m")];
        let key = [LimitSpec {
            resource: "uploads".into(),
            ..spec(5, "1h")
        }];
        let requests = |v: Vec<&LimitSpec>| v.iter().map(|l| l.requests).collect::<Vec<_>>();
        assert_eq!(requests(effective_limits(&plan, &workspace, &key, "default")), [1000]);
        assert_eq!(requests(effective_limits(&plan, &workspace, &key, "uploads")), [5]);
        assert_eq!(requests(effective_limits(&plan, &[], &[], "uploads")), [100]);
        assert_eq!(
            requests(effective_limits(&plan, &[], &[], "exports")),
            [100],
            "falls back to default"
        );
        assert!(effective_limits(&[], &[], &[], "default").is_empty());
    }

    #[test]
    fn duplicates_and_bad_plans_are_refused() {
        assert!(matches!(
            validate_limits(&[spec(1, "1m"), spec(2, "60s")]),
            Err(LimitError::Duplicate { .. })
        ));
        let both_scopes = [
            spec(1, "1m"),
            LimitSpec {
                scope: LimitScope::Workspace,
                ..spec(2, "1m")
            },
        ];
        assert!(validate_limits(&both_scopes).is_ok());
        let plan = Plan {
            limits: vec![],
            concurrency: vec![ConcurrencySpec {
                resource: "websocket".into(),
                max: 0,
            }],
            describe: None,
            credits: None,
        };
        assert!(matches!(plan.validate(), Err(LimitError::ZeroConcurrency(_))));
    }

    #[test]
    fn validates_and_normalises() {
        assert_eq!(validate_limits(&[spec(100, "60m")]).unwrap()[0].per, "1h");
        assert_eq!(validate_limits(&[spec(0, "1m")]), Err(LimitError::ZeroRequests));
        assert!(validate_limits(&[spec(MAX_REQUESTS, "1m")]).is_ok());
        assert_eq!(
            validate_limits(&[spec(MAX_REQUESTS + 1, "1m")]),
            Err(LimitError::TooManyRequests)
        );
        assert!(matches!(validate_limits(&[spec(1, "5x")]), Err(LimitError::Window(_))));
        assert_eq!(validate_limits(&[spec(1, "0s")]), Err(LimitError::WindowTooShort));
        let bad_resource = LimitSpec {
            resource: "Up loads".into(),
            ..spec(1, "1m")
        };
        assert!(matches!(validate_limits(&[bad_resource]), Err(LimitError::Resource(_))));
    }
}
