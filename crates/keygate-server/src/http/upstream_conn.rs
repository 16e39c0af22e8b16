//! The upstream connections of one downstream connection (issue 16, design 1
//! of the engine bake-off; BENCHMARKS.md, docs/decisions.md).
//!
//! Each client connection keeps its own HTTP/1.1 connections to the upstreams
//! it has used, opened on first use with `hyper::client::conn`, and reuses
//! them for its next requests. Compared with a pool shared by the thread
//! there is no checkout, no channel and no wake-up of another task per
//! request: the request goes from the downstream connection's task straight
//! onto its upstream socket.
//!
//! What a pool gives for free is done here too:
//! - a connection the upstream has closed while idle is noticed before use
//!   (`is_closed`) and replaced;
//! - a request that hyper hands back unsent (the connection turned out
//!   closed before any byte of it was written) is sent once more on a new
//!   connection, so a keep-alive race never reaches the client as a 502;
//! - so is an idempotent request without a body ([`Replay`]) that failed on
//!   a reused connection after it was written: the upstream closed the
//!   connection as it was taken, before its close was seen here;
//! - connections end with the client connection that owns them.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Uri};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle upstream connections one client connection keeps, over all routes.
/// HTTP/1.1 clients use one at a time; HTTP/2 clients may need a few.
const MAX_IDLE: usize = 8;

/// Where and how to connect for one target of a route.
#[derive(Debug, Clone)]
pub struct Target {
    /// Unique over all routes' targets: which idle connections are its.
    pub id: usize,
    /// `host:port`, resolved when connecting.
    pub address: Arc<str>,
    pub connect_timeout: Duration,
}

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: Arc<str>,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {address} timed out after {timeout:?}")]
    ConnectTimeout { address: Arc<str>, timeout: Duration },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// The target could not be reached: it counts against its health, and
    /// the request may go to another target.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }
}

/// A failed send, with the request when it was provably never written.
pub struct SendFailure {
    pub error: SendError,
    pub unsent: Option<hyper::Request<Body>>,
}

impl From<SendError> for SendFailure {
    fn from(error: SendError) -> Self {
        Self { error, unsent: None }
    }
}

/// Methods that may be sent twice (RFC 9110 section 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What is kept of a request to send it again after a failure that may
/// have come after its bytes reached a target: only idempotent requests
/// without a body have one.
pub struct Replay {
    method: Method,
    headers: HeaderMap,
}

impl Replay {
    pub fn of(method: &Method, headers: &HeaderMap, body: &Body) -> Option<Self> {
        (is_idempotent(method) && body.is_end_stream()).then(|| Self {
            method: method.clone(),
            headers: headers.clone(),
        })
    }

    /// The request again, without its URI: the caller aims it at a target.
    pub fn request(&self) -> hyper::Request<Body> {
        let mut request = hyper::Request::new(Body::empty());
        *request.method_mut() = self.method.clone();
        *request.headers_mut() = self.headers.clone();
        *request.version_mut() = axum::http::Version::HTTP_11;
        request
    }

    fn request_to(&self, uri: Uri) -> hyper::Request<Body> {
        let mut request = self.request();
        *request.uri_mut() = uri;
        request
    }
}

/// One per client connection of the data plane
/// (crates/keygate-server/src/http/gateway.rs, `ClientConnection`); the
/// proxy takes an idle connection from it and gives it back. The client
/// connection is shared already, so this holds its list directly.
#[derive(Default)]
pub struct UpstreamConnections(Mutex<Vec<Idle>>);

/// An idle connection and the target it goes to.
type Idle = (usize, SendRequest<Body>);

impl UpstreamConnections {
    /// Sends `request` on an idle connection to `target`, or a new one. A
    /// request hyper hands back unsent goes once more, on a new connection,
    /// and so does one with a `replay` that failed on the idle connection
    /// after it was written; a connect failure hands the request back to the
    /// caller, for another target. An upgraded connection is not kept: the
    /// tunnel owns it.
    ///
    /// A new connection's path is boxed: after a client connection's first
    /// request it is rare, and inline it made every request's future about
    /// 260 bytes larger, and every request's future is moved as it is built
    /// (BENCHMARKS.md, "Smaller request futures").
    pub async fn send(
        &self,
        target: &Target,
        request: hyper::Request<Body>,
        replay: Option<&Replay>,
    ) -> Result<hyper::Response<Incoming>, SendFailure> {
        let Some(mut sender) = self.take_idle(target.id) else {
            return Box::pin(self.send_on_new(target, request)).await;
        };
        let uri = replay.map(|_| request.uri().clone());
        let again = match sender.try_send_request(request).await {
            Ok(response) => {
                self.keep(target.id, sender, &response);
                return Ok(response);
            }
            Err(mut failed) => match (failed.take_message(), replay.zip(uri)) {
                (Some(unsent), _) => {
                    tracing::debug!(error = %failed.error(), "stale upstream connection; sending on a new one");
                    unsent
                }
                (None, Some((replay, uri))) => {
                    tracing::debug!(error = %failed.error(), "a reused upstream connection failed; sending the idempotent request again on a new one");
                    replay.request_to(uri)
                }
                (None, None) => return Err(SendError::from(failed.into_error()).into()),
            },
        };
        Box::pin(self.send_on_new(target, again)).await
    }

    /// `request` on a new connection to `target`, kept for the next
    /// request if the answer leaves it open.
    async fn send_on_new(
        &self,
        target: &Target,
        request: hyper::Request<Body>,
    ) -> Result<hyper::Response<Incoming>, SendFailure> {
        let mut sender = match connect(target).await {
            Ok(sender) => sender,
            Err(error) => {
                return Err(SendFailure {
                    error,
                    unsent: Some(request),
                })
            }
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                self.keep(target.id, sender, &response);
                Ok(response)
            }
            Err(mut failed) => {
                let unsent = failed.take_message();
                Err(SendFailure {
                    error: failed.into_error().into(),
                    unsent,
                })
            }
        }
    }

    /// An open connection to target `id` that can take a request now;
    /// closed ones are dropped on the way.
    fn take_idle(&self, id: usize) -> Option<SendRequest<Body>> {
        let mut idle = self.0.lock();
        idle.retain(|(_, sender)| !sender.is_closed());
        let at = idle.iter().position(|(t, sender)| *t == id && sender.is_ready())?;
        Some(idle.swap_remove(at).1)
    }

    /// Takes over an idle connection to target `id` that the fast path
    /// (crates/keygate-server/src/http/gateway/raw.rs) opened, when hyper
    /// takes over its client connection: the next request goes on it, as it
    /// would have there.
    pub async fn adopt(&self, id: usize, stream: TcpStream) {
        let Ok(mut sender) = handshake(stream).await else {
            return;
        };
        // Ready once its task has run: an idle connection is taken only then.
        if sender.ready().await.is_err() {
            return;
        }
        let mut idle = self.0.lock();
        if idle.len() < MAX_IDLE {
            idle.push((id, sender));
        }
    }

    /// Keeps a connection for the next request, unless the response took it
    /// over (`101 Switching Protocols`) or it is closing.
    fn keep(&self, id: usize, sender: SendRequest<Body>, response: &hyper::Response<Incoming>) {
        if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS || sender.is_closed() {
            return;
        }
        let mut idle = self.0.lock();
        if idle.len() < MAX_IDLE {
            idle.push((id, sender));
        }
    }
}

/// A new HTTP/1.1 connection; its task runs until the connection closes or
/// every handle to it is dropped.
pub(crate) async fn connect(target: &Target) -> Result<SendRequest<Body>, SendError> {
    let connecting = TcpStream::connect(&*target.address);
    let stream = match tokio::time::timeout(target.connect_timeout, connecting).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(SendError::Connect {
                address: target.address.clone(),
                source,
            })
        }
        Err(_) => {
            return Err(SendError::ConnectTimeout {
                address: target.address.clone(),
                timeout: target.connect_timeout,
            })
        }
    };
    handshake(stream).await
}

/// Hyper's client on a connected stream.
async fn handshake(stream: TcpStream) -> Result<SendRequest<Body>, SendError> {
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
