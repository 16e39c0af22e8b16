//! The engine's floor (issue 16): a reverse proxy on the same parts as
//! keygate's data plane (hyper's HTTP/1 server, one upstream connection per
//! client connection with `hyper::client::conn`, one current-thread runtime,
//! mimalloc) that does nothing else. `scripts/bench/gateway.sh` runs it as a
//! case of its own (`BARE=1`), so the gap between it and keygate's open route
//! is keygate's own work, and the gap between it and nginx is the engine's.
//!
//! Usage: bare_proxy LISTEN_PORT UPSTREAM_PORT (both on 127.0.0.1)

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut port = || -> Result<u16, Box<dyn std::error::Error>> {
        Ok(args
            .next()
            .ok_or("usage: bare_proxy LISTEN_PORT UPSTREAM_PORT")?
            .parse()?)
    };
    let (listen, upstream) = (port()?, port()?);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(listen, upstream))
}

async fn serve(listen: u16, upstream: u16) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(("127.0.0.1", listen)).await?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let sender = Arc::new(Mutex::new(None::<SendRequest<Incoming>>));
            let service = service_fn(move |request| forward(sender.clone(), upstream, request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Sends `request` on the client connection's upstream connection, opened on first use.
async fn forward(
    sender: Arc<Mutex<Option<SendRequest<Incoming>>>>,
    upstream: u16,
    mut request: Request<Incoming>,
) -> Result<Response<Either<Incoming, Empty<Bytes>>>, Infallible> {
    let mut slot = sender.lock().await;
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", upstream)).await else {
            return Ok(bad_gateway());
        };
        let _ = stream.set_nodelay(true);
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

fn bad_gateway() -> Response<Either<Incoming, Empty<Bytes>>> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
