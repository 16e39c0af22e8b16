//! The data plane: find the route, authenticate, then answer (`/v1/whoami`) or
//! forward to the upstream. Everything here is translation; decisions are the
//! engine's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;
use keygate_core::error::ErrorInstance;
use keygate_core::limits::DEFAULT_RESOURCE;
use keygate_core::{ErrorCatalog, ErrorCode};
use keygate_engine::{CachedKey, Engine, RateLimits, Verified, VerifyRequest};
use keygate_limiter::Permit;
use serde_json::json;

use crate::config::{RateLimitHeaderStyle, Route};
use crate::http::error::render;
use crate::http::extract::{client_ip, credential, credential_rejection};
use crate::http::ratelimit::{add_headers, views};

pub const WHOAMI_PATH: &str = "/v1/whoami";

#[derive(Clone)]
pub struct GatewayState {
    pub engine: Arc<Engine>,
    pub catalog: Arc<ErrorCatalog>,
    pub headers: RateLimitHeaderStyle,
    pub routes: Arc<Vec<Route>>,
    pub trusted_proxies: Arc<Vec<IpNet>>,
    pub client: Client<HttpConnector, Body>,
}

impl GatewayState {
    pub fn new(
        engine: Arc<Engine>,
        catalog: ErrorCatalog,
        headers: RateLimitHeaderStyle,
        routes: Vec<Route>,
        trusted_proxies: Vec<IpNet>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            engine,
            catalog: Arc::new(catalog),
            headers,
            routes: Arc::new(routes),
            trusted_proxies: Arc::new(trusted_proxies),
            client,
        }
    }

    /// Longest path prefix wins (`/api` matches `/api` and `/api/x`, not
    /// `/apix`); a route with methods matches only those.
    fn route_for(&self, method: &Method, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.methods.is_empty() || r.methods.contains(method))
            .filter(|r| {
                path.strip_prefix(r.path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .max_by_key(|r| r.path.len())
    }

    fn error(&self, error: &ErrorInstance) -> Response {
        render(&self.catalog, error)
    }

    /// Adds the rate-limit headers of an identified key to any response.
    fn with_limits(&self, mut response: Response, limits: Option<&RateLimits>) -> Response {
        if let Some(limits) = limits {
            add_headers(response.headers_mut(), limits, self.headers);
        }
        response
    }
}

pub fn router(state: GatewayState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(
    State(gw): State<GatewayState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let route = gw.route_for(request.method(), request.uri().path());
    let is_whoami = route.is_none()
        && request.uri().path() == WHOAMI_PATH
        && matches!(*request.method(), Method::GET | Method::HEAD);
    if route.is_none() && !is_whoami {
        return gw.error(&ErrorCode::RouteNotFound.into());
    }
    let client = client_ip(peer, request.headers(), &gw.trusted_proxies);
    let required_scopes: &[String] = route.map_or(&[], |r| &r.scopes);
    let resource = route.map_or(DEFAULT_RESOURCE, |r| r.resource.as_str());
    let verified = if route.is_none_or(|r| r.auth) {
        match authenticate(&gw, request.headers(), client, required_scopes, resource).await {
            Ok(verified) => Some(verified),
            Err(response) => return response,
        }
    } else {
        None
    };
    match (route, verified) {
        (Some(route), verified) => forward(&gw, route, request, verified, client).await,
        (None, Some(verified)) => gw.with_limits(whoami(&verified), verified.limits.as_ref()),
        (None, None) => gw.error(&ErrorCode::RouteNotFound.into()),
    }
}

async fn authenticate(
    gw: &GatewayState,
    headers: &HeaderMap,
    client: IpAddr,
    required_scopes: &[String],
    resource: &str,
) -> Result<Verified, Response> {
    let presented = match credential(headers) {
        Ok(presented) => presented,
        Err(err) => return Err(gw.error(&credential_rejection(&gw.engine, err, client))),
    };
    let request = VerifyRequest {
        required_scopes,
        resource,
        ..VerifyRequest::new(presented, Some(client))
    };
    gw.engine
        .verify(request)
        .await
        .map_err(|rejection| gw.with_limits(gw.error(&rejection.error), rejection.limits.as_ref()))
}

/// `GET /v1/whoami`: the key's workspace and metadata, the "test your key" call.
fn whoami(verified: &Verified) -> Response {
    let key = &verified.key.key;
    let workspace = &verified.key.workspace;
    Json(json!({
        "key": {
            "id": key.id,
            "name": key.name,
            "environment": key.environment,
            "masked": key.hint,
            "scopes": key.scopes,
            "expires_at": key.expires_at,
            "created_at": key.created_at,
        },
        "workspace": {"id": workspace.id, "name": workspace.name, "plan": workspace.plan},
        "ratelimit": {"limits": verified.limits.as_ref().map(views).unwrap_or_default()},
    }))
    .into_response()
}

/// Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

fn upstream_uri(route: &Route, uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let rest = if route.strip_prefix {
        path.strip_prefix(route.path.as_str()).unwrap_or(path)
    } else {
        path
    };
    let mut target = route.upstream.path().trim_end_matches('/').to_owned();
    if !rest.starts_with('/') {
        target.push('/');
    }
    target.push_str(rest);
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    Uri::builder()
        .scheme(route.upstream.scheme_str().unwrap_or("http"))
        .authority(route.upstream.authority()?.as_str())
        .path_and_query(target)
        .build()
        .ok()
}

/// Streams the request to the upstream and its answer back, with the
/// credential removed and the identity headers added.
async fn forward(
    gw: &GatewayState,
    route: &Route,
    request: Request,
    verified: Option<Verified>,
    client: IpAddr,
) -> Response {
    let (identity, limits, permit) = match verified {
        Some(Verified { key, limits, permit }) => (Some(key), limits, permit),
        None => (None, None, None),
    };
    let response = forward_to_upstream(gw, route, request, identity.as_deref(), permit, client).await;
    gw.with_limits(response, limits.as_ref())
}

async fn forward_to_upstream(
    gw: &GatewayState,
    route: &Route,
    request: Request,
    identity: Option<&CachedKey>,
    permit: Option<Permit>,
    client: IpAddr,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let Some(uri) = upstream_uri(route, &parts.uri) else {
        return gw.error(&ErrorCode::UpstreamUnavailable.into());
    };
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    headers.remove("x-api-key");
    let is_bearer = headers.get(header::AUTHORIZATION).is_some_and(|v| {
        v.as_bytes()
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer "))
    });
    if is_bearer {
        headers.remove(header::AUTHORIZATION);
    }
    for name in ["x-keygate-key-id", "x-keygate-workspace-id", "x-keygate-environment"] {
        headers.remove(name);
    }
    if let Some(cached) = identity {
        let key = &cached.key;
        let pairs = [
            ("x-keygate-key-id", key.id.as_str()),
            ("x-keygate-workspace-id", key.workspace_id.as_str()),
            ("x-keygate-environment", key.environment.as_str()),
        ];
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if !route.preserve_host {
        headers.remove(header::HOST);
    }
    parts.uri = uri;
    let upstream_request = axum::http::Request::from_parts(parts, body);
    match tokio::time::timeout(route.timeout, gw.client.request(upstream_request)).await {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The concurrency permit lives as long as the response body: it is
            // released when the body ends, fails, or the client goes away.
            let body = body.map_frame(move |frame| {
                let _held = &permit;
                frame
            });
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, upstream = %route.upstream, "upstream request failed");
            gw.error(&ErrorCode::UpstreamUnavailable.into())
        }
        Err(_) => gw.error(&ErrorCode::UpstreamTimeout.into()),
    }
}
