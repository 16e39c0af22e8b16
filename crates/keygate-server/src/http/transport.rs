//! Accepting connections for one plane: plain TCP or TLS, HTTP/1.1 and
//! HTTP/2, `Upgrade` (WebSocket), a bounded request head, and a graceful
//! shutdown that stops accepting and lets open requests finish.
//!
//! `axum::serve` would be shorter, but it neither terminates TLS nor exposes
//! hyper's header limit, so the planes use hyper-util's server directly. The
//! control plane routes with axum; the data plane answers without a router
//! (crates/keygate-server/src/http/gateway.rs). Both are a [`Plane`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// What answers one plane's requests: it makes one service per accepted
/// connection, which hyper calls for each of that connection's requests.
pub trait Plane: Clone + Send + 'static {
    type Connection: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static;

    fn connection(&self, peer: SocketAddr, transport: Transport) -> Self::Connection;

    /// The data plane's fast path (crates/keygate-server/src/http/gateway/raw.rs):
    /// it serves a plain connection until a request needs hyper, then hands
    /// it back. The control plane has none.
    fn raw(&self, _connection: &Self::Connection, _transport: Transport) -> Option<RawServe> {
        None
    }
}

/// Serves a plain connection; hands back what hyper must go on with.
pub type RawServe = Box<
    dyn FnOnce(
            TcpStream,
            CancellationToken,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<crate::http::gateway::raw::Prefixed>> + Send>,
        > + Send,
>;

/// The control plane: an axum router, which finds the peer and transport in
/// each request's extensions.
impl Plane for Router {
    type Connection = RouterConnection;

    fn connection(&self, peer: SocketAddr, transport: Transport) -> RouterConnection {
        RouterConnection {
            router: self.clone(),
            peer,
            transport,
        }
    }
}

pub struct RouterConnection {
    router: Router,
    peer: SocketAddr,
    transport: Transport,
}

impl hyper::service::Service<hyper::Request<Incoming>> for RouterConnection {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        request.extensions_mut().insert(self.transport);
        self.router.clone().call(request)
    }
}

/// How a request reached this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transport {
    /// The connection was TLS, terminated here.
    pub tls: bool,
}

/// A client that connects and never finishes its TLS handshake must not hold a task forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Slow-loris protection: a request head must arrive within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct ServeOptions {
    pub tls: Option<TlsAcceptor>,
    pub max_header_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert: cannot read {path}: {source}")]
    Cert {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("server.tls.cert: {path} holds no certificate")]
    NoCert { path: String },
    #[error("server.tls.key: cannot read a private key from {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("server.tls: the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Reads the PEM files once at start; HTTP/2 is offered by ALPN, HTTP/1.1 otherwise.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_path = cert.display().to_string();
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: cert_path.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert { path: cert_path });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.display().to_string(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves the data plane on `threads` OS threads, each with its own
/// single-threaded runtime accepting from the same socket, like nginx's
/// workers. A request then never leaves the thread that accepted it, nor
/// do the upstream connections of its client connection (`make_plane` runs
/// once per thread): on a two-core machine this proxied about 1.4 times as many
/// requests per second as one multi-threaded runtime (BENCHMARKS.md).
/// Each returned receiver resolves when its thread has finished.
pub fn serve_on_threads<P: Plane>(
    plane: &'static str,
    listener: std::net::TcpListener,
    threads: usize,
    make_plane: impl Fn() -> P,
    options: ServeOptions,
    stop: CancellationToken,
) -> std::io::Result<Vec<oneshot::Receiver<()>>> {
    listener.set_nonblocking(true)?;
    let mut finished = Vec::with_capacity(threads);
    for index in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let (answers, options, stop) = (make_plane(), options.clone(), stop.clone());
        let (done, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("keygate-{plane}-{index}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => serve(plane, listener, answers, options, stop).await,
                            Err(err) => tracing::error!(plane, error = %err, "cannot listen"),
                        }
                    }),
                    Err(err) => tracing::error!(plane, error = %err, "cannot start a runtime"),
                }
                let _ = done.send(());
            })?;
        finished.push(done_rx);
    }
    Ok(finished)
}

/// Serves `answers` on `listener` until `stop` is cancelled, then waits for
/// open requests to finish (the caller bounds that wait).
pub async fn serve<P: Plane>(
    plane: &'static str,
    listener: TcpListener,
    answers: P,
    options: ServeOptions,
    stop: CancellationToken,
) {
    let builder = connection_builder(options.max_header_bytes);
    let graceful = GracefulShutdown::new();
    let stopping = stop.clone();
    let stop = stop.cancelled_owned();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let transport = Transport { tls: options.tls.is_some() };
                    let service = answers.connection(peer, transport);
                    let connection = Connection {
                        stream,
                        peer,
                        raw: answers.raw(&service, transport),
                        stop: stopping.clone(),
                        service,
                        builder: builder.clone(),
                        tls: options.tls.clone(),
                    };
                    tokio::spawn(connection.run(graceful.watcher()));
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(plane, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut stop => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

fn connection_builder(max_header_bytes: usize) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    builder
}

struct Connection<S> {
    stream: TcpStream,
    peer: SocketAddr,
    raw: Option<RawServe>,
    stop: CancellationToken,
    service: S,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
}

impl<S> Connection<S>
where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static,
{
    async fn run(self, watcher: Watcher) {
        let _ = self.stream.set_nodelay(true);
        let (peer, service) = (self.peer, self.service);
        let result = match self.tls {
            None => match self.raw {
                Some(raw) => match raw(self.stream, self.stop).await {
                    Some(rest) => serve_io(&self.builder, rest, service, watcher).await,
                    None => Ok(()),
                },
                None => serve_io(&self.builder, self.stream, service, watcher).await,
            },
            Some(acceptor) => {
                let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(self.stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                serve_io(&self.builder, stream, service, watcher).await
            }
        };
        if let Err(err) = result {
            // Clients that reset or send garbage end up here; it is theirs, not ours.
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    }
}

/// One connection, plain or TLS, watched for graceful shutdown.
async fn serve_io<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    watcher: Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static,
{
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    watcher.watch(connection.into_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_name_the_setting_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = tls_acceptor(&missing, &missing).err().unwrap().to_string();
        assert!(
            err.starts_with("server.tls.cert") && err.contains("missing.pem"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = tls_acceptor(&empty, &empty).err().unwrap().to_string();
        assert!(err.contains("holds no certificate"), "{err}");

        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        let err = tls_acceptor(&cert, &cert).err().unwrap().to_string();
        assert!(err.starts_with("server.tls.key"), "{err}");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        assert!(tls_acceptor(&cert, &key).is_ok());
    }
}
