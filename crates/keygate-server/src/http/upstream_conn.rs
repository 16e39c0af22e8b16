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
//! - connections end with the client connection that owns them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle upstream connections one client connection keeps, over all routes.
/// HTTP/1.1 clients use one at a time; HTTP/2 clients may need a few.
const MAX_IDLE: usize = 8;

/// Where and how to connect for one route.
#[derive(Debug, Clone)]
pub struct Target {
    /// The route's position in the config: which idle connections are its.
    pub route: usize,
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

/// Put in each request's extensions by the transport (one per client
/// connection); the proxy takes an idle connection from it and gives it back.
#[derive(Clone, Default)]
pub struct UpstreamConnections(Arc<Mutex<Vec<Idle>>>);

/// An idle connection and the route (config position) it belongs to.
type Idle = (usize, SendRequest<Body>);

impl UpstreamConnections {
    /// Sends `request` on an idle connection to `target`, or a new one. A
    /// request hyper hands back unsent goes once more, on a new connection.
    /// An upgraded connection is not kept: the tunnel owns it.
    pub async fn send(
        &self,
        target: &Target,
        request: hyper::Request<Body>,
    ) -> Result<hyper::Response<Incoming>, SendError> {
        let request = match self.take_idle(target.route) {
            Some(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => {
                    self.keep(target.route, sender, &response);
                    return Ok(response);
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => {
                        tracing::debug!(error = %failed.error(), "stale upstream connection; sending on a new one");
                        unsent
                    }
                    None => return Err(failed.into_error().into()),
                },
            },
            None => request,
        };
        let mut sender = connect(target).await?;
        let response = sender
            .try_send_request(request)
            .await
            .map_err(|failed| failed.into_error())?;
        self.keep(target.route, sender, &response);
        Ok(response)
    }

    /// An open connection to `route` that can take a request now; closed
    /// ones are dropped on the way.
    fn take_idle(&self, route: usize) -> Option<SendRequest<Body>> {
        let mut idle = self.0.lock().ok()?;
        idle.retain(|(_, sender)| !sender.is_closed());
        let at = idle.iter().position(|(r, sender)| *r == route && sender.is_ready())?;
        Some(idle.swap_remove(at).1)
    }

    /// Keeps a connection for the next request, unless the response took it
    /// over (`101 Switching Protocols`) or it is closing.
    fn keep(&self, route: usize, sender: SendRequest<Body>, response: &hyper::Response<Incoming>) {
        if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS || sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.0.lock() {
            if idle.len() < MAX_IDLE {
                idle.push((route, sender));
            }
        }
    }
}

/// A new HTTP/1.1 connection; its task runs until the connection closes or
/// every handle to it is dropped.
async fn connect(target: &Target) -> Result<SendRequest<Body>, SendError> {
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
