//! `KeygateLayer` (issue 21): API-key checks in front of a service that
//! does not sit behind the gateway, by asking keygate's verify API for each
//! request, so limits are charged and usage is recorded exactly as at the
//! gateway, and a revocation holds from the next request.
//!
//! The verified key goes into the request's extensions ([`Authenticated`]).
//! A refusal is keygate's own answer, passed on: its status, its body (the
//! catalog's error in the deployment's words) and its `Retry-After` and
//! rate-limit headers. While keygate cannot be reached, a key admitted in
//! the last `max_stale` is admitted again from the last answer (marked
//! `stale`), and any other key gets `503 SERVICE_UNAVAILABLE`: a key nobody
//! can check is never let in.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::tower::{Layer, Service};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use keygate_core::credential::{select_credential, CredentialError};
use keygate_core::{ErrorCode, KeyHash};
use serde_json::json;

use crate::{Client, Error, Verified, Verify};

/// What a handler finds in the request's extensions once a key was admitted.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub verified: Arc<Verified>,
    /// Admitted from the last good answer while keygate was unreachable.
    pub stale: bool,
}

/// Settings of a [`KeygateLayer`].
#[derive(Debug, Clone)]
struct Settings {
    scopes: Vec<String>,
    resource: Option<String>,
    max_stale: Duration,
}

struct Shared {
    client: Client,
    settings: Settings,
    /// The last admitted answer per key hash, and when it came.
    last_good: quick_cache::sync::Cache<KeyHash, (Arc<Verified>, Instant)>,
}

/// Checks every request's API key with keygate (remote mode).
#[derive(Clone)]
pub struct KeygateLayer {
    shared: Arc<Shared>,
}

impl KeygateLayer {
    /// Asks keygate through `client`, which needs a key that may use the
    /// verify API: an admin key, or a `keys:manage` key of the workspace
    /// whose keys it checks. Defaults: no scope, the `default` resource,
    /// last good answers kept for 5 minutes, for up to 100,000 keys.
    pub fn remote(client: Client) -> Self {
        Self::build(
            client,
            Settings {
                scopes: Vec::new(),
                resource: None,
                max_stale: Duration::from_secs(300),
            },
            100_000,
        )
    }

    fn build(client: Client, settings: Settings, capacity: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                settings,
                last_good: quick_cache::sync::Cache::new(capacity),
            }),
        }
    }

    fn with(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings.clone();
        change(&mut settings);
        let capacity = self.shared.last_good.capacity() as usize;
        Self::build(self.shared.client.clone(), settings, capacity)
    }

    /// Scopes every request needs (all of them).
    pub fn scopes(self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.with(|s| s.scopes = scopes)
    }

    /// The rate-limit resource requests count against.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        let resource = resource.into();
        self.with(|s| s.resource = Some(resource))
    }

    /// How long a key admitted before keeps working while keygate cannot be reached.
    pub fn max_stale(self, max_stale: Duration) -> Self {
        self.with(|s| s.max_stale = max_stale)
    }
}

impl<S> Layer<S> for KeygateLayer {
    type Service = Keygate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Keygate {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`KeygateLayer`] wraps around yours.
#[derive(Clone)]
pub struct Keygate<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Keygate<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready serves this request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            match shared.decide(request.headers()).await {
                Ok(authenticated) => {
                    request.extensions_mut().insert(authenticated);
                    inner.call(request).await
                }
                Err(refusal) => Ok(refusal.into_response()),
            }
        })
    }
}

/// A response the layer answers with instead of the service's.
struct Refusal {
    status: u16,
    body: serde_json::Value,
    headers: Vec<(String, String)>,
}

impl Refusal {
    /// An error of the catalog's, in its default words: for what the layer
    /// decides itself (no key sent, keygate unreachable).
    fn of(code: ErrorCode) -> Self {
        let status = code.default_status();
        let mut headers = Vec::new();
        if status == 401 {
            headers.push(("www-authenticate".to_owned(), "Bearer realm=\"keygate\"".to_owned()));
        }
        Self {
            status,
            body: json!({"success": false, "status": status, "code": code.as_str(), "message": code.default_message()}),
            headers,
        }
    }

    fn into_response<B: From<String>>(self) -> Response<B> {
        let mut response = Response::new(B::from(self.body.to_string()));
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                headers.append(name, value);
            }
        }
        response
    }
}

impl Shared {
    async fn decide(&self, headers: &HeaderMap) -> Result<Authenticated, Refusal> {
        let api_keys = headers.get_all("x-api-key").iter().map(HeaderValue::as_bytes);
        let authorization = headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(HeaderValue::as_bytes);
        let presented = select_credential(api_keys, authorization).map_err(|e| {
            Refusal::of(match e {
                CredentialError::Missing => ErrorCode::MissingApiKey,
                CredentialError::Ambiguous => ErrorCode::AmbiguousApiKey,
                CredentialError::Invalid => ErrorCode::InvalidApiKey,
            })
        })?;
        let hash = KeyHash::of(presented);
        let mut check = Verify::new(presented);
        check.scopes.clone_from(&self.settings.scopes);
        check.resource.clone_from(&self.settings.resource);
        match self.client.verify(&check).await {
            Ok(verified) => {
                let verified = Arc::new(verified);
                self.last_good.insert(hash, (verified.clone(), Instant::now()));
                Ok(Authenticated { verified, stale: false })
            }
            Err(error) if error.is_unavailable() => self.last_good_answer(&hash),
            Err(Error::Api(refused)) => {
                // Refused now: an earlier answer must not let it in later.
                self.last_good.remove(&hash);
                Err(Refusal {
                    status: refused.status,
                    body: refused.body,
                    headers: refused.headers,
                })
            }
            Err(_) => self.last_good_answer(&hash),
        }
    }

    fn last_good_answer(&self, hash: &KeyHash) -> Result<Authenticated, Refusal> {
        match self.last_good.get(hash) {
            Some((verified, at)) if at.elapsed() <= self.settings.max_stale => {
                Ok(Authenticated { verified, stale: true })
            }
            _ => Err(Refusal::of(ErrorCode::ServiceUnavailable)),
        }
    }
}
