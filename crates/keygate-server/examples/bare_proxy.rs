//! The engine's floor (issue 16): a reverse proxy on the same parts as
//! keygate's data plane (hyper's HTTP/1 server, one upstream connection per
//! client connection with `hyper::client::conn`, one current-thread runtime,
//! mimalloc) that does nothing else. `scripts/bench/gateway.sh` runs it as a
//! case of its own (`BARE=1`), so the gap between it and keygate's open route
//! is keygate's own work, and the gap between it and nginx is the engine's.
//!
//! With `inline` it uses a hand-written HTTP/1 client instead of hyper's:
//! the request head is written to the upstream socket and the response read
//! back in the client connection's own task, with no dispatch channel and no
//! task per upstream connection. It handles only what the benchmark sends
//! (requests without a body, answers with a `Content-Length`); it is there to
//! measure what such a client would save (`scripts/bench/bare.sh`), not to be
//! used.
//!
//! With `raw` there is no hyper at all: each client connection's task reads
//! request heads from its socket with `httparse`, writes each one, header by
//! header, to its own upstream connection, and copies the answer back the
//! same way (answers with a `Content-Length` only). It is the floor of any
//! HTTP/1 proxy on tokio that reads every header it forwards: what a
//! hand-written engine could at best save (BENCHMARKS.md, "The floor of a
//! hand-written engine").
//!
//! Usage: bare_proxy LISTEN_PORT UPSTREAM_PORT [inline|raw] (both on 127.0.0.1)

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Answer = Response<Either<Incoming, Full<Bytes>>>;

/// Response headers the inline client reads at most.
const MAX_HEADERS: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: bare_proxy LISTEN_PORT UPSTREAM_PORT [inline]";
    let mut args = std::env::args().skip(1);
    let mut port = || -> Result<u16, Box<dyn std::error::Error>> { Ok(args.next().ok_or(USAGE)?.parse()?) };
    let (listen, upstream) = (port()?, port()?);
    let engine = match args.next().as_deref() {
        None => Engine::Hyper,
        Some("inline") => Engine::Inline,
        Some("raw") => Engine::Raw,
        Some(_) => return Err(USAGE.into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(listen, upstream, engine))
}

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Hyper,
    Inline,
    Raw,
}

async fn serve(listen: u16, upstream: u16, engine: Engine) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(("127.0.0.1", listen)).await?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = http1::Builder::new();
        tokio::spawn(async move {
            if engine == Engine::Raw {
                let _ = Raw::serve(stream, upstream).await;
                return;
            }
            let io = TokioIo::new(stream);
            if engine == Engine::Inline {
                let upstream_conn = Arc::new(Mutex::new(None::<Inline>));
                let service = service_fn(move |request| forward_inline(upstream_conn.clone(), upstream, request));
                let _ = builder.serve_connection(io, service).await;
            } else {
                let sender = Arc::new(Mutex::new(None::<SendRequest<Incoming>>));
                let service = service_fn(move |request| forward(sender.clone(), upstream, request));
                let _ = builder.serve_connection(io, service).await;
            }
        });
    }
}

async fn connect(upstream: u16) -> Option<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", upstream)).await.ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

/// Sends `request` on the client connection's upstream connection, opened on first use.
async fn forward(
    sender: Arc<Mutex<Option<SendRequest<Incoming>>>>,
    upstream: u16,
    mut request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    let mut slot = sender.lock().await;
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        let Some(stream) = connect(upstream).await else {
            return Ok(bad_gateway());
        };
        let Ok((send, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            return Ok(bad_gateway());
        };
        tokio::spawn(connection);
        *slot = Some(send);
    }
    let Some(send) = slot.as_mut() else {
        return Ok(bad_gateway());
    };
    if let Some(path) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = path.into();
    }
    match send.send_request(request).await {
        Ok(response) => Ok(response.map(Either::Left)),
        Err(_) => Ok(bad_gateway()),
    }
}

/// The inline client's upstream connection: the socket, what was read from
/// it past the last response, and the buffer request heads are written from.
struct Inline {
    stream: TcpStream,
    read: BytesMut,
    head: Vec<u8>,
}

async fn forward_inline(
    slot: Arc<Mutex<Option<Inline>>>,
    upstream: u16,
    request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    if !request.body().is_end_stream() {
        let mut refused = bad_gateway();
        *refused.status_mut() = StatusCode::NOT_IMPLEMENTED;
        return Ok(refused);
    }
    let mut slot = slot.lock().await;
    if slot.is_none() {
        let Some(stream) = connect(upstream).await else {
            return Ok(bad_gateway());
        };
        *slot = Some(Inline {
            stream,
            read: BytesMut::with_capacity(8192),
            head: Vec::with_capacity(1024),
        });
    }
    let Some(conn) = slot.as_mut() else {
        return Ok(bad_gateway());
    };
    match conn.exchange(&request).await {
        Some(response) => Ok(response),
        None => {
            *slot = None;
            Ok(bad_gateway())
        }
    }
}

impl Inline {
    /// Writes the request's head and reads the whole answer; `None` if the
    /// connection failed or answered something this client does not read.
    async fn exchange(&mut self, request: &Request<Incoming>) -> Option<Answer> {
        self.write_head(request);
        self.stream.write_all(&self.head).await.ok()?;
        let (mut response, length) = loop {
            if let Some(parsed) = self.parse_head()? {
                break parsed;
            }
            fill(&mut self.stream, &mut self.read).await?;
        };
        while self.read.len() < length {
            fill(&mut self.stream, &mut self.read).await?;
        }
        let body = self.read.split_to(length).freeze();
        *response.body_mut() = Either::Right(Full::new(body));
        Some(response)
    }

    fn write_head(&mut self, request: &Request<Incoming>) {
        let head = &mut self.head;
        head.clear();
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        for part in [request.method().as_str(), " ", target, " HTTP/1.1\r\n"] {
            head.extend_from_slice(part.as_bytes());
        }
        for (name, value) in request.headers() {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
    }

    /// The response head, once it has all arrived, and its body's length.
    /// Values are slices of the read buffer, as hyper makes them.
    fn parse_head(&mut self) -> Option<Option<(Answer, usize)>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        let end = match parsed.parse(&self.read).ok()? {
            httparse::Status::Partial => return Some(None),
            httparse::Status::Complete(end) => end,
        };
        let status = StatusCode::from_u16(parsed.code?).ok()?;
        // Where each name and value lies in the buffer, on the stack.
        let base = self.read.as_ptr() as usize;
        let mut spans: [_; MAX_HEADERS] = std::array::from_fn(|_| (0..0, 0..0));
        let count = parsed.headers.len();
        for (span, header) in spans.iter_mut().zip(parsed.headers.iter()) {
            let (name, value) = (
                header.name.as_ptr() as usize - base,
                header.value.as_ptr() as usize - base,
            );
            *span = (name..name + header.name.len(), value..value + header.value.len());
        }
        let head = self.read.split_to(end).freeze();
        let mut response = Response::new(Either::Right(Full::default()));
        *response.status_mut() = status;
        let mut length = None;
        for (name, value) in spans.into_iter().take(count) {
            let name = HeaderName::from_bytes(&head[name]).ok()?;
            let value = HeaderValue::from_maybe_shared(head.slice(value)).ok()?;
            if name == CONTENT_LENGTH {
                length = Some(value.to_str().ok()?.parse::<usize>().ok()?);
            }
            response.headers_mut().append(name, value);
        }
        Some(Some((response, length?)))
    }
}

/// One client connection of the `raw` engine and its upstream connection.
struct Raw {
    client: TcpStream,
    upstream: TcpStream,
    /// Read from the client, not yet forwarded.
    requests: BytesMut,
    /// Read from the upstream, not yet forwarded.
    answers: BytesMut,
    /// The head (and body) being written, reused.
    out: Vec<u8>,
}

impl Raw {
    async fn serve(client: TcpStream, upstream: u16) -> Option<()> {
        let mut raw = Raw {
            client,
            upstream: connect(upstream).await?,
            requests: BytesMut::with_capacity(8192),
            answers: BytesMut::with_capacity(8192),
            out: Vec::with_capacity(1024),
        };
        loop {
            raw.forward_request().await?;
            raw.forward_answer().await?;
        }
    }

    /// Reads one request head and writes it to the upstream; a request
    /// with a body ends the connection (this engine forwards none).
    async fn forward_request(&mut self) -> Option<()> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(end) = parsed.parse(&self.requests).ok()? {
                let has_body = parsed.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding")
                        || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
                });
                if has_body {
                    return None;
                }
                let out = &mut self.out;
                out.clear();
                for part in [parsed.method?, " ", parsed.path?, " HTTP/1.1\r\n"] {
                    out.extend_from_slice(part.as_bytes());
                }
                write_headers(out, parsed.headers);
                let _ = self.requests.split_to(end);
                return self.upstream.write_all(&self.out).await.ok();
            }
            fill(&mut self.client, &mut self.requests).await?;
        }
    }

    /// Reads one answer with a `Content-Length` and writes it to the client.
    async fn forward_answer(&mut self) -> Option<()> {
        let (end, length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(end) = parsed.parse(&self.answers).ok()? {
                let length = parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())?;
                let out = &mut self.out;
                out.clear();
                write!(out, "HTTP/1.1 {} {}\r\n", parsed.code?, parsed.reason?).ok()?;
                write_headers(out, parsed.headers);
                break (end, length);
            }
            fill(&mut self.upstream, &mut self.answers).await?;
        };
        while self.answers.len() < end + length {
            fill(&mut self.upstream, &mut self.answers).await?;
        }
        let answer = self.answers.split_to(end + length);
        self.out.extend_from_slice(&answer[end..]);
        self.client.write_all(&self.out).await.ok()
    }
}

/// Each header as `name: value`, then the blank line.
fn write_headers(out: &mut Vec<u8>, headers: &[httparse::Header<'_>]) {
    for header in headers {
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads more from `stream`; `None` at its end.
async fn fill(stream: &mut TcpStream, buffer: &mut BytesMut) -> Option<()> {
    buffer.reserve(4096);
    match stream.read_buf(buffer).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(()),
    }
}

fn bad_gateway() -> Answer {
    let mut response = Response::new(Either::Right(Full::default()));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
