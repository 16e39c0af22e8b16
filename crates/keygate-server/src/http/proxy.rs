//! Forwarding one request to a route's upstream: the credential removed, the
//! identity and forwarding headers added, bodies streamed both ways (never
//! buffered), `Upgrade` connections tunnelled, and upstream failures turned
//! into catalog errors. A concurrency permit lives as long as the exchange:
//! the response body, or the tunnel of an upgraded connection.

use std::error::Error as StdError;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use keygate_core::ErrorCode;
use keygate_engine::metrics::LabelText;
use keygate_engine::CachedKey;
use keygate_limiter::{ArcStr, Permit};
use smallvec::SmallVec;

use crate::config::Route;
use crate::http::client_body::{BodyTooLarge, CappedBody, ClientBodyError};
use crate::http::gateway::{Exchange, X_REQUEST_ID};
use crate::http::pool::{InFlight, TargetState, Targets, Tried};
use crate::http::upstream_conn::{Replay, SendError, UpstreamConnections};

/// A route and its targets. Built once and shared by every gateway thread,
/// so what one thread learns of a target's health all of them use.
/// Connections are not here: each client connection keeps its own
/// ([`UpstreamConnections`]).
pub struct Upstream {
    pub route: Route,
    /// The route's path as the `route` label of `/metrics`.
    pub label: LabelText,
    pub targets: Arc<Targets>,
}

/// Numbers targets over every route and every reload, so an idle
/// connection a client connection kept for one target is never taken for another.
static NEXT_TARGET_ID: AtomicUsize = AtomicUsize::new(0);

impl Upstream {
    /// A route with new targets (nothing known of their health yet).
    pub fn new(route: Route) -> Self {
        let count = route.upstreams.len();
        let first_id = NEXT_TARGET_ID.fetch_add(count, Ordering::Relaxed);
        Self {
            label: LabelText(ArcStr::from(route.path.as_str())),
            targets: Arc::new(Targets::new(&route, first_id)),
            route,
        }
    }

    /// The same targets (and their health) under a reloaded `route` whose
    /// targets are unchanged (crates/keygate-server/src/reload.rs).
    pub fn with_route(&self, route: Route) -> Self {
        Self {
            label: self.label.clone(),
            targets: self.targets.clone(),
            route,
        }
    }
}

/// Why a request got no answer from an upstream. The proxy logs the cause
/// where it happens; the gateway renders this (`Exchange::proxy_error` in
/// crates/keygate-server/src/http/gateway.rs), so the proxy knows nothing
/// of error formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No target is in, none could be reached, or the exchange failed.
    Unavailable,
    /// No response headers within the route's `timeout`.
    Timeout,
    /// The client's body passed the route's `max_body_size` while streaming.
    BodyTooLarge,
    /// The client's body was malformed or cut short.
    MalformedBody,
}

impl ProxyError {
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Unavailable => ErrorCode::UpstreamUnavailable,
            Self::Timeout => ErrorCode::UpstreamTimeout,
            Self::BodyTooLarge => ErrorCode::PayloadTooLarge,
            Self::MalformedBody => ErrorCode::MalformedRequest,
        }
    }
}

/// Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1).
/// `expect` is answered by this node's HTTP layer, not the upstream's.
pub(crate) static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
];

pub(crate) static IDENTITY_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-keygate-key-id"),
    HeaderName::from_static("x-keygate-workspace-id"),
    HeaderName::from_static("x-keygate-environment"),
];
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a proxy drops `name` on the way through, whatever the message.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The names of a message that `drop` picks, and every name a `Connection`
/// header lists. Each name the message has is looked at once: most messages
/// have none of the names a proxy drops, and looking each of those up was a
/// hash and a probe apiece (BENCHMARKS.md, "Header work in one pass").
fn names_to_drop(headers: &HeaderMap, drop: impl Fn(&HeaderName) -> bool) -> SmallVec<[HeaderName; 4]> {
    let mut names: SmallVec<[HeaderName; 4]> = headers.keys().filter(|name| drop(name)).cloned().collect();
    if names.contains(&header::CONNECTION) {
        names.extend(connection_tokens(headers).filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok()));
    }
    names
}

fn remove_all(headers: &mut HeaderMap, names: SmallVec<[HeaderName; 4]>) {
    for name in names {
        headers.remove(name);
    }
}

/// Removes the hop-by-hop headers, and the ones `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let names = names_to_drop(headers, is_hop_by_hop);
    remove_all(headers, names);
}

/// The `Upgrade` protocol a client asks for, if it asks (HTTP/1.1 only).
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"));
    wants.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// The request target a target gets, in origin form: its base path, then
/// the client's path (less the route's, with `strip_prefix`), then the query.
fn upstream_uri(route: &Route, base: &Uri, uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let base = base.path().trim_end_matches('/');
    if base.is_empty() && !route.strip_prefix && path.starts_with('/') {
        // Most routes: the target gets the client's path and query as they
        // are, shared rather than copied and parsed again.
        return uri.path_and_query().cloned().map(Uri::from);
    }
    let rest = if route.strip_prefix {
        path.strip_prefix(route.path.as_str()).unwrap_or(path)
    } else {
        path
    };
    joined_uri(base, rest, uri.query())
}

/// `base`, then `rest` (after a `/` if it has none), then the query.
fn joined_uri(base: &str, rest: &str, query: Option<&str>) -> Option<Uri> {
    let mut target = String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    target.push_str(base);
    if !rest.starts_with('/') {
        target.push('/');
    }
    target.push_str(rest);
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    Uri::try_from(target).ok()
}

/// An `Authorization` value of the Bearer scheme (any case): it carries a
/// key, which an upstream does not get unless the route forwards it. Both
/// request paths ask (gateway/raw.rs too).
pub(crate) fn is_bearer(value: &[u8]) -> bool {
    value.get(..7).is_some_and(|s| s.eq_ignore_ascii_case(b"bearer "))
}

/// Rewrites the client's headers into the upstream's: no credential (unless
/// the route forwards it), no spoofed identity, and the forwarding headers.
fn upstream_headers(route: &Route, exchange: &Exchange, headers: &mut HeaderMap, identity: Option<&CachedKey>) {
    let (peer, trusted, client) = (exchange.peer.ip(), exchange.from_trusted_proxy, exchange.client);
    let strip_key = !route.forward_key;
    let is_bearer = strip_key
        && headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| is_bearer(v.as_bytes()));
    let names = names_to_drop(headers, |name| {
        is_hop_by_hop(name)
            || IDENTITY_HEADERS.contains(name)
            || (strip_key && *name == X_API_KEY)
            || (is_bearer && *name == header::AUTHORIZATION)
    });
    remove_all(headers, names);
    if let Some(cached) = identity {
        let values = [&**cached.id(), &**cached.workspace_id(), cached.environment()];
        for (name, value) in IDENTITY_HEADERS.iter().zip(values) {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
    }
    // From anyone but a trusted proxy it is the peer's address, made once per connection.
    let forwarded_for = if trusted {
        HeaderValue::from_str(&forwarded_chain(headers, peer, client)).ok()
    } else {
        Some(exchange.peer_address.clone())
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let proto_from_proxy = trusted && headers.contains_key(&X_FORWARDED_PROTO);
    if !proto_from_proxy {
        let proto = if exchange.transport.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    headers.insert(X_REQUEST_ID, exchange.request_id.clone());
    if let Some(trace) = &exchange.trace {
        trace.propagate(headers);
    }
}

/// Points a request at one target: its URI, and the target's own `Host`
/// unless the route keeps the client's (an HTTP/2 client's authority, which
/// HTTP/1.1 needs as `Host`). `false` if no URI can be made.
fn aim(route: &Route, target: &TargetState, client_uri: &Uri, request: &mut axum::http::Request<Body>) -> bool {
    let Some(uri) = upstream_uri(route, &target.url, client_uri) else {
        return false;
    };
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    if route.preserve_host {
        if !headers.contains_key(header::HOST) {
            if let Some(host) = client_uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(header::HOST, host);
            }
        }
    } else if let Some(host) = &target.host {
        headers.insert(header::HOST, host.clone());
    }
    true
}

/// A trusted proxy's chain is extended with the proxy itself. Anyone
/// else's is replaced by the address this node sees (the caller's
/// `Exchange::peer_address`), so clients cannot plant hops.
pub(crate) fn forwarded_chain(headers: &HeaderMap, peer: IpAddr, client: IpAddr) -> String {
    let chain: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if chain.is_empty() {
        return client.to_string();
    }
    format!("{}, {}", chain.join(", "), keygate_core::ip::canonical(peer))
}

/// Streams the request to a target of the route and its answer back. A
/// target that cannot be reached is counted against its health and the
/// request goes once more, to another target, if it was never sent (or is
/// an idempotent request without a body).
///
/// Not an `async fn`: the request is made ready for the upstream before the
/// future is built, so the future holds it once instead of once as an
/// argument and again as the outgoing request (BENCHMARKS.md, "Smaller
/// request futures").
pub(crate) fn forward<'a>(
    upstream: &'a Upstream,
    connections: &'a UpstreamConnections,
    exchange: &Exchange,
    request: Request,
    identity: Option<&CachedKey>,
    permit: Option<Permit>,
) -> impl Future<Output = Result<Response, ProxyError>> + 'a {
    // Used in place: its fields moved into locals would take room of their
    // own in the future.
    let mut outgoing = Outgoing::of(&upstream.route, exchange, request, identity);
    async move {
        let sent = if upstream.targets.count() == 1 {
            // Most routes: one target, no other target to prepare for, a lean future.
            if !aim(
                &upstream.route,
                upstream.targets.get(0),
                &outgoing.client_uri,
                &mut outgoing.request,
            ) {
                return Err(ProxyError::Unavailable);
            }
            send_to_one(upstream, connections, outgoing.request, outgoing.replay.as_ref()).await
        } else {
            let (uri, replay) = (&outgoing.client_uri, outgoing.replay);
            Box::pin(send_to_targets(upstream, connections, uri, outgoing.request, replay)).await
        };
        let (mut response, in_flight) = sent?;
        if let (Some((_, client_side)), StatusCode::SWITCHING_PROTOCOLS) = (outgoing.upgrade, response.status()) {
            let upstream_side = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client_side, upstream_side, permit, in_flight));
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = body.map_frame(move |frame| {
            // The permit and the in-flight count end with the body, when it
            // ends, fails, or the client goes away.
            let _held = (&permit, &in_flight);
            frame
        });
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// A request made ready for an upstream, not yet aimed at a target: its
/// headers rewritten, its body capped, and what a retry or an upgrade needs.
struct Outgoing {
    request: axum::http::Request<Body>,
    /// The client's URI: each target's is made from it.
    client_uri: Uri,
    replay: Option<Replay>,
    /// The protocol asked for, and the client side of the upgrade.
    upgrade: Option<(HeaderValue, OnUpgrade)>,
}

impl Outgoing {
    fn of(route: &Route, exchange: &Exchange, mut request: Request, identity: Option<&CachedKey>) -> Self {
        let upgrade = requested_upgrade(request.headers()).map(|protocol| (protocol, hyper::upgrade::on(&mut request)));
        let (mut parts, body) = request.into_parts();
        let client_uri = std::mem::take(&mut parts.uri);
        upstream_headers(route, exchange, &mut parts.headers, identity);
        // The upstream connection speaks HTTP/1.1, whatever the client spoke.
        parts.version = axum::http::Version::HTTP_11;
        let body = match &upgrade {
            Some((protocol, _)) => {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(header::UPGRADE, protocol.clone());
                Body::empty()
            }
            None => Body::new(CappedBody::new(body, route.max_body_bytes)),
        };
        let request = axum::http::Request::from_parts(parts, body);
        let replay = Replay::of(request.method(), request.headers(), request.body());
        Self {
            request,
            client_uri,
            replay,
            upgrade,
        }
    }
}

/// An upstream's answer, and the in-flight count it holds.
type Sent = Result<(hyper::Response<hyper::body::Incoming>, Option<InFlight>), ProxyError>;

/// The request, already aimed, to a route's only target.
async fn send_to_one(
    upstream: &Upstream,
    connections: &UpstreamConnections,
    request: axum::http::Request<Body>,
    replay: Option<&Replay>,
) -> Sent {
    let targets = &upstream.targets;
    if targets.choose(&Tried::new()).is_none() {
        return Err(no_target_in(upstream));
    }
    let target = targets.get(0);
    let in_flight = targets.in_flight(0);
    match tokio::time::timeout(
        upstream.route.timeout,
        connections.send(&target.target, request, replay),
    )
    .await
    {
        Ok(Ok(response)) => {
            targets.succeeded(0);
            Ok((response, in_flight))
        }
        Ok(Err(failure)) => Err(client_fault(&failure.error).unwrap_or_else(|| {
            if failure.error.is_connect() {
                targets.failed(0);
            }
            unavailable(target, &failure.error)
        })),
        Err(_) => Err(timed_out(upstream, 0)),
    }
}

/// The request to one of a route's targets, and once more to another if it
/// could not connect (or may have reached a target that failed, when it is
/// idempotent and has no body).
async fn send_to_targets(
    upstream: &Upstream,
    connections: &UpstreamConnections,
    client_uri: &Uri,
    mut request: axum::http::Request<Body>,
    replay: Option<Replay>,
) -> Sent {
    let (route, targets) = (&upstream.route, &upstream.targets);
    let mut tried = Tried::new();
    loop {
        let Some(index) = targets.choose(&tried) else {
            return Err(no_target_in(upstream));
        };
        tried.push(index);
        let target = targets.get(index);
        if !aim(route, target, client_uri, &mut request) {
            return Err(ProxyError::Unavailable);
        }
        let in_flight = targets.in_flight(index);
        let failure = match tokio::time::timeout(
            route.timeout,
            connections.send(&target.target, request, replay.as_ref()),
        )
        .await
        {
            Ok(Ok(response)) => {
                targets.succeeded(index);
                return Ok((response, in_flight));
            }
            Ok(Err(failure)) => failure,
            Err(_) => return Err(timed_out(upstream, index)),
        };
        if let Some(refused) = client_fault(&failure.error) {
            return Err(refused);
        }
        if failure.error.is_connect() {
            targets.failed(index);
        }
        let may_retry = tried.len() < 2 && tried.len() < targets.count();
        match failure.unsent.or_else(|| replay.as_ref().map(Replay::request)) {
            Some(again) if may_retry => {
                tracing::warn!(error = %failure.error, upstream = %target.target.address, "upstream request failed; trying another target");
                request = again;
            }
            _ => return Err(unavailable(target, &failure.error)),
        }
    }
}

/// A failure that is the client's: its body was too large or malformed.
fn client_fault(error: &SendError) -> Option<ProxyError> {
    if caused_by::<BodyTooLarge>(error) {
        return Some(ProxyError::BodyTooLarge);
    }
    if caused_by::<ClientBodyError>(error) {
        tracing::info!(error = %error, "the client's request body was malformed or cut short");
        return Some(ProxyError::MalformedBody);
    }
    None
}

fn unavailable(target: &TargetState, error: &SendError) -> ProxyError {
    tracing::warn!(error = %error, upstream = %target.target.address, "upstream request failed");
    ProxyError::Unavailable
}

fn timed_out(upstream: &Upstream, index: usize) -> ProxyError {
    upstream.targets.failed(index);
    let address = &upstream.targets.get(index).target.address;
    tracing::warn!(upstream = %address, timeout = ?upstream.route.timeout, "upstream timed out");
    ProxyError::Timeout
}

fn no_target_in(upstream: &Upstream) -> ProxyError {
    tracing::warn!(route = %upstream.route.path, "no upstream target is in");
    ProxyError::Unavailable
}

fn caused_by<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if err.is::<E>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// Copies bytes both ways until both sides have closed (a half-close is
/// passed on); the permit is held for the connection's lifetime.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, permit: Option<Permit>, in_flight: Option<InFlight>) {
    let _held = (permit, in_flight);
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %err, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn upgrade_needs_both_connection_and_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested_upgrade(&headers), None);
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(requested_upgrade(&headers), Some(HeaderValue::from_static("websocket")));
    }

    fn route_of(toml: &str) -> Route {
        let live = crate::http::gateway::tests::live_of(toml);
        live.upstreams[0].route.clone()
    }

    #[test]
    fn the_upstream_gets_no_credential_no_spoofed_identity_no_hop_headers_and_forwarding_headers() {
        let route = route_of("[[routes]]\npath = \"/api\"\nupstream = \"http://127.0.0.1:9001\"\n");
        let live = crate::http::gateway::tests::live_of("");
        let exchange = Exchange::for_test(live, "198.51.100.4:5000".parse().unwrap(), false);
        let mut headers = HeaderMap::new();
        headers.insert(X_API_KEY, HeaderValue::from_static("kg_live_secret"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer kg_live_secret"));
        headers.insert("x-keygate-key-id", HeaderValue::from_static("key_forged"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/plain"));
        upstream_headers(&route, &exchange, &mut headers, None);
        for gone in [
            X_API_KEY,
            header::AUTHORIZATION,
            HeaderName::from_static("x-keygate-key-id"),
            header::CONNECTION,
            HeaderName::from_static("x-hop"),
        ] {
            assert!(!headers.contains_key(&gone), "{gone} was forwarded");
        }
        // An untrusted peer's forwarding headers are replaced, not extended.
        assert_eq!(headers[&X_FORWARDED_FOR], "198.51.100.4");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_REQUEST_ID], "req_test");
        assert_eq!(headers[header::ACCEPT], "text/plain");
    }

    #[test]
    fn a_route_that_forwards_the_key_keeps_it_and_basic_auth_is_never_taken_for_a_key() {
        let route = route_of("[[routes]]\npath = \"/api\"\nupstream = \"http://127.0.0.1:9001\"\nforward_key = true\n");
        let exchange = Exchange::for_test(
            crate::http::gateway::tests::live_of(""),
            "127.0.0.1:5000".parse().unwrap(),
            false,
        );
        let mut headers = HeaderMap::new();
        headers.insert(X_API_KEY, HeaderValue::from_static("kg_live_secret"));
        upstream_headers(&route, &exchange, &mut headers, None);
        assert_eq!(headers[&X_API_KEY], "kg_live_secret");

        let route = route_of("[[routes]]\npath = \"/api\"\nupstream = \"http://127.0.0.1:9001\"\n");
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        upstream_headers(&route, &exchange, &mut headers, None);
        assert_eq!(headers[header::AUTHORIZATION], "Basic dXNlcjpwYXNz");
    }

    #[test]
    fn the_upstream_path_joins_the_targets_base_the_rest_of_the_path_and_the_query() {
        let stripped =
            route_of("[[routes]]\npath = \"/api\"\nupstream = \"http://127.0.0.1:9001/v2/\"\nstrip_prefix = true\n");
        let kept = route_of("[[routes]]\npath = \"/api\"\nupstream = \"http://127.0.0.1:9001\"\n");
        let base: Uri = "http://127.0.0.1:9001/v2/".parse().unwrap();
        let uri = |text: &str| -> Uri { text.parse().unwrap() };
        assert_eq!(
            upstream_uri(&stripped, &base, &uri("/api/users?page=2")).unwrap(),
            "/v2/users?page=2"
        );
        assert_eq!(upstream_uri(&stripped, &base, &uri("/api")).unwrap(), "/v2/");
        let root: Uri = "http://127.0.0.1:9001".parse().unwrap();
        assert_eq!(upstream_uri(&kept, &root, &uri("/api/users")).unwrap(), "/api/users");
        assert_eq!(
            upstream_uri(&kept, &root, &uri("/api/users?page=2")).unwrap(),
            "/api/users?page=2"
        );
        // An absolute-form target (a request to a proxy) gets only its path and query.
        let absolute = uri("http://gateway.example/api/users?page=2");
        assert_eq!(upstream_uri(&kept, &root, &absolute).unwrap(), "/api/users?page=2");
        assert_eq!(upstream_uri(&kept, &root, &absolute).unwrap().authority(), None);
        // One without a path gets the root.
        let bare = uri("http://gateway.example");
        assert_eq!(upstream_uri(&kept, &root, &bare).unwrap().to_string(), "/");
        assert_eq!(
            upstream_uri(&kept, &root, &uri("http://gateway.example?x=1")).unwrap(),
            "/?x=1"
        );
    }

    /// Hop-by-hop headers dropped as before the one-pass rewrite: each name
    /// looked up and removed.
    fn strip_by_lookup(headers: &mut HeaderMap) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named.iter().chain(&HOP_BY_HOP) {
            headers.remove(name);
        }
    }

    /// Names a message may carry: hop-by-hop ones, end-to-end ones, and
    /// ones only a `Connection` header makes hop-by-hop.
    const VOCABULARY: [&str; 12] = [
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "expect",
        "transfer-encoding",
        "accept",
        "x-api-key",
        "x-hop",
        "x-other",
        "proxy-connection",
        "cookie",
    ];

    proptest::proptest! {
        /// Dropping in one pass drops what looking each name up did, and
        /// nothing else, whatever `Connection` lists.
        #[test]
        fn one_pass_drops_what_a_lookup_per_name_dropped(
            present in proptest::collection::vec((0..VOCABULARY.len(), "[a-z0-9]{0,3}"), 0..10),
            listed in proptest::collection::vec(0..VOCABULARY.len(), 0..4),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in &present {
                headers.append(VOCABULARY[*name], HeaderValue::from_str(value).unwrap());
            }
            if !listed.is_empty() {
                let tokens: Vec<&str> = listed.iter().map(|i| VOCABULARY[*i]).collect();
                headers.append(header::CONNECTION, HeaderValue::from_str(&tokens.join(", ")).unwrap());
            }
            let mut expected = headers.clone();
            strip_by_lookup(&mut expected);
            strip_hop_by_hop(&mut headers);
            proptest::prop_assert_eq!(headers, expected);
        }

        /// The shared path and query of a route on a target's root is what
        /// joining them as text gives.
        #[test]
        fn a_root_target_gets_the_path_and_query_joining_would_give(
            path in "(/[a-zA-Z0-9._~%!$&'()*+,;=:@-]{0,8}){1,4}",
            query in proptest::option::of("[a-zA-Z0-9._~%!$&'()*+,;=:@/?-]{0,12}"),
        ) {
            let kept = route_of("[[routes]]\npath = \"/\"\nupstream = \"http://127.0.0.1:9001\"\n");
            let root: Uri = "http://127.0.0.1:9001/".parse().unwrap();
            let target = match &query {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let client: Uri = target.parse().unwrap();
            proptest::prop_assert_eq!(
                upstream_uri(&kept, &root, &client),
                joined_uri("", client.path(), client.query())
            );
        }
    }

    #[test]
    fn forwarded_for_is_extended_only_for_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(forwarded_chain(&headers, proxy, client), "203.0.113.7, 10.0.0.2");
        assert_eq!(forwarded_chain(&HeaderMap::new(), proxy, proxy), "10.0.0.2");
    }
}
