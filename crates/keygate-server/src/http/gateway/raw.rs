//! The data plane's fast path: HTTP/1.1 without hyper for the request most
//! traffic is (GET or HEAD, no body, a key, a route with one target), which
//! costs about a quarter less CPU than the same request through hyper
//! (BENCHMARKS.md, "A hand-written fast path inside keygate").
//!
//! It takes a request only when it has nothing to frame or rewrite beyond
//! what is written here; anything else (a body, an upgrade, `Connection:
//! close`, HTTP/1.0, a path that is not canonical, an open route, several
//! targets, a trusted proxy's headers, the access log or tracing on) hands
//! the connection, with the bytes read of it, to hyper
//! (crates/keygate-server/src/http/transport.rs), which serves it from
//! then on. What it does take it answers as [`super::handle`] does: the same
//! verify call, rate-limit, identity and forwarding headers, request id,
//! metrics, route timeout, target health and stale-connection retry.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::Response;
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use keygate_core::credential::select_credential;
use keygate_core::error::ErrorInstance;
use keygate_core::path::canonicalize;
use keygate_core::ErrorCode;
use keygate_engine::metrics::{LabelText, RequestLabels, Stopwatch};
use keygate_engine::usage::ADMITTED;
use keygate_engine::{CachedKey, Rejection, Verified, VerifyRequest};
use keygate_limiter::Permit;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{new_request_id, route_in, ClientConnection, Gateway};
use crate::http::access_log::AccessEntry;
use crate::http::error::render;
use crate::http::extract::client_ip;
use crate::http::pool::{InFlight, TargetState, Tried};
use crate::http::proxy::Upstream;
use crate::http::proxy::{forwarded_chain, is_bearer, HOP_BY_HOP, IDENTITY_HEADERS};
use crate::http::ratelimit::{add_headers, HeaderSink};
use crate::reload::Live;

/// Slow-loris protection, as hyper's `header_read_timeout` (transport.rs).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Request headers that need hyper's path: framing, upgrades, `100 Continue`.
const TO_HYPER: [&str; 4] = ["content-length", "transfer-encoding", "upgrade", "expect"];

/// The forwarding headers this node sets itself: a client's are dropped,
/// as `proxy::upstream_headers` replaces them for a peer that is not a
/// trusted proxy.
const FORWARDING: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-request-id"];

/// One of `names`, whatever its case.
fn is_one_of(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// proxy.rs's lists as text, taken once: every header of every request
/// and answer is compared with them, and a `HeaderName`'s text is looked up
/// each time it is asked for.
static HOP_BY_HOP_TEXT: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| HOP_BY_HOP.iter().map(HeaderName::as_str).collect());

/// Hop-by-hop, identity (`proxy::IDENTITY_HEADERS`) and forwarding headers.
static DROPPED_TEXT: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let names = HOP_BY_HOP.iter().chain(&IDENTITY_HEADERS);
    names.map(HeaderName::as_str).chain(FORWARDING).collect()
});

/// Never forwarded either way: hop-by-hop (the list hyper's path uses,
/// `proxy::HOP_BY_HOP`); framing is written by [`Framing`].
fn is_hop_by_hop(name: &str) -> bool {
    is_one_of(name, &HOP_BY_HOP_TEXT)
}

/// A request header the upstream does not get from the client: hop-by-hop,
/// identity or forwarding.
fn is_dropped(name: &str) -> bool {
    is_one_of(name, &DROPPED_TEXT)
}

/// A request target's path: up to its query.
fn path_of(target: &str) -> &str {
    memchr::memchr(b'?', target.as_bytes()).map_or(target, |at| &target[..at])
}

/// A connection with bytes already read from it in front, for hyper.
pub struct Prefixed {
    prefix: BytesMut,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// This client connection's upstream connection and what was read of it.
struct UpConn {
    stream: TcpStream,
    buf: BytesMut,
    /// The target it is connected to ([`crate::http::upstream_conn::Target`]'s id).
    target: usize,
    /// The last answer said the connection ends after it.
    closing: bool,
}

/// One client connection on the fast path.
struct Client<'a> {
    gw: &'a Gateway,
    conn: &'a ClientConnection,
    stream: TcpStream,
    buf: BytesMut,
    upstream: Option<UpConn>,
    /// The bytes of the answer being written, reused from request to request.
    out: Vec<u8>,
    head: Vec<u8>,
    /// This node's headers of the answer being written.
    ours: Ours,
}

/// This node's headers of an answer: they go right after the upstream's
/// status line, and replace any of the same name the upstream sent.
#[derive(Default)]
struct Ours {
    bytes: Vec<u8>,
    /// Where each name is in `bytes`.
    names: SmallVec<[std::ops::Range<usize>; 4]>,
}

impl Ours {
    fn clear(&mut self) {
        self.bytes.clear();
        self.names.clear();
    }

    fn push(&mut self, name: &HeaderName, value: &[u8]) {
        let at = self.bytes.len();
        push_header(&mut self.bytes, name.as_str().as_bytes(), value);
        self.names.push(at..at + name.as_str().len());
    }

    /// Whether `name` (in any case) is one of ours.
    fn has(&self, name: &str) -> bool {
        let name = name.as_bytes();
        self.names
            .iter()
            .any(|at| self.bytes[at.clone()].eq_ignore_ascii_case(name))
    }
}

/// The rate-limit headers straight into the answer's bytes (numbers by
/// `itoa`), rather than through a `HeaderMap`'s allocations.
impl HeaderSink for Ours {
    fn number(&mut self, name: &HeaderName, value: u64) {
        self.push(name, itoa::Buffer::new().format(value).as_bytes());
    }

    fn text(&mut self, name: &HeaderName, value: &str) {
        if HeaderValue::from_str(value).is_ok() {
            self.push(name, value.as_bytes());
        }
    }
}

/// What became of one request.
enum Step {
    /// Answered; the connection can carry another request.
    Answered,
    /// Not for the fast path: hyper takes the connection, this request first.
    ToHyper,
    /// The connection ends (the client left, or a body without framing).
    Close,
}

/// Serves the connection until it ends (`None`) or a request needs hyper.
pub(super) async fn serve(
    gw: Arc<Gateway>,
    conn: Arc<ClientConnection>,
    stream: TcpStream,
    stop: CancellationToken,
) -> Option<Prefixed> {
    let mut client = Client {
        gw: &gw,
        conn: &conn,
        stream,
        buf: BytesMut::with_capacity(8192),
        upstream: None,
        out: Vec::with_capacity(2048),
        head: Vec::with_capacity(1024),
        ours: Ours::default(),
    };
    loop {
        // An idle connection ends at shutdown; one with a request begun is answered first.
        let idle = client.buf.is_empty();
        let read = tokio::select! {
            read = tokio::time::timeout(HEADER_READ_TIMEOUT, client.read_head()) => read,
            () = stop.cancelled(), if idle => return None,
        };
        match read {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return client.hand_to_hyper().await,
            Ok(Err(_)) | Err(_) => return None,
        }
        match client.one().await {
            Step::Answered if !stop.is_cancelled() => {}
            Step::Answered | Step::Close => return None,
            Step::ToHyper => return client.hand_to_hyper().await,
        }
    }
}

impl Client<'_> {
    /// Hands the connection to hyper, and this connection's idle upstream
    /// connection to hyper's client, so the next request goes on it.
    async fn hand_to_hyper(self) -> Option<Prefixed> {
        if let Some(up) = self.upstream.filter(|up| up.buf.is_empty() && !up.closing) {
            self.conn.upstreams.adopt(up.target, up.stream).await;
        }
        Some(Prefixed {
            prefix: self.buf,
            inner: self.stream,
        })
    }

    /// Reads until the buffer holds a whole head: `Ok(false)` when it is
    /// too large, for hyper to answer 431 (`server.max_header_size`). The
    /// head is parsed once, by [`Self::one`], which leaves a malformed one
    /// to hyper.
    async fn read_head(&mut self) -> io::Result<bool> {
        let mut scanned = 0;
        loop {
            if let Some(end) = head_end(&self.buf, scanned) {
                return Ok(end <= self.gw.max_header_bytes);
            }
            if self.buf.len() > self.gw.max_header_bytes {
                return Ok(false);
            }
            // A line end may be split across reads: look again from just before it.
            scanned = self.buf.len().saturating_sub(3);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Answers the request at the front of the buffer, or leaves it for hyper.
    async fn one(&mut self) -> Step {
        let buf = std::mem::take(&mut self.buf);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let (head_len, fast) = match request.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => (len, self.take(&request)),
            _ => (0, None),
        };
        let step = match fast {
            Some((live, index, method, target)) => {
                let upstream = &live.upstreams[index];
                self.answer(upstream, &live, method, target, request.headers).await
            }
            None => Step::ToHyper,
        };
        self.buf = buf;
        if matches!(step, Step::Answered) {
            self.buf.advance(head_len);
        }
        step
    }

    /// Whether the fast path takes the request: its config, route index, method and target.
    fn take<'r>(&self, request: &httparse::Request<'_, 'r>) -> Option<(Arc<Live>, usize, Method, &'r str)> {
        let gw = self.gw;
        let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else {
            return None;
        };
        let method = match method {
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            _ => return None,
        };
        let mut hosts = 0;
        for header in request.headers.iter() {
            let name = header.name;
            if TO_HYPER.iter().any(|n| name.eq_ignore_ascii_case(n)) {
                return None;
            }
            if name.eq_ignore_ascii_case("connection") && !header.value.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
            hosts += usize::from(name.eq_ignore_ascii_case("host"));
        }
        let off = gw.telemetry.is_some() || gw.require_https;
        if hosts != 1 || off {
            return None;
        }
        let path = path_of(target);
        let canonical = matches!(canonicalize(path, gw.path_rules), Ok(std::borrow::Cow::Borrowed(_)));
        // Origin form only; a fragment (which no client should send) is left to hyper's URI rules.
        if !canonical || !path.starts_with('/') || memchr::memchr(b'#', target.as_bytes()).is_some() {
            return None;
        }
        let live = gw.config.snapshot();
        let index = {
            let upstream = route_in(&live, &method, path)?;
            let route = &upstream.route;
            let plain = upstream.targets.count() == 1
                && !route.strip_prefix
                && !route.preserve_host
                && !route.forward_key
                && route.cost_header.is_none()
                && upstream.targets.get(0).url.path().trim_end_matches('/').is_empty();
            if !plain {
                return None;
            }
            live.upstreams.iter().position(|u| std::ptr::eq(u, upstream))?
        };
        Some((live, index, method, target))
    }

    async fn answer(
        &mut self,
        upstream: &Upstream,
        live: &Live,
        method: Method,
        target: &str,
        headers: &[httparse::Header<'_>],
    ) -> Step {
        let from = From::of(self.gw, self.conn, headers);
        let request_id = from.request_id.clone();
        let mut done = Done {
            started: self.gw.access_log.enabled().then(Instant::now),
            latency: None,
            status: 0,
            outcome: "unauthenticated",
            key: None,
        };
        let next = self
            .proxy(upstream, live, &method, target, headers, &from, &mut done)
            .await;
        if matches!(next, Next::ToHyper) {
            return Step::ToHyper;
        }
        self.gw.engine.metrics().fast_path_request();
        self.gw.engine.metrics().request(&RequestLabels {
            outcome: done.outcome,
            route: upstream.label.clone(),
            workspace: done
                .key
                .as_ref()
                .map_or_else(|| self.gw.labels.empty.clone(), |k| LabelText(k.workspace_id().clone())),
        });
        if let Some(started) = done.started {
            let path = path_of(target);
            self.gw.access_log.record(&AccessEntry {
                time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                request_id: request_id.to_str().unwrap_or_default(),
                method: method.as_str(),
                path,
                status: done.status,
                latency_ms: done.latency.unwrap_or_else(|| started.elapsed()).as_secs_f64() * 1000.0,
                key_id: done.key.as_ref().map(|k| &**k.id()),
                workspace_id: done.key.as_ref().map(|k| &**k.workspace_id()),
                client_ip: from.client,
            });
        }
        // Counted and logged before the client has its answer, as on hyper's path.
        match next {
            Next::Body(framing, held) => {
                let step = self.forward_body(framing).await;
                drop(held);
                step
            }
            Next::Written => match self.stream.write_all(&self.out).await {
                Ok(()) => Step::Answered,
                Err(_) => Step::Close,
            },
            Next::ToHyper => Step::ToHyper,
        }
    }

    /// The request flow of [`super::process`] for one request: its key,
    /// then the upstream, or an error of the catalog; `done` says how it ended.
    #[allow(clippy::too_many_arguments)]
    async fn proxy(
        &mut self,
        upstream: &Upstream,
        live: &Live,
        method: &Method,
        target: &str,
        headers: &[httparse::Header<'_>],
        from: &From,
        done: &mut Done,
    ) -> Next {
        let request_id = &from.request_id;
        let (limits, permit) = if upstream.route.auth {
            match self.verify(upstream, headers, from.client).await {
                Ok(Some(Verified { key, limits, permit })) => {
                    done.key = Some(key);
                    done.outcome = ADMITTED;
                    (limits, permit)
                }
                Ok(None) => return Next::ToHyper,
                Err(rejection) => {
                    let mut response = render(&live.catalog, &rejection.error);
                    if let Some(limits) = &rejection.limits {
                        add_headers(response.headers_mut(), limits, &live.headers);
                    }
                    done.key = rejection.key;
                    done.outcome = rejection.error.code.as_str();
                    return self.error_answer(response, request_id, done).await;
                }
            }
        } else {
            (None, None)
        };
        self.upstream_head(
            method,
            target,
            headers,
            done.key.as_deref(),
            from,
            upstream.targets.get(0),
        );
        let mut ours = std::mem::take(&mut self.ours);
        ours.clear();
        if let Some(limits) = &limits {
            add_headers(&mut ours, limits, &live.headers);
        }
        ours.push(&super::X_REQUEST_ID, request_id.as_bytes());
        let sent = self.exchange(upstream, *method == Method::HEAD, &ours).await;
        self.ours = ours;
        let (framing, in_flight) = match sent {
            Ok((framing, status, in_flight)) => {
                done.status = status;
                (framing, in_flight)
            }
            Err(code) => {
                done.outcome = code.as_str();
                let response = render(&live.catalog, &ErrorInstance::new(code));
                return self.error_answer(response, request_id, done).await;
            }
        };
        done.latency = done.started.map(|started| started.elapsed());
        Next::Body(framing, (permit, in_flight))
    }

    /// The key's decision: `Ok(None)` for a credential missing, ambiguous
    /// or unreadable, which hyper's path words.
    async fn verify(
        &self,
        upstream: &Upstream,
        headers: &[httparse::Header<'_>],
        client: IpAddr,
    ) -> Result<Option<Verified>, Rejection> {
        let gw = self.gw;
        let route = &upstream.route;
        let named = |name: &'static str| {
            headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let Ok(presented) = select_credential(named("x-api-key"), named("authorization")) else {
            return Ok(None);
        };
        let verify = VerifyRequest {
            required_scopes: &route.scopes,
            resources: &route.resources[..],
            cost: route.cost,
            ..VerifyRequest::new(presented, Some(client))
        };
        let started = Stopwatch::start();
        let verified = gw.engine.verifier().verify(verify).await;
        gw.engine.metrics().verify_took(started.elapsed());
        verified.map(Some)
    }

    /// The request as the upstream gets it, in `self.head`.
    fn upstream_head(
        &mut self,
        method: &Method,
        target: &str,
        headers: &[httparse::Header<'_>],
        key: Option<&CachedKey>,
        from: &From,
        state: &TargetState,
    ) {
        let head = &mut self.head;
        head.clear();
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for header in headers {
            let name = header.name;
            let is_key = name.eq_ignore_ascii_case("x-api-key")
                || (name.eq_ignore_ascii_case("authorization") && is_bearer(header.value));
            // A trusted proxy's `X-Forwarded-Proto` stands, as on hyper's path.
            let kept_proto = from.proto_from_proxy && name.eq_ignore_ascii_case("x-forwarded-proto");
            if is_key || (is_dropped(name) && !kept_proto) {
                continue;
            }
            match &state.host {
                Some(host) if name.eq_ignore_ascii_case("host") => push_header(head, b"host", host.as_bytes()),
                _ => push_header(head, name.as_bytes(), header.value),
            }
        }
        if let Some(key) = key {
            let values = [&**key.id(), &**key.workspace_id(), key.environment()];
            for (name, value) in IDENTITY_HEADERS.iter().zip(values) {
                // The store's own identifiers: checked anyway, a value must not end a line.
                if value.bytes().all(|b| b.is_ascii_graphic()) {
                    push_header(head, name.as_str().as_bytes(), value.as_bytes());
                }
            }
        }
        push_header(head, b"x-forwarded-for", from.forwarded_for.as_bytes());
        if !from.proto_from_proxy {
            let proto: &[u8] = if self.conn.transport.tls { b"https" } else { b"http" };
            push_header(head, b"x-forwarded-proto", proto);
        }
        push_header(head, b"x-request-id", from.request_id.as_bytes());
        head.extend_from_slice(b"\r\n");
    }

    /// Sends `self.head` to the route's target and reads its answer's head
    /// into `self.out`, within the route's timeout. A kept connection that
    /// fails before any byte of an answer is replaced once: the request is
    /// a GET or HEAD without a body.
    async fn exchange(
        &mut self,
        upstream: &Upstream,
        is_head: bool,
        ours: &Ours,
    ) -> Result<(Framing, u16, Option<InFlight>), ErrorCode> {
        let targets = &upstream.targets;
        if targets.choose(&Tried::new()).is_none() {
            tracing::warn!(route = %upstream.route.path, "no upstream target is in");
            return Err(ErrorCode::UpstreamUnavailable);
        }
        let state = targets.get(0);
        let in_flight = targets.in_flight(0);
        let sent = tokio::time::timeout(upstream.route.timeout, self.send(state, is_head, ours)).await;
        match sent {
            Ok(Ok((framing, status))) => {
                targets.succeeded(0);
                Ok((framing, status, in_flight))
            }
            Ok(Err(failure)) => {
                self.upstream = None;
                if failure.connect {
                    targets.failed(0);
                }
                tracing::warn!(error = %failure.error, upstream = %state.target.address, "upstream request failed");
                Err(ErrorCode::UpstreamUnavailable)
            }
            Err(_) => {
                self.upstream = None;
                targets.failed(0);
                tracing::warn!(upstream = %state.target.address, timeout = ?upstream.route.timeout, "upstream timed out");
                Err(ErrorCode::UpstreamTimeout)
            }
        }
    }

    async fn send(&mut self, state: &TargetState, is_head: bool, ours: &Ours) -> Result<(Framing, u16), Failure> {
        for attempt in 0..2 {
            let reused = self.upstream.as_ref().is_some_and(|u| u.target == state.target.id);
            if !reused {
                self.upstream = Some(connect(state).await?);
            }
            let Some(up) = self.upstream.as_mut() else {
                return Err(Failure::io(io::ErrorKind::NotConnected.into()));
            };
            self.out.clear();
            match read_answer_head(up, &self.head, is_head, ours, &mut self.out).await {
                Ok(Some(framing)) => return Ok(framing),
                Ok(None) if reused && attempt == 0 => self.upstream = None,
                Err(_) if reused && attempt == 0 => self.upstream = None,
                Ok(None) => return Err(Failure::io(io::ErrorKind::UnexpectedEof.into())),
                Err(error) => return Err(Failure::io(error)),
            }
        }
        Err(Failure::io(io::ErrorKind::UnexpectedEof.into()))
    }

    /// Writes `self.out` (the answer's head) and the body to the client.
    async fn forward_body(&mut self, framing: Framing) -> Step {
        let Some(up) = self.upstream.as_mut() else {
            return Step::Close;
        };
        let copied = match framing {
            Framing::Empty => self.stream.write_all(&self.out).await.map(|()| true),
            Framing::Length(length) => copy_length(up, &mut self.stream, &mut self.out, length)
                .await
                .map(|()| true),
            Framing::Chunked => copy_chunked(up, &mut self.stream, &mut self.out).await.map(|()| true),
            Framing::UntilClose => copy_until_close(up, &mut self.stream, &mut self.out)
                .await
                .map(|()| false),
        };
        let reusable = up.buf.is_empty() && !up.closing;
        if !reusable || !matches!(copied, Ok(true)) {
            self.upstream = None;
        }
        match copied {
            Ok(true) => Step::Answered,
            Ok(false) | Err(_) => Step::Close,
        }
    }

    /// An error of this node's catalog, answered on the fast path.
    async fn error_answer(&mut self, response: Response, request_id: &HeaderValue, done: &mut Done) -> Next {
        let (parts, body) = response.into_parts();
        done.status = parts.status.as_u16();
        done.latency = done.started.map(|started| started.elapsed());
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let out = &mut self.out;
        out.clear();
        status_line(
            out,
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or(""),
        );
        for (name, value) in &parts.headers {
            push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        push_header(out, super::X_REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
        push_header(
            out,
            b"date",
            httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
        );
        push_header(
            out,
            b"content-length",
            itoa::Buffer::new().format(body.len()).as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        Next::Written
    }
}

/// Where a request came from, as [`super::Exchange::read`] and
/// `proxy::upstream_headers` decide it. A trusted proxy's headers are read
/// through a `HeaderMap`, made for its requests only, so both paths share
/// one reading of them.
struct From {
    client: IpAddr,
    request_id: HeaderValue,
    forwarded_for: HeaderValue,
    /// A trusted proxy said which protocol its client used.
    proto_from_proxy: bool,
}

impl From {
    fn of(gw: &Gateway, conn: &ClientConnection, headers: &[httparse::Header<'_>]) -> Self {
        let peer = conn.peer;
        if !keygate_core::ip::is_trusted_proxy(peer.ip(), &gw.trusted_proxies) {
            return Self {
                client: keygate_core::ip::canonical(peer.ip()),
                request_id: new_request_id(),
                forwarded_for: conn.peer_address.clone(),
                proto_from_proxy: false,
            };
        }
        let mut map = HeaderMap::with_capacity(headers.len());
        for header in headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(header.name.as_bytes()),
                HeaderValue::from_bytes(header.value),
            ) {
                map.append(name, value);
            }
        }
        let client = client_ip(peer, &map, &gw.trusted_proxies);
        let chain = forwarded_chain(&map, peer.ip(), client);
        Self {
            client,
            request_id: super::request_id(true, &map),
            forwarded_for: HeaderValue::from_str(&chain).unwrap_or_else(|_| conn.peer_address.clone()),
            proto_from_proxy: map.contains_key("x-forwarded-proto"),
        }
    }
}

/// What is left to do for the client once the request is counted.
enum Next {
    /// Write the answer's head in `out`, then its body from the upstream,
    /// holding the concurrency permit and the target's in-flight count.
    Body(Framing, (Option<Permit>, Option<InFlight>)),
    /// Write `out`: a whole answer of this node's.
    Written,
    /// Hyper answers it.
    ToHyper,
}

/// How a request ended, for `/metrics` and the access log.
struct Done {
    /// Set when the access log is on.
    started: Option<Instant>,
    /// Until the answer's head was ready, as the access log counts it.
    latency: Option<Duration>,
    status: u16,
    outcome: &'static str,
    key: Option<Arc<CachedKey>>,
}

/// Why an exchange with an upstream failed.
struct Failure {
    error: io::Error,
    /// It could not connect (counts against the target's health).
    connect: bool,
}

impl Failure {
    fn io(error: io::Error) -> Self {
        Self { error, connect: false }
    }
}

async fn connect(state: &TargetState) -> Result<UpConn, Failure> {
    let target = &state.target;
    let connected = tokio::time::timeout(target.connect_timeout, TcpStream::connect(&*target.address)).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(Failure { error, connect: true }),
        Err(_) => {
            return Err(Failure {
                error: io::ErrorKind::TimedOut.into(),
                connect: true,
            })
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(UpConn {
        stream,
        buf: BytesMut::with_capacity(8192),
        target: target.id,
        closing: false,
    })
}

/// How an answer's body is delimited.
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Where a head that may begin before `from` ends: after its first empty
/// line, `\r\n\r\n` or `\n\n` (httparse takes both; a lone `\r` is
/// left to its parse to refuse).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr_iter(b'\n', &buf[from..]).find_map(|at| {
        let rest = &buf[from + at + 1..];
        match rest {
            [b'\n', ..] => Some(from + at + 2),
            [b'\r', b'\n', ..] => Some(from + at + 3),
            _ => None,
        }
    })
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the head, reads the answer's head into `out` (ours after its
/// status line, its hop-by-hop headers left out) and says how its body is
/// framed. `Ok(None)`: the connection closed before any byte of an answer.
async fn read_answer_head(
    up: &mut UpConn,
    head: &[u8],
    is_head: bool,
    ours: &Ours,
    out: &mut Vec<u8>,
) -> io::Result<Option<(Framing, u16)>> {
    up.stream.write_all(head).await?;
    loop {
        if !up.buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&up.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let framing = answer_head(&response, is_head, ours, out, &mut up.closing)?;
                    up.buf.advance(len);
                    return Ok(Some(framing));
                }
                Ok(httparse::Status::Partial) if up.buf.len() < 64 * 1024 => {}
                _ => return Err(io::ErrorKind::InvalidData.into()),
            }
        }
        if up.stream.read_buf(&mut up.buf).await? == 0 {
            return if up.buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

fn answer_head(
    response: &httparse::Response<'_, '_>,
    is_head: bool,
    ours: &Ours,
    out: &mut Vec<u8>,
    closing: &mut bool,
) -> io::Result<(Framing, u16)> {
    let code = response.code.ok_or(io::ErrorKind::InvalidData)?;
    // 1xx: the fast path sends no `Expect` and no `Upgrade`, so none is due.
    if code < 200 {
        return Err(io::ErrorKind::Unsupported.into());
    }
    status_line(out, code, response.reason.unwrap_or(""));
    out.extend_from_slice(&ours.bytes);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut named_by_connection: Vec<&str> = Vec::new();
    *closing = response.version == Some(0);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") {
            let tokens = std::str::from_utf8(header.value).map_err(|_| io::ErrorKind::InvalidData)?;
            for token in tokens.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    *closing = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    *closing = false;
                }
                named_by_connection.push(token);
            }
        }
    }
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` (last) is framing a proxy can pass on as it is.
            chunked = header.value.eq_ignore_ascii_case(b"chunked");
            if !chunked {
                return Err(io::ErrorKind::Unsupported.into());
            }
        }
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            match (length, value) {
                (_, None) => return Err(io::ErrorKind::InvalidData.into()),
                (Some(seen), Some(value)) if seen != value => return Err(io::ErrorKind::InvalidData.into()),
                (_, Some(value)) => length = Some(value),
            }
        }
        let hop =
            is_hop_by_hop(name) || named_by_connection.iter().any(|n| name.eq_ignore_ascii_case(n)) || ours.has(name);
        if !hop {
            push_header(out, name.as_bytes(), header.value);
        }
    }
    let framing = if is_head || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        if length.is_some() {
            // Both: a smuggling attempt or a broken upstream (RFC 9112 section 6.3).
            return Err(io::ErrorKind::InvalidData.into());
        }
        push_header(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        *closing = true;
        push_header(out, b"connection", b"close");
        Framing::UntilClose
    };
    out.extend_from_slice(b"\r\n");
    Ok((framing, code))
}

/// The head in `out` and `length` bytes of body: in one write when they
/// have all arrived, as most answers have.
async fn copy_length(up: &mut UpConn, client: &mut TcpStream, out: &mut Vec<u8>, length: usize) -> io::Result<()> {
    let mut left = length;
    let take = left.min(up.buf.len());
    out.extend_from_slice(&up.buf[..take]);
    up.buf.advance(take);
    left -= take;
    client.write_all(out).await?;
    while left > 0 {
        if up.stream.read_buf(&mut up.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = left.min(up.buf.len());
        client.write_all(&up.buf[..take]).await?;
        up.buf.advance(take);
        left -= take;
    }
    Ok(())
}

/// A chunked body, passed on as it came: chunk sizes are read only to find its end.
async fn copy_chunked(up: &mut UpConn, client: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    let mut state = Chunks::Size;
    loop {
        let (used, done) = state.scan(&up.buf)?;
        out.extend_from_slice(&up.buf[..used]);
        up.buf.advance(used);
        if done {
            return client.write_all(out).await;
        }
        if !out.is_empty() {
            client.write_all(out).await?;
            out.clear();
        }
        if up.stream.read_buf(&mut up.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Where a chunked body stands.
#[derive(Clone, Copy)]
enum Chunks {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes are left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

impl Chunks {
    /// How much of `bytes` belongs to the body, and whether the body ends there.
    fn scan(&mut self, bytes: &[u8]) -> io::Result<(usize, bool)> {
        let mut at = 0;
        loop {
            let rest = &bytes[at..];
            match *self {
                Chunks::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        at += used;
                        *self = Chunks::Trailers;
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        at += used;
                        *self = Chunks::Data(size);
                    }
                    Ok(httparse::Status::Partial) => return Ok((at, false)),
                    Err(_) => return Err(io::ErrorKind::InvalidData.into()),
                },
                Chunks::Data(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    at += take;
                    let left = left - u64::try_from(take).unwrap_or(u64::MAX);
                    if left > 0 {
                        *self = Chunks::Data(left);
                        return Ok((at, false));
                    }
                    *self = Chunks::DataEnd;
                }
                Chunks::DataEnd => match rest.get(..2) {
                    None => return Ok((at, false)),
                    Some(b"\r\n") => {
                        at += 2;
                        *self = Chunks::Size;
                    }
                    Some(_) => return Err(io::ErrorKind::InvalidData.into()),
                },
                Chunks::Trailers => {
                    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                        return Ok((at, false));
                    };
                    at += end + 2;
                    if end == 0 {
                        return Ok((at, true));
                    }
                }
            }
        }
    }
}

/// A body that ends when the upstream closes: the client's connection ends with it.
async fn copy_until_close(up: &mut UpConn, client: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    out.extend_from_slice(&up.buf);
    up.buf.clear();
    client.write_all(out).await?;
    loop {
        if up.stream.read_buf(&mut up.buf).await? == 0 {
            return client.shutdown().await;
        }
        client.write_all(&up.buf).await?;
        up.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8], split: usize) -> io::Result<(usize, bool)> {
        let mut state = Chunks::Size;
        let (first, done) = state.scan(&body[..split])?;
        if done {
            return Ok((first, true));
        }
        let (second, done) = state.scan(&body[first..])?;
        Ok((first + second, done))
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_wherever_it_is_split() {
        let body = b"5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for split in 0..body.len() - 4 {
            assert_eq!(
                scan_all(body, split).unwrap(),
                (body.len() - 4, true),
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line_wherever_the_search_starts() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next";
        // raw.rs's `read_head` searches again from three bytes before the end of what it had.
        for from in 0..=24 {
            assert_eq!(head_end(head, from), Some(27), "from {from}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
    }

    #[test]
    fn a_chunk_without_its_crlf_is_refused() {
        let mut state = Chunks::Size;
        assert!(state.scan(b"5\r\nhelloXX0\r\n\r\n").is_err());
    }
}
