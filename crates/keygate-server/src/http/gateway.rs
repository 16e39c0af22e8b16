//! The data plane: find the route, check transport and body size, then
//! authenticate and answer (`/v1/whoami`) or hand over to [`proxy`]. Every
//! response gets an `X-Request-Id` and one access-log line. Everything here is
//! translation; decisions are the engine's.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, Method, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper::body::Incoming;
use ipnet::IpNet;
use keygate_core::error::ErrorInstance;
use keygate_core::ip::is_trusted_proxy;
use keygate_core::path::{canonicalize, InvalidPath, PathRules};
use keygate_core::ErrorCode;
use keygate_engine::metrics::{LabelText, RequestLabels, Stopwatch};
use keygate_engine::usage::ADMITTED;
use keygate_engine::{default_resources, CachedKey, Engine, RateLimits, Verified, VerifyRequest};
use keygate_limiter::ArcStr;
use serde_json::json;

use crate::config::Settings;
use crate::http::access_log::{AccessEntry, AccessLog};
use crate::http::client_body::discard_rest;
use crate::http::error::render;
use crate::http::extract::{client_ip, credential, credential_rejection};
use crate::http::proxy::{self, ProxyError, Upstream};
use crate::http::ratelimit::{add_headers, tightest, views};
use crate::http::transport::{Plane, Transport};
use crate::http::upstream_conn::UpstreamConnections;
use crate::reload::{Live, LiveConfig};
use crate::telemetry::{Finished, RequestSpan, Telemetry, Tightest};

pub(crate) mod raw;

pub const WHOAMI_PATH: &str = "/v1/whoami";
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// An incoming request id longer than this is replaced, not forwarded.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The data plane's shared part, one per gateway thread; each request
/// borrows it ([`GatewayConnection`]), nothing of it is cloned per request.
pub struct Gateway {
    engine: Arc<Engine>,
    trusted_proxies: Vec<IpNet>,
    /// Routes, targets, error catalog and header policy: swapped by a reload.
    config: LiveConfig,
    require_https: bool,
    /// `server.fast_path`: the common request skips hyper ([`raw`]).
    fast_path: bool,
    /// `server.max_header_size`: a longer head goes to hyper, which answers 431.
    max_header_bytes: usize,
    path_rules: PathRules,
    access_log: AccessLog,
    labels: FixedLabels,
    /// `leaks.report_path`: public leak reports, taken before the routes.
    leak_report_path: Option<Arc<str>>,
    /// `[telemetry]`: `None` (the default) and no request is traced.
    telemetry: Option<Arc<Telemetry>>,
}

/// Label values made once, so recording a request does not allocate.
struct FixedLabels {
    whoami: LabelText,
    leak_report: LabelText,
    empty: LabelText,
}

/// The error code a response stands for (`/metrics`); absent on responses
/// that were admitted (or passed an `auth = false` route).
#[derive(Clone, Copy)]
struct Outcome(&'static str);

impl Gateway {
    /// `config` is shared by every gateway thread and the control plane.
    pub fn new(
        engine: Arc<Engine>,
        settings: &Settings,
        config: LiveConfig,
        access_log: AccessLog,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            trusted_proxies: settings.trusted_proxies.clone(),
            config,
            require_https: settings.require_https,
            max_header_bytes: settings.max_header_bytes,
            fast_path: settings.fast_path,
            path_rules: settings.path_rules,
            access_log,
            labels: FixedLabels {
                whoami: LabelText(ArcStr::from(WHOAMI_PATH)),
                leak_report: LabelText(ArcStr::from(settings.leak_report_path.as_deref().unwrap_or_default())),
                empty: LabelText(ArcStr::new()),
            },
            leak_report_path: settings.leak_report_path.as_deref().map(Arc::from),
            telemetry,
        })
    }

    /// The `route` label: the matched route's path, `/v1/whoami`, or empty.
    fn route_label(&self, upstream: Option<&Upstream>, path: &str) -> LabelText {
        match upstream {
            Some(upstream) => upstream.label.clone(),
            None if path == WHOAMI_PATH => self.labels.whoami.clone(),
            None => self.labels.empty.clone(),
        }
    }

    /// A public leak report (crates/keygate-server/src/http/leak_report.rs)?
    fn is_leak_report(&self, request: &Request) -> bool {
        request.method() == Method::POST
            && self
                .leak_report_path
                .as_deref()
                .is_some_and(|path| request.uri().path() == path)
    }
}

/// The transport hands each accepted connection one of these
/// (crates/keygate-server/src/http/transport.rs): the data plane answers
/// without a router, so a request goes from hyper straight to [`handle`].
impl Plane for Arc<Gateway> {
    type Connection = GatewayConnection;

    fn raw(&self, connection: &GatewayConnection, transport: Transport) -> Option<crate::http::transport::RawServe> {
        if transport.tls || !self.fast_path {
            return None;
        }
        let (gw, client) = (connection.gateway.clone(), connection.client.clone());
        Some(Box::new(move |stream, stop| {
            Box::pin(raw::serve(gw, client, stream, stop))
        }))
    }

    fn connection(&self, peer: SocketAddr, transport: Transport) -> GatewayConnection {
        GatewayConnection {
            gateway: self.clone(),
            client: Arc::new(ClientConnection {
                peer,
                peer_address: address_value(peer.ip()),
                transport,
                upstreams: UpstreamConnections::default(),
            }),
        }
    }
}

/// One client connection of the data plane.
pub struct GatewayConnection {
    gateway: Arc<Gateway>,
    client: Arc<ClientConnection>,
}

/// What a client connection knows of itself, for each of its requests.
struct ClientConnection {
    peer: SocketAddr,
    /// The peer's address as a header value, made once for all its requests.
    peer_address: HeaderValue,
    transport: Transport,
    /// Lives as long as the client connection: its upstream connections end with it.
    upstreams: UpstreamConnections,
}

impl hyper::service::Service<hyper::Request<Incoming>> for GatewayConnection {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        // The request's future goes straight into its box: an `async`
        // block around `handle` would be a second future as large, built
        // and moved once more (BENCHMARKS.md, "Smaller request futures").
        Box::pin(handle(self.gateway.clone(), self.client.clone(), request))
    }
}

/// One request's head, read once as it arrives and passed down the flow:
/// where it came from, the config it uses from start to end, and its id.
pub(crate) struct Exchange {
    pub peer: SocketAddr,
    /// Decided once per request: several headers are believed only from trusted proxies.
    pub from_trusted_proxy: bool,
    /// The client's address: the peer's, or what a trusted proxy says it is.
    pub client: IpAddr,
    pub transport: Transport,
    pub request_id: HeaderValue,
    /// The peer's canonical address, ready for `X-Forwarded-For`
    /// (crates/keygate-server/src/http/proxy.rs, `upstream_headers`).
    pub peer_address: HeaderValue,
    /// The routes, catalog and header policy of this request: a reload
    /// never changes a request half-way.
    live: Arc<Live>,
    /// The request's span, when `[telemetry]` is on; boxed, so that with
    /// it off every request's future stays as small as before (the span is
    /// a few hundred bytes).
    pub trace: Option<Box<RequestSpan>>,
}

impl Exchange {
    fn read(gw: &Gateway, connection: &ClientConnection, headers: &HeaderMap) -> Self {
        let peer = connection.peer;
        let from_trusted_proxy = is_trusted_proxy(peer.ip(), &gw.trusted_proxies);
        Self {
            peer,
            from_trusted_proxy,
            client: client_ip(peer, headers, &gw.trusted_proxies),
            transport: connection.transport,
            request_id: request_id(from_trusted_proxy, headers),
            peer_address: connection.peer_address.clone(),
            live: gw.config.snapshot(),
            trace: None,
        }
    }

    /// Longest path prefix wins (`/api` matches `/api` and `/api/x`, not
    /// `/apix`); a route with methods matches only those.
    fn route(&self, method: &Method, path: &str) -> Option<&Upstream> {
        route_in(&self.live, method, path)
    }

    /// TLS terminated here, or by a trusted proxy that says so.
    fn arrived_over_https(&self, headers: &HeaderMap) -> bool {
        self.transport.tls || crate::http::extract::forwarded_https(self.from_trusted_proxy, headers)
    }

    /// Every error response of the data plane is made here, and says which
    /// error it is for `/metrics`.
    pub(crate) fn error(&self, error: &ErrorInstance) -> Response {
        let mut response = render(&self.live.catalog, error);
        response.extensions_mut().insert(Outcome(error.code.as_str()));
        response
    }

    /// The upstream's response, or the error the proxy could not get past.
    fn answer(&self, forwarded: Result<Response, ProxyError>) -> Response {
        match forwarded {
            Ok(response) => response,
            Err(ProxyError::BodyTooLarge) => self.body_too_large(),
            Err(ProxyError::MalformedBody) => self.malformed_request(),
            Err(failed) => self.error(&failed.code().into()),
        }
    }

    /// Adds the rate-limit headers of an identified key to any response
    /// (and, when traced, what they say to its span).
    fn with_limits(&self, mut response: Response, limits: Option<&RateLimits>) -> Response {
        if let Some(limits) = limits {
            add_headers(response.headers_mut(), limits, &self.live.headers);
            if self.trace.is_some() {
                if let Some(tightest) = tightest(limits, &self.live.headers) {
                    response.extensions_mut().insert(tightest);
                }
            }
        }
        response
    }

    /// 413 with `Connection: close`: the rest of the body is only read to be
    /// thrown away (crates/keygate-server/src/http/client_body.rs), so the
    /// connection cannot carry another request (nginx does the same).
    fn body_too_large(&self) -> Response {
        self.closing(ErrorCode::PayloadTooLarge)
    }

    /// 400 with `Connection: close`: a client that frames its requests wrongly
    /// cannot be trusted to frame the next one on this connection.
    fn malformed_request(&self) -> Response {
        self.closing(ErrorCode::MalformedRequest)
    }

    /// An error after which the connection ends.
    fn closing(&self, code: ErrorCode) -> Response {
        let mut response = self.error(&code.into());
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

#[cfg(test)]
impl Exchange {
    /// A request from `peer` under the config `live`, for tests that need no socket.
    pub(crate) fn for_test(live: Arc<Live>, peer: SocketAddr, from_trusted_proxy: bool) -> Self {
        Self {
            peer,
            from_trusted_proxy,
            client: peer.ip(),
            transport: Transport::default(),
            request_id: HeaderValue::from_static("req_test"),
            peer_address: address_value(peer.ip()),
            live,
            trace: None,
        }
    }
}

/// The route of `live` a request matches: the longest matching prefix.
fn route_in<'l>(live: &'l Live, method: &Method, path: &str) -> Option<&'l Upstream> {
    live.upstreams
        .iter()
        .filter(|u| u.route.methods.is_empty() || u.route.methods.contains(method))
        .filter(|u| {
            path.strip_prefix(u.route.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|u| u.route.path.len())
}

/// An address as a header value, IPv4-mapped IPv6 addresses as IPv4.
fn address_value(ip: IpAddr) -> HeaderValue {
    let text = keygate_core::ip::canonical(ip).to_string();
    // An address's text is digits, dots, colons and hex letters: always a valid value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A trusted proxy's id is kept so one id follows the request end to end;
/// anyone else's is replaced, since clients could use it to forge log lines.
fn request_id(from_trusted_proxy: bool, headers: &HeaderMap) -> HeaderValue {
    let incoming = headers
        .get(&X_REQUEST_ID)
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.to_str().is_ok());
    match incoming {
        Some(id) if from_trusted_proxy => id.clone(),
        _ => new_request_id(),
    }
}

/// `req_` and a lowercase ULID, built on the stack: this runs on every request.
fn new_request_id() -> HeaderValue {
    let mut id = [0u8; 4 + ulid::ULID_LEN];
    id[..4].copy_from_slice(b"req_");
    let mut encoded = [0u8; ulid::ULID_LEN];
    ulid::Ulid::new().array_to_str(&mut encoded);
    encoded.make_ascii_lowercase();
    id[4..].copy_from_slice(&encoded);
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

/// One request, top to bottom (docs/architecture.md, "One request on the
/// data plane"): read the head, check its framing and path, match the
/// route, then [`process`] it; count it and log it.
async fn handle(
    gw: Arc<Gateway>,
    connection: Arc<ClientConnection>,
    request: hyper::Request<Incoming>,
) -> Result<Response, Infallible> {
    let (gw, connection) = (&*gw, &*connection);
    let mut request = request.map(Body::new);
    // Only the access log reads it: no clock read per request without one.
    let started = gw.access_log.enabled().then(Instant::now);
    let mut exchange = Exchange::read(gw, connection, request.headers());
    if let Some(telemetry) = &gw.telemetry {
        let span = telemetry.request(request.headers(), exchange.from_trusted_proxy, request.method());
        exchange.trace = Some(Box::new(span));
    }
    // First, before anything reads the head: its framing, then the path,
    // which is canonical from here on.
    let refused = if !has_one_host(&request) {
        Some(ErrorCode::MalformedRequest)
    } else if let Err(reason) = canonicalize_target(&mut request, gw.path_rules) {
        tracing::debug!(%reason, path = request.uri().path(), "refused a request path");
        Some(ErrorCode::InvalidPath)
    } else {
        None
    };
    if let Some(trace) = &mut exchange.trace {
        let request_id = exchange.request_id.to_str().unwrap_or_default();
        trace.arrived(request.uri().path(), exchange.client, request_id);
    }
    let exchange = exchange;
    let logged = started.map(|started| (request.method().clone(), request.uri().path().to_owned(), started));
    let (mut response, key, route) = match refused {
        None if gw.is_leak_report(&request) => {
            // Boxed: rare, and its future (about 3 KB) would otherwise
            // make every request's future larger (BENCHMARKS.md, "Smaller
            // request futures").
            let response = Box::pin(crate::http::leak_report::answer(&gw.engine, &exchange, request)).await;
            (response, None, gw.labels.leak_report.clone())
        }
        None => {
            // Matched once: the route decides the flow and names the metrics label.
            let upstream = exchange.route(request.method(), request.uri().path());
            let route = gw.route_label(upstream, request.uri().path());
            let (response, key) = process(gw, &connection.upstreams, upstream, &exchange, request).await;
            (response, key, route)
        }
        Some(ErrorCode::MalformedRequest) => (exchange.malformed_request(), None, gw.labels.empty.clone()),
        Some(code) => (exchange.error(&code.into()), None, gw.labels.empty.clone()),
    };
    let outcome = match response.extensions().get::<Outcome>() {
        Some(Outcome(code)) => code,
        None if key.is_some() => ADMITTED,
        None => "unauthenticated",
    };
    if let Some(trace) = exchange.trace {
        trace.finish(&Finished {
            // No route matched: the label is `labels.empty` itself (the root
            // route's own label is empty too, but another value).
            route: (!ArcStr::ptr_eq(&route.0, &gw.labels.empty.0)).then_some(&*route.0),
            status: response.status().as_u16(),
            outcome,
            workspace_id: key.as_ref().map(|k| &**k.workspace_id()),
            key_id: key.as_ref().map(|k| &**k.id()),
            limit: response.extensions().get::<Tightest>().copied(),
        });
    }
    gw.engine.metrics().request(&RequestLabels {
        outcome,
        route,
        workspace: key
            .as_ref()
            .map_or_else(|| gw.labels.empty.clone(), |k| LabelText(k.workspace_id().clone())),
    });
    if let Some((method, path, started)) = logged {
        gw.access_log.record(&AccessEntry {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: exchange.request_id.to_str().unwrap_or_default(),
            method: method.as_str(),
            path: &path,
            status: response.status().as_u16(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            key_id: key.as_ref().map(|k| &**k.id()),
            workspace_id: key.as_ref().map(|k| &**k.workspace_id()),
            client_ip: exchange.client,
        });
    }
    response.headers_mut().insert(X_REQUEST_ID, exchange.request_id);
    Ok(response)
}

/// RFC 9112 section 3.2: an HTTP/1.1 request has exactly one `Host`, and no
/// request has two. (HTTP/2 names its authority in `:authority`.)
fn has_one_host(request: &Request) -> bool {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    match request.version() {
        Version::HTTP_11 => hosts == 1,
        _ => hosts <= 1,
    }
}

/// Replaces the request's path by its canonical form
/// (crates/keygate-core/src/path.rs), keeping the query as it came, so the
/// route, the scopes, the log, the metrics and the upstream all see one path.
/// An already canonical path, the usual case, is left alone.
fn canonicalize_target(request: &mut Request, rules: PathRules) -> Result<(), InvalidPath> {
    let uri = request.uri();
    let path = match canonicalize(uri.path(), rules)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(path) => path,
    };
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    // The canonical path is visible ASCII and escapes, so this cannot fail; if
    // it did, the request is refused rather than forwarded as it came.
    parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| InvalidPath::MalformedEscape)?);
    *request.uri_mut() = Uri::from_parts(parts).map_err(|_| InvalidPath::MalformedEscape)?;
    Ok(())
}

/// The request flow (docs/architecture.md, "One request on the data plane").
/// Returns the key that was identified, if any, for the access log.
async fn process(
    gw: &Gateway,
    connections: &UpstreamConnections,
    upstream: Option<&Upstream>,
    exchange: &Exchange,
    request: Request,
) -> (Response, Option<Arc<CachedKey>>) {
    let is_whoami = upstream.is_none()
        && request.uri().path() == WHOAMI_PATH
        && matches!(*request.method(), Method::GET | Method::HEAD);
    if upstream.is_none() && !is_whoami {
        return (exchange.error(&ErrorCode::RouteNotFound.into()), None);
    }
    // Before the key is looked at: a key sent in clear text must not be honoured.
    if gw.require_https && !exchange.arrived_over_https(request.headers()) {
        return (exchange.error(&ErrorCode::HttpsRequired.into()), None);
    }
    // A declared length over the limit is refused before it costs a lookup or a limit.
    if let Some(upstream) = upstream {
        if declared_length(request.headers()).is_some_and(|len| len > upstream.route.max_body_bytes) {
            // A client that waits for `100 Continue` sends nothing more.
            if !request.headers().contains_key(header::EXPECT) {
                discard_rest(request.into_body());
            }
            return (exchange.body_too_large(), None);
        }
    }
    let required_scopes: &[String] = upstream.map_or(&[], |u| &u.route.scopes);
    let resources = upstream.map_or(default_resources(), |u| &u.route.resources[..]);
    let cost = upstream.map_or(1, |u| u.route.cost);
    let verified = if upstream.is_none_or(|u| u.route.auth) {
        match authenticate(gw, exchange, request.headers(), required_scopes, resources, cost).await {
            Ok(verified) => Some(verified),
            Err(refused) => return refused,
        }
    } else {
        None
    };
    let key = verified.as_ref().map(|v| v.key.clone());
    let response = match (upstream, verified) {
        (Some(upstream), Some(Verified { key, limits, permit })) => {
            let forwarded = proxy::forward(upstream, connections, exchange, request, Some(&key), permit).await;
            let mut response = exchange.answer(forwarded);
            if let Some(name) = &upstream.route.cost_header {
                charge_reported_cost(gw, &key, &upstream.route.resources, name, &mut response);
            }
            exchange.with_limits(response, limits.as_ref())
        }
        (Some(upstream), None) => {
            let forwarded = proxy::forward(upstream, connections, exchange, request, None, None).await;
            exchange.answer(forwarded)
        }
        (None, Some(verified)) => exchange.with_limits(whoami(&verified), verified.limits.as_ref()),
        (None, None) => exchange.error(&ErrorCode::RouteNotFound.into()),
    };
    (response, key)
}

/// The upstream's report of what a request cost (`cost_header`): taken out
/// of the response, so the client never sees it, and charged once, off the
/// response's path (a Redis round trip must not delay the answer).
fn charge_reported_cost(
    gw: &Gateway,
    key: &Arc<CachedKey>,
    resources: &[String],
    name: &axum::http::HeaderName,
    response: &mut Response,
) {
    let Some(reported) = response.headers_mut().remove(name) else {
        return;
    };
    let cost = reported.to_str().ok().and_then(|text| text.trim().parse::<u64>().ok());
    let Some(cost) = cost.filter(|cost| *cost > 0) else {
        tracing::debug!(header = %name, "the upstream's cost header is not a positive whole number; ignored");
        return;
    };
    let cost = cost.min(keygate_core::ratelimit::MAX_COST);
    let (engine, key, resources) = (gw.engine.clone(), key.clone(), resources.to_vec());
    tokio::spawn(async move {
        engine.verifier().charge_reported_cost(&key, &resources, cost).await;
    });
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn authenticate(
    gw: &Gateway,
    exchange: &Exchange,
    headers: &HeaderMap,
    required_scopes: &[String],
    resources: &[String],
    cost: u64,
) -> Result<Verified, (Response, Option<Arc<CachedKey>>)> {
    let presented = match credential(headers) {
        Ok(presented) => presented,
        Err(err) => {
            let rejection = credential_rejection(&gw.engine, err, Some(exchange.client));
            return Err((exchange.error(&rejection), None));
        }
    };
    let request = VerifyRequest {
        required_scopes,
        resources,
        cost,
        ..VerifyRequest::new(presented, Some(exchange.client))
    };
    let started = Stopwatch::start();
    let verified = gw.engine.verifier().verify(request).await;
    gw.engine.metrics().verify_took(started.elapsed());
    verified.map_err(|rejection| {
        let response = exchange.with_limits(exchange.error(&rejection.error), rejection.limits.as_ref());
        (response, rejection.key)
    })
}

/// `GET /v1/whoami`: the key's workspace and metadata, the "test your key" call.
fn whoami(verified: &Verified) -> Response {
    let key = &verified.key;
    let workspace = key.workspace();
    Json(json!({
        "key": {
            "id": &**key.id(),
            "name": key.name(),
            "environment": key.environment(),
            "masked": key.hint(),
            "scopes": key.scopes(),
            "roles": key.roles(),
            "expires_at": key.access().expires_at(),
            "created_at": key.created_at(),
            "legacy": key.is_legacy(),
        },
        "workspace": {"id": workspace.id, "name": workspace.name, "plan": workspace.plan},
        "ratelimit": {"limits": verified.limits.as_ref().map(views).unwrap_or_default()},
        "credits": verified.limits.as_ref().and_then(crate::http::ratelimit::credits_view),
    }))
    .into_response()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;
    use crate::config::ConfigSource;

    /// The live config of a config file whose text is `toml` (routes, mostly).
    #[allow(clippy::unwrap_used)]
    pub(crate) fn live_of(toml: &str) -> Arc<Live> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        let loaded = ConfigSource::file(Some(file.path().to_owned())).load().unwrap();
        LiveConfig::new(&loaded.settings).snapshot()
    }

    fn matched(exchange: &Exchange, method: Method, path: &str) -> Option<String> {
        exchange.route(&method, path).map(|u| u.route.path.clone())
    }

    /// The size of the future `F` that `_f` returns, without calling it.
    fn future_size<A, B, C, F: Future>(_f: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is built and moved level by level as it
    /// runs, so each kilobyte of it costs CPU on every request: boxing the
    /// rare paths out of it took 4 % off a request's CPU (BENCHMARKS.md,
    /// "Smaller request futures"). A rare path that would push it past the
    /// bound belongs in a box. The figures are the test build's: 4,696
    /// bytes before, 3,720 after.
    #[test]
    fn a_requests_future_stays_small() {
        let request = future_size(handle);
        assert!(request <= 4_000, "the request's future is {request} bytes");
    }

    #[test]
    fn the_longest_matching_prefix_wins_on_whole_segments_and_methods_narrow_a_route() {
        let live = live_of(
            r#"
            [[routes]]
            path = "/"
            upstream = "http://127.0.0.1:9001"
            [[routes]]
            path = "/api"
            upstream = "http://127.0.0.1:9002"
            [[routes]]
            path = "/api/admin"
            upstream = "http://127.0.0.1:9003"
            methods = ["GET"]
            "#,
        );
        let exchange = Exchange::for_test(live, "127.0.0.1:5000".parse().unwrap(), false);
        assert_eq!(
            matched(&exchange, Method::GET, "/api/admin/x").as_deref(),
            Some("/api/admin")
        );
        assert_eq!(
            matched(&exchange, Method::GET, "/api/admin").as_deref(),
            Some("/api/admin")
        );
        assert_eq!(
            matched(&exchange, Method::POST, "/api/admin/x").as_deref(),
            Some("/api")
        );
        assert_eq!(
            matched(&exchange, Method::GET, "/api/administrator").as_deref(),
            Some("/api")
        );
        // The root route is kept as the empty prefix, which every path has.
        assert_eq!(matched(&exchange, Method::GET, "/apix").as_deref(), Some(""));
        assert_eq!(matched(&exchange, Method::GET, "/").as_deref(), Some(""));
    }

    #[test]
    fn no_route_is_matched_outside_every_prefix() {
        let live = live_of(
            r#"
            [[routes]]
            path = "/api"
            upstream = "http://127.0.0.1:9002"
            "#,
        );
        let exchange = Exchange::for_test(live, "127.0.0.1:5000".parse().unwrap(), false);
        assert_eq!(matched(&exchange, Method::GET, "/other"), None);
        assert_eq!(matched(&exchange, Method::GET, "/ap"), None);
    }

    #[test]
    fn proxy_errors_become_the_catalogs_responses_and_a_body_error_closes_the_connection() {
        let live = live_of("");
        let exchange = Exchange::for_test(live, "127.0.0.1:5000".parse().unwrap(), false);
        let cases = [
            (ProxyError::Unavailable, 502, false),
            (ProxyError::Timeout, 504, false),
            (ProxyError::BodyTooLarge, 413, true),
            (ProxyError::MalformedBody, 400, true),
        ];
        for (failed, status, closes) in cases {
            let response = exchange.answer(Err(failed));
            assert_eq!(response.status().as_u16(), status, "{failed:?}");
            assert_eq!(
                response.extensions().get::<Outcome>().map(|o| o.0),
                Some(failed.code().as_str())
            );
            assert_eq!(
                response.headers().get(header::CONNECTION).is_some_and(|v| v == "close"),
                closes,
                "{failed:?}"
            );
        }
    }
}
