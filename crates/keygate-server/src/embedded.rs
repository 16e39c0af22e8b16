//! A keygate node without its HTTP planes (issue 21), for a service that
//! checks keys in its own process: keygate-client's embedded
//! `KeygateLayer` runs one on the deployment's store and limiter. It is one
//! more node: it hears revocations through the change feed, heartbeats (so
//! `GET /v1/nodes` lists it and revocation receipts wait for it), records
//! usage and charges limits as the gateway does, and refuses in the
//! deployment's error format with the rate-limit headers.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use keygate_core::error::ErrorInstance;
use keygate_engine::{default_resources, Clock, Engine, SystemClock, VerifyRequest};
use keygate_limiter::Permit;
use keygate_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{run_node_work, start_engine, ServeError, StopOnDrop};
use crate::config::{ConfigError, Loaded};
use crate::http::dto::VerifyResult;
use crate::http::error::render;
use crate::http::extract::{credential, credential_rejection};
use crate::http::ratelimit::add_headers;
use crate::reload::LiveConfig;
use crate::ConfigSource;

/// Why an embedded node did not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store at {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: keygate_store::OpenError,
    },
    #[error(transparent)]
    Start(#[from] ServeError),
}

/// A running embedded node. [`EmbeddedNode::shutdown`] flushes its usage
/// (it takes `&self`: the layer holds the node too); dropping it stops its
/// work without waiting.
pub struct EmbeddedNode {
    engine: Arc<Engine>,
    config: LiveConfig,
    stop: StopOnDrop,
    tasks: TaskTracker,
}

/// What a request came to.
pub enum Checked {
    /// Boxed: the verify answer is large, a refusal small.
    Admitted(Box<Admitted>),
    /// The answer to send instead of the service's.
    Refused(Refusal),
}

/// An admitted request.
pub struct Admitted {
    /// What the verify API answers for it: the key, its workspace, its limits.
    pub result: VerifyResult,
    /// Rate-limit headers for the service's response, as the gateway adds them.
    pub headers: HeaderMap,
    /// A concurrency permit, if the key's plan limits concurrency: hold it
    /// until the service has answered.
    pub permit: Option<Permit>,
}

/// A refusal in the deployment's error format, with its headers.
pub struct Refusal {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl EmbeddedNode {
    /// Reads the config as `keygate serve` does (`explicit`, else
    /// `./keygate.toml`, with `KEYGATE_*` overrides), opens its store and starts.
    pub async fn from_config(explicit: Option<&Path>) -> Result<Self, EmbeddedError> {
        let file = crate::config::resolve_file(explicit)?;
        let loaded = ConfigSource::file(file).load()?;
        let url = loaded.settings.store_url.clone();
        let store = keygate_store::open(&url)
            .await
            .map_err(|source| EmbeddedError::Store { url, source })?;
        Ok(Self::start(&loaded, store, Arc::new(SystemClock))?)
    }

    /// Starts on `store` with `loaded`'s settings, on the current tokio
    /// runtime; its HTTP settings (addresses, routes, TLS) are not used.
    pub fn start(loaded: &Loaded, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Self, ServeError> {
        let settings = &loaded.settings;
        let engine = start_engine(settings, store, clock)?;
        // Cancelled if the start fails half-way: what it started stops with it.
        let stop = StopOnDrop(CancellationToken::new());
        let tasks = TaskTracker::new();
        let addresses = keygate_engine::nodes::NodeAddresses {
            gateway: "embedded".to_owned(),
            admin: String::new(),
        };
        let background = run_node_work(&engine, settings, addresses, &stop.0, &tasks)?;
        tasks.spawn(background);
        tasks.close();
        Ok(Self {
            engine,
            config: LiveConfig::new(settings),
            stop,
            tasks,
        })
    }

    /// The node's engine, for what the layer does not cover.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Decides a request by its headers, as the gateway does on a route
    /// with these scopes and resources (`None`: the `default` resource).
    pub async fn check(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        scopes: &[String],
        resources: Option<&[String]>,
    ) -> Checked {
        let live = self.config.snapshot();
        let presented = match credential(headers) {
            Ok(presented) => presented,
            Err(err) => {
                let error = credential_rejection(&self.engine, err, client);
                return Checked::Refused(refusal(&live, &error, None).await);
            }
        };
        let request = VerifyRequest {
            required_scopes: scopes,
            resources: resources.unwrap_or(default_resources()),
            ..VerifyRequest::new(presented, client)
        };
        match self.engine.verifier().verify(request).await {
            Ok(verified) => {
                let mut headers = HeaderMap::new();
                if let Some(limits) = &verified.limits {
                    add_headers(&mut headers, limits, &live.headers);
                }
                Checked::Admitted(Box::new(Admitted {
                    result: VerifyResult::of(&verified),
                    headers,
                    permit: verified.permit,
                }))
            }
            Err(rejection) => Checked::Refused(refusal(&live, &rejection.error, rejection.limits.as_ref()).await),
        }
    }

    /// Stops hearing changes and heartbeating (the node leaves the list),
    /// and flushes usage. Requests checked after it still decide, from the
    /// cache and the store, but nothing tells this node of changes anymore.
    pub async fn shutdown(&self) {
        self.stop.0.cancel();
        self.tasks.wait().await;
    }
}

/// The data plane's response for `error`, read into its parts.
async fn refusal(
    live: &crate::reload::Live,
    error: &ErrorInstance,
    limits: Option<&keygate_engine::RateLimits>,
) -> Refusal {
    let mut response = render(&live.catalog, error);
    if let Some(limits) = limits {
        add_headers(response.headers_mut(), limits, &live.headers);
    }
    let (parts, body) = response.into_parts();
    // A rendered error is one buffer in memory: collecting it cannot fail.
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    Refusal {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
