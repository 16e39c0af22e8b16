//! `KeygateLayer` (issue 21): API-key checks in front of a service that
//! does not sit behind the gateway, by asking keygate's verify API for each
//! request, so limits are charged and usage is recorded exactly as at the
//! gateway, and a revocation holds from the next request.
//!
//! The verified key goes into the request's extensions ([`Authenticated`]).
//! A refusal is keygate's own answer, passed on as the gateway would send
//! it: its status, its body (the catalog's error in the deployment's words
//! and `errors.format`) and its `Retry-After` and rate-limit headers.
//! While keygate cannot be reached, a key admitted in the last `max_stale`
//! is admitted again from the last answer (marked `stale`), and any other
//! key gets `503 SERVICE_UNAVAILABLE`: a key nobody can check is never let
//! in. With [`KeygateLayer::cache_for`], admitted answers are reused for a
//! while, and keygate's change feed drops them when a key changes.
//!
//! With the `embedded` feature, [`KeygateLayer::embedded`] decides in this
//! process instead, on an [`EmbeddedNode`]: one more keygate node on the
//! deployment's store and limiter (crates/keygate-server/src/embedded.rs),
//! with no network call per request, and the rate-limit headers on
//! admitted responses too.
//!
//! A key with an IP allowlist needs the end client's address: put a
//! [`ClientIp`] in the request's extensions (e.g. from axum's
//! `ConnectInfo`), else such a key is refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::tower::{Layer, Service};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use keygate_core::credential::{select_credential, CredentialError};
use keygate_core::{ErrorCode, KeyHash};
use serde_json::json;

use crate::follow::{Answers, Fresh};
use crate::{Client, Error, GatewayRefusal, Verified, Verify};

#[cfg(feature = "embedded")]
pub use keygate_server::embedded::EmbeddedNode;

/// The end client's address, for keys with an IP allowlist: insert it into
/// the request's extensions before the layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

/// What a handler finds in the request's extensions once a key was admitted.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub verified: Arc<Verified>,
    /// Admitted from the last good answer while keygate was unreachable.
    pub stale: bool,
    /// Admitted from an answer keygate gave within `cache_for`, without
    /// asking: this request was not charged to limits or usage.
    pub cached: bool,
}

/// Settings of a [`KeygateLayer`].
#[derive(Debug, Clone)]
struct Settings {
    scopes: Vec<String>,
    resource: Option<String>,
    max_stale: Duration,
    cache_for: Option<Duration>,
}

struct Shared {
    checker: Checker,
    settings: Settings,
    /// With `cache_for`: the answers reused and their follower, started by
    /// the first request (it needs the runtime).
    fresh: OnceLock<Arc<Fresh>>,
    /// Whether the log already says that keygate refused the layer's own key.
    warned: AtomicBool,
}

/// Keys whose answers the layer keeps (last good, and fresh with `cache_for`).
const CAPACITY: usize = 100_000;

/// Who decides.
#[derive(Clone)]
enum Checker {
    /// keygate's verify API; the last admitted answer per key hash, and
    /// when it came, for when keygate cannot be reached.
    Remote { client: Client, last_good: Arc<Answers> },
    /// A node in this process.
    #[cfg(feature = "embedded")]
    Embedded(Arc<EmbeddedNode>),
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
        Self::build(Checker::Remote {
            client,
            last_good: Arc::new(Answers::new(CAPACITY)),
        })
    }

    /// Decides in this process, on `node` (see the module's doc). The
    /// `max_stale` setting does not apply: the node has its own
    /// (`store.max_stale`).
    #[cfg(feature = "embedded")]
    pub fn embedded(node: Arc<EmbeddedNode>) -> Self {
        Self::build(Checker::Embedded(node))
    }

    fn build(checker: Checker) -> Self {
        let settings = Settings {
            scopes: Vec::new(),
            resource: None,
            max_stale: Duration::from_secs(300),
            cache_for: None,
        };
        Self::of(checker, settings)
    }

    fn of(checker: Checker, settings: Settings) -> Self {
        Self {
            shared: Arc::new(Shared {
                checker,
                settings,
                fresh: OnceLock::new(),
                warned: AtomicBool::new(false),
            }),
        }
    }

    fn with(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings.clone();
        change(&mut settings);
        Self::of(self.shared.checker.clone(), settings)
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

    /// Remote mode: reuses an admitted answer for up to `ttl` without asking
    /// keygate, while following what keygate drops from its cache
    /// (`GET /v1/keys/changes`), so a key revoked or changed on any node is
    /// asked about again within a second. Requests answered from this cache
    /// are not charged to limits or recorded in usage: for keys whose
    /// limits are loose. Following needs an admin key (the changes of every
    /// workspace go out); with another key, or while keygate does not
    /// answer the follower, every request is asked.
    pub fn cache_for(self, ttl: Duration) -> Self {
        self.with(|s| s.cache_for = Some(ttl).filter(|ttl| !ttl.is_zero()))
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
            let client = request.extensions().get::<ClientIp>().map(|ip| ip.0);
            match shared.decide(request.headers(), client).await {
                Ok(admission) => {
                    request.extensions_mut().insert(admission.authenticated);
                    let mut response = inner.call(request).await?;
                    response.headers_mut().extend(admission.headers);
                    // A concurrency permit ends with the service's answer.
                    drop(admission.permit);
                    Ok(response)
                }
                Err(refusal) => Ok(refusal.into_response()),
            }
        })
    }
}

/// An admitted request: what the handler sees, the headers its response
/// gets, and a concurrency permit held until it has answered.
struct Admission {
    authenticated: Authenticated,
    headers: HeaderMap,
    permit: Option<Box<dyn std::any::Any + Send>>,
}

impl Admission {
    fn of(authenticated: Authenticated) -> Self {
        Self {
            authenticated,
            headers: HeaderMap::new(),
            permit: None,
        }
    }
}

/// A response the layer answers with instead of the service's.
struct Refusal {
    status: StatusCode,
    /// Boxed: a refusal travels in `Err`, which stays small.
    headers: Box<HeaderMap>,
    body: String,
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
        let body =
            json!({"success": false, "status": status, "code": code.as_str(), "message": code.default_message()});
        Self::json(status, &body, headers)
    }

    /// A JSON answer of the layer's own.
    fn json(status: u16, body: &serde_json::Value, passed_on: Vec<(String, String)>) -> Self {
        let mut headers = headers_of(passed_on);
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            headers: Box::new(headers),
            body: body.to_string(),
        }
    }

    /// keygate's refusal, as the gateway would have sent it.
    fn passed_on(refused: GatewayRefusal) -> Self {
        let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        Self::as_sent(status, headers_of(refused.headers), &refused.body)
    }

    /// A refusal made elsewhere (keygate, or an embedded node), unchanged.
    fn as_sent(status: StatusCode, headers: HeaderMap, body: &[u8]) -> Self {
        Self {
            status,
            headers: Box::new(headers),
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }

    fn into_response<B: From<String>>(self) -> Response<B> {
        let mut response = Response::new(B::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = *self.headers;
        response
    }
}

fn headers_of(pairs: Vec<(String, String)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.append(name, value);
        }
    }
    headers
}

impl Shared {
    async fn decide(&self, headers: &HeaderMap, client: Option<std::net::IpAddr>) -> Result<Admission, Refusal> {
        match &self.checker {
            Checker::Remote { client: api, last_good } => {
                let fresh = self.fresh(api, last_good);
                self.ask_keygate(api, last_good, fresh, headers, client)
                    .await
                    .map(Admission::of)
            }
            #[cfg(feature = "embedded")]
            Checker::Embedded(node) => self.ask_node(node, headers, client).await,
        }
    }

    #[cfg(feature = "embedded")]
    async fn ask_node(
        &self,
        node: &EmbeddedNode,
        headers: &HeaderMap,
        client: Option<std::net::IpAddr>,
    ) -> Result<Admission, Refusal> {
        use keygate_server::embedded::Checked;
        let resources = self.settings.resource.as_ref().map(std::slice::from_ref);
        match node.check(headers, client, &self.settings.scopes, resources).await {
            Checked::Admitted(admitted) => {
                // The verify API's answer, read as its client reads it: one shape for both modes.
                let verified = serde_json::to_value(&admitted.result)
                    .and_then(serde_json::from_value::<Verified>)
                    .map_err(|_| Refusal::of(ErrorCode::ServiceUnavailable))?;
                Ok(Admission {
                    authenticated: Authenticated {
                        verified: Arc::new(verified),
                        stale: false,
                        cached: false,
                    },
                    headers: admitted.headers,
                    permit: admitted
                        .permit
                        .map(|permit| Box::new(permit) as Box<dyn std::any::Any + Send>),
                })
            }
            Checked::Refused(refusal) => Err(Refusal::as_sent(refusal.status, refusal.headers, &refusal.body)),
        }
    }

    /// The `cache_for` answers, once there is a runtime to follow changes on.
    fn fresh(&self, api: &Client, last_good: &Arc<Answers>) -> Option<&Fresh> {
        let ttl = self.settings.cache_for?;
        Some(
            self.fresh
                .get_or_init(|| Fresh::start(api.clone(), ttl, CAPACITY, last_good)),
        )
    }

    async fn ask_keygate(
        &self,
        api: &Client,
        last_good: &Answers,
        fresh: Option<&Fresh>,
        headers: &HeaderMap,
        client: Option<std::net::IpAddr>,
    ) -> Result<Authenticated, Refusal> {
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
        if let Some(verified) = fresh.and_then(|fresh| fresh.get(&hash)) {
            return Ok(Authenticated {
                verified,
                stale: false,
                cached: true,
            });
        }
        let generation = fresh.map(Fresh::generation);
        let mut check = Verify::new(presented);
        check.scopes.clone_from(&self.settings.scopes);
        check.resource.clone_from(&self.settings.resource);
        check.ip = client.map(|ip| ip.to_string());
        match api.verify_as_gateway(&check).await {
            Ok(Ok(verified)) => {
                let verified = Arc::new(verified);
                last_good.insert(hash, (verified.clone(), Instant::now()));
                if let (Some(fresh), Some(generation)) = (fresh, generation) {
                    fresh.insert(hash, verified.clone(), generation);
                }
                Ok(Authenticated {
                    verified,
                    stale: false,
                    cached: false,
                })
            }
            Ok(Err(refused)) => {
                // Refused now: an earlier answer must not let it in later.
                last_good.remove(&hash);
                if let Some(fresh) = fresh {
                    fresh.remove(&hash);
                }
                Err(Refusal::passed_on(refused))
            }
            // keygate refused the layer's own key: a misconfiguration, not
            // the caller's fault, so the caller is not told its key is bad.
            Err(Error::Api(own)) if own.status < 500 => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::error!(code = %own.code, status = own.status, "keygate refused the layer's own key; keys are served from last good answers, then refused with 503");
                }
                self.last_good_answer(last_good, &hash)
            }
            // Not reachable, a 5xx, or an answer this client cannot read.
            Err(_) => self.last_good_answer(last_good, &hash),
        }
    }

    fn last_good_answer(&self, last_good: &Answers, hash: &KeyHash) -> Result<Authenticated, Refusal> {
        match last_good.get(hash) {
            Some((verified, at)) if at.elapsed() <= self.settings.max_stale => Ok(Authenticated {
                verified,
                stale: true,
                cached: false,
            }),
            _ => Err(Refusal::of(ErrorCode::ServiceUnavailable)),
        }
    }
}
