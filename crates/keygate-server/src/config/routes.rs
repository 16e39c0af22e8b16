//! `[[routes]]`: what the file says of a route ([`RouteConfig`]) and what
//! the gateway is given ([`Route`]), with the checks between them.

use std::time::Duration;

use keygate_core::path::{canonicalize, PathRules};
use keygate_core::ratelimit::MAX_COST;
use keygate_core::scope::validate_scopes;
use serde::{Deserialize, Serialize};

use super::values::{ConfigDuration, ConfigSize, PositiveDuration};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub path: String,
    #[serde(default)]
    pub methods: Vec<String>,
    /// One URL, or several targets to balance between.
    pub upstream: Option<UpstreamUrls>,
    /// How requests are spread over several targets.
    #[serde(default)]
    pub balance: Balance,
    /// Consecutive connect failures or timeouts after which a target is left out.
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// How long a left-out target stays out before one request tries it again.
    #[serde(default = "default_eject_for")]
    pub eject_for: ConfigDuration,
    /// The rate-limit resource requests count against (`default` if neither
    /// this nor `resources` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Several resources, every limit of each decided as one (an upload that
    /// is also an API request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    /// What one request spends of each rate limit (an upload may cost 10).
    #[serde(default = "default_cost")]
    pub cost: u64,
    /// A response header in which the upstream reports what the request
    /// cost besides `cost`; charged to the limits, stripped from the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_header: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "yes")]
    pub auth: bool,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub preserve_host: bool,
    /// How long the upstream may take to send its response headers (the
    /// request body included); the response body then streams without limit.
    #[serde(default = "default_upstream_timeout")]
    pub timeout: PositiveDuration,
    /// How long connecting to the upstream may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: PositiveDuration,
    /// Overrides `server.max_body_size` for this route.
    #[serde(default)]
    pub max_body_size: Option<ConfigSize>,
    /// Forward `X-API-Key` and `Authorization: Bearer` to the upstream (stripped by default).
    #[serde(default)]
    pub forward_key: bool,
    /// Active health checks of every target, besides the passive ones.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
}

/// `health_check = { path = "/healthz", interval = "5s" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "default_health_check_interval")]
    pub interval: PositiveDuration,
}

fn default_health_check_interval() -> PositiveDuration {
    PositiveDuration::secs(5)
}

/// A route's active health check, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Requested with `GET` on each target; a 2xx or 3xx answer passes.
    pub path: String,
    pub interval: Duration,
}

/// `upstream = "http://a:9000"` or `upstream = ["http://a:9000", "http://b:9000"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UpstreamUrls {
    One(String),
    Many(Vec<String>),
}

impl UpstreamUrls {
    fn urls(&self) -> &[String] {
        match self {
            Self::One(url) => std::slice::from_ref(url),
            Self::Many(urls) => urls,
        }
    }
}

/// How a route with several targets picks one for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight.
    LeastConnections,
}

fn default_eject_after() -> u32 {
    3
}

fn default_eject_for() -> ConfigDuration {
    ConfigDuration::secs(10)
}

fn default_connect_timeout() -> PositiveDuration {
    PositiveDuration::secs(5)
}

fn yes() -> bool {
    true
}

fn default_upstream_timeout() -> PositiveDuration {
    PositiveDuration::secs(30)
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    pub methods: Vec<axum::http::Method>,
    /// At least one; each an `http://` URL with a host.
    pub upstreams: Vec<axum::http::Uri>,
    pub balance: Balance,
    pub eject_after: u32,
    pub eject_for: Duration,
    /// At least one, no repeats.
    pub resources: Vec<String>,
    /// At least 1.
    pub cost: u64,
    pub cost_header: Option<axum::http::HeaderName>,
    pub scopes: Vec<String>,
    pub auth: bool,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: u64,
    pub forward_key: bool,
    pub health_check: Option<HealthCheck>,
}

/// How errors name a route: its index and path.
pub(super) fn route_name(index: impl std::fmt::Display, path: &str) -> String {
    format!("routes[{index}] (path \"{path}\")")
}

pub(super) fn validate_route(
    index: usize,
    route: &RouteConfig,
    default_max_body: u64,
    path_rules: PathRules,
) -> Result<Route, (String, String)> {
    let name = route_name(index, &route.path);
    let fail = |field: &str, message: String| (format!("{name}.{field}"), message);
    if !route.path.starts_with('/') {
        return Err(fail("path", "must start with `/`".into()));
    }
    // Kept in the form requests are matched in: `/a/./b` is `/a/b`, `/café` is `/caf%C3%A9`.
    let path = canonicalize(&route.path, path_rules).map_err(|reason| fail("path", reason.to_string()))?;
    let urls = route.upstream.as_ref().map_or(&[][..], UpstreamUrls::urls);
    if urls.is_empty() {
        return Err(fail("upstream", "is required".into()));
    }
    let upstreams = urls
        .iter()
        .map(|text| {
            let upstream: axum::http::Uri = text
                .parse()
                .map_err(|_| fail("upstream", format!("`{text}` is not a URL")))?;
            if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
                return Err(fail("upstream", format!("`{text}` must be an http:// URL with a host")));
            }
            Ok(upstream)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if route.eject_after == 0 {
        return Err(fail("eject_after", "must be positive".into()));
    }
    let methods = route
        .methods
        .iter()
        .map(|m| {
            axum::http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| fail("methods", format!("`{m}` is not an HTTP method")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let scopes = validate_scopes(&route.scopes).map_err(|e| fail("scopes", e.to_string()))?;
    let resources = route_resources(route).map_err(|(field, message)| fail(field, message))?;
    let cost_header = route
        .cost_header
        .as_deref()
        .map(|name| {
            axum::http::HeaderName::try_from(name)
                .map_err(|_| fail("cost_header", format!("`{name}` is not a header name")))
        })
        .transpose()?;
    if route.cost == 0 {
        return Err(fail(
            "cost",
            "must be at least 1 (a route that counts nothing needs no limits)".into(),
        ));
    }
    if route.cost > MAX_COST {
        return Err(fail("cost", format!("must be at most {MAX_COST}")));
    }
    let health_check = route
        .health_check
        .as_ref()
        .map(|check| {
            if !check.path.starts_with('/') {
                return Err(fail("health_check.path", "must start with `/`".into()));
            }
            Ok(HealthCheck {
                path: check.path.clone(),
                interval: check.interval.get(),
            })
        })
        .transpose()?;
    let max_body_bytes = route.max_body_size.map_or(default_max_body, ConfigSize::bytes);
    Ok(Route {
        path: path.trim_end_matches('/').to_owned(),
        methods,
        upstreams,
        balance: route.balance,
        eject_after: route.eject_after,
        eject_for: route.eject_for.get(),
        resources,
        cost: route.cost,
        cost_header,
        scopes,
        auth: route.auth,
        strip_prefix: route.strip_prefix,
        preserve_host: route.preserve_host,
        timeout: route.timeout.get(),
        connect_timeout: route.connect_timeout.get(),
        max_body_bytes,
        forward_key: route.forward_key,
        health_check,
    })
}

fn default_cost() -> u64 {
    1
}

/// `resource = "x"` is `resources = ["x"]`; neither is `["default"]`.
fn route_resources(route: &RouteConfig) -> Result<Vec<String>, (&'static str, String)> {
    let resources = match (&route.resource, &route.resources) {
        (Some(_), Some(_)) => return Err(("resources", "give `resource` or `resources`, not both".into())),
        (Some(one), None) => vec![one.clone()],
        (None, Some(several)) => several.clone(),
        (None, None) => vec![keygate_core::limits::DEFAULT_RESOURCE.to_owned()],
    };
    let field = if route.resources.is_some() {
        "resources"
    } else {
        "resource"
    };
    if resources.is_empty() {
        return Err((field, "must name at least one resource".into()));
    }
    for (i, name) in resources.iter().enumerate() {
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err((field, format!("`{name}` is not a resource name")));
        }
        if resources[..i].contains(name) {
            return Err((field, format!("`{name}` is named twice")));
        }
    }
    Ok(resources)
}

/// The catch-all route `keygate serve --upstream URL` adds.
pub fn catch_all_route(upstream: &str) -> RouteConfig {
    RouteConfig {
        path: "/".into(),
        methods: vec![],
        upstream: Some(UpstreamUrls::One(upstream.to_owned())),
        balance: Balance::default(),
        eject_after: default_eject_after(),
        eject_for: default_eject_for(),
        resource: None,
        resources: None,
        cost: default_cost(),
        cost_header: None,
        scopes: vec![],
        auth: true,
        strip_prefix: false,
        preserve_host: false,
        timeout: default_upstream_timeout(),
        connect_timeout: default_connect_timeout(),
        max_body_size: None,
        forward_key: false,
        health_check: None,
    }
}
