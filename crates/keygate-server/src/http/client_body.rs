//! The client's request body on its way to the upstream: capped at the
//! route's `max_body_size`, with its failures told apart from the upstream's,
//! and, after a 413, the rest read and thrown away for a while before the
//! connection closes.
//!
//! Why the last part: a server that closes a connection with unread bytes in
//! its receive buffer makes the kernel reset it. A client that writes its
//! whole body before reading (Python's `http.client` and `requests`, most
//! SDKs) then sees "connection reset" instead of the 413 and its JSON. nginx
//! reads on for a bounded time ("lingering close"); so does keygate, within
//! [`LINGER_FOR`] and [`LINGER_BYTES`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// How long the rest of an oversized body is read before the connection closes.
pub const LINGER_FOR: Duration = Duration::from_secs(5);
/// How much of it is read at most.
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// The body went past the route's limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the route's max_body_size")]
pub struct BodyTooLarge;

/// Reading the client's body failed (bad chunk framing, a connection cut
/// mid-body): the client's error, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body: {0}")]
pub struct ClientBodyError(#[source] axum::Error);

/// The client's body, failing with [`BodyTooLarge`] past `max_bytes` (and
/// then discarding the unread rest itself, see [`discard_rest`]) and with
/// [`ClientBodyError`] when the client's bytes are not a body.
pub struct CappedBody {
    inner: Option<Body>,
    remaining: u64,
}

impl CappedBody {
    pub fn new(body: Body, max_bytes: u64) -> Self {
        Self {
            inner: Some(body),
            remaining: max_bytes,
        }
    }
}

impl HttpBody for CappedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(ClientBodyError(err).into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let len = frame.data_ref().map_or(0, |data| data.len() as u64);
        if len > this.remaining {
            // The 413 is written while the rest is read and dropped.
            if let Some(rest) = this.inner.take() {
                discard_rest(rest);
            }
            return Poll::Ready(Some(Err(BodyTooLarge.into())));
        }
        this.remaining -= len;
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// Reads and drops the rest of a body in the background, for at most
/// [`LINGER_FOR`] and [`LINGER_BYTES`], so that the 413 written meanwhile
/// reaches a client that is still sending. Then the body is dropped and the
/// connection (answered with `Connection: close`) ends.
pub fn discard_rest(mut body: Body) {
    tokio::spawn(async move {
        let mut read = 0u64;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |data| data.len() as u64);
                if read > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_FOR, drain).await;
    });
}
