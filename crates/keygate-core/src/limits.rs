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
}

fn default_resource() -> String {
    DEFAULT_RESOURCE.to_owned()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("`requests` must be at least 1")]
    ZeroRequests,
    #[error("{0}")]
    Window(#[from] crate::duration::DurationError),
    #[error("`per` must be at least 1s")]
    WindowTooShort,
    #[error("resource `{0}` must be 1 to 64 characters of a-z, 0-9, `_` and `-`")]
    Resource(String),
    #[error("at most 32 limits are allowed")]
    TooMany,
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
    limits
        .iter()
        .map(|limit| {
            if limit.requests == 0 {
                return Err(LimitError::ZeroRequests);
            }
            if !is_resource_name(&limit.resource) {
                return Err(LimitError::Resource(limit.resource.clone()));
            }
            Ok(LimitSpec {
                per: format_duration(limit.window()?),
                ..limit.clone()
            })
        })
        .collect()
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
        }
    }

    #[test]
    fn validates_and_normalises() {
        assert_eq!(validate_limits(&[spec(100, "60m")]).unwrap()[0].per, "1h");
        assert_eq!(validate_limits(&[spec(0, "1m")]), Err(LimitError::ZeroRequests));
        assert!(matches!(validate_limits(&[spec(1, "5x")]), Err(LimitError::Window(_))));
        assert_eq!(validate_limits(&[spec(1, "0s")]), Err(LimitError::WindowTooShort));
        let bad_resource = LimitSpec {
            resource: "Up loads".into(),
            ..spec(1, "1m")
        };
        assert!(matches!(validate_limits(&[bad_resource]), Err(LimitError::Resource(_))));
    }
}
