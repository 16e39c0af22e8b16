//! A typed async client for keygate's admin API and verify API (issue 21),
//! and, with the `tower` feature (on by default), [`tower::KeygateLayer`]:
//! API-key checks for an axum, hyper or tonic service that does not sit
//! behind the gateway.
//!
//! ```no_run
//! # async fn run() -> Result<(), keygate_client::Error> {
//! use keygate_client::{Client, NewKey, NewWorkspace, Verify};
//! let client = Client::new("http://127.0.0.1:8081", "kg_admin_...");
//! let workspace = client.create_workspace(&NewWorkspace { name: "Acme".into(), ..Default::default() }).await?;
//! let created = client.create_key(&workspace.id, &NewKey { name: "Production Server".into(), ..Default::default() }).await?;
//! let verified = client.verify(&Verify::new("kg_live_...")).await?;
//! # Ok(()) }
//! ```

mod error;
#[cfg(feature = "tower")]
mod follow;
mod models;
#[cfg(feature = "tower")]
pub mod tower;

pub use error::{ApiError, Error, GatewayRefusal};
pub use keygate_core::ErrorCode;
pub use models::*;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// Every call this client makes, as the OpenAPI document names it; the
/// tests check each against the document a node serves.
pub const OPERATIONS: [(&str, &str); 10] = [
    ("post", "/v1/workspaces"),
    ("get", "/v1/workspaces/{id}"),
    ("post", "/v1/workspaces/{id}/keys"),
    ("get", "/v1/workspaces/{id}/keys"),
    ("get", "/v1/keys/{id}"),
    ("post", "/v1/keys/{id}/rotate"),
    ("post", "/v1/keys/{id}/revoke"),
    ("get", "/v1/keys/{id}/usage"),
    ("post", "/v1/keys/verify"),
    ("get", "/v1/keys/changes"),
];

/// keygate's admin API, called with one key (an admin key, or a workspace
/// key with `keys:manage` for its own workspace).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: SecretString,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `base_url` is the control plane (`http://127.0.0.1:8081`).
    pub fn new(base_url: impl Into<String>, key: impl Into<String>) -> Self {
        Self::with_http(reqwest::Client::new(), base_url, key)
    }

    /// The same with a `reqwest::Client` of your own (timeouts, TLS, proxies).
    pub fn with_http(http: reqwest::Client, base_url: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            http,
            base: base_url.into().trim_end_matches('/').to_owned(),
            key: SecretString::from(key.into()),
        }
    }

    pub async fn create_workspace(&self, new: &NewWorkspace) -> Result<Workspace, Error> {
        self.call(Method::POST, "/v1/workspaces", &[], Some(new)).await
    }

    pub async fn get_workspace(&self, id: &str) -> Result<Workspace, Error> {
        self.call(Method::GET, &format!("/v1/workspaces/{id}"), &[], None::<&()>)
            .await
    }

    /// Creates a key; the answer is the only place its plaintext appears.
    pub async fn create_key(&self, workspace_id: &str, new: &NewKey) -> Result<CreatedKey, Error> {
        let path = format!("/v1/workspaces/{workspace_id}/keys");
        self.call(Method::POST, &path, &[], Some(new)).await
    }

    /// One page of a workspace's keys, newest first.
    pub async fn list_keys(&self, workspace_id: &str, cursor: Option<&str>) -> Result<List<Key>, Error> {
        let path = format!("/v1/workspaces/{workspace_id}/keys");
        let query: Vec<(&str, &str)> = cursor.map(|c| ("cursor", c)).into_iter().collect();
        self.call(Method::GET, &path, &query, None::<&()>).await
    }

    pub async fn get_key(&self, id: &str) -> Result<Key, Error> {
        self.call(Method::GET, &format!("/v1/keys/{id}"), &[], None::<&()>)
            .await
    }

    /// Issues a successor; the old key works for `grace` (`1h`; default 24 h).
    pub async fn rotate_key(&self, id: &str, grace: Option<&str>) -> Result<CreatedKey, Error> {
        let body = grace
            .map(|grace| json!({ "grace": grace }))
            .unwrap_or_else(|| json!({}));
        self.call(Method::POST, &format!("/v1/keys/{id}/rotate"), &[], Some(&body))
            .await
    }

    /// Idempotent: a revoked key is answered as it is.
    pub async fn revoke_key(&self, id: &str, reason: Option<&str>) -> Result<Key, Error> {
        let body = reason
            .map(|reason| json!({ "reason": reason }))
            .unwrap_or_else(|| json!({}));
        self.call(Method::POST, &format!("/v1/keys/{id}/revoke"), &[], Some(&body))
            .await
    }

    /// Requests per bucket by outcome (`granularity`: `minute`, `hour`, `day`).
    pub async fn key_usage(&self, id: &str, granularity: &str) -> Result<Value, Error> {
        let query = [("granularity", granularity)];
        self.call(Method::GET, &format!("/v1/keys/{id}/usage"), &query, None::<&()>)
            .await
    }

    /// The gateway's decision for a key: `Ok` when admitted, else the
    /// refusal with its code (`Error::Api`), status and headers.
    pub async fn verify(&self, request: &Verify) -> Result<Verified, Error> {
        self.call(Method::POST, "/v1/keys/verify", &[], Some(request)).await
    }

    /// The same decision, a refusal as the gateway would send it (in the
    /// deployment's error format), to be passed on unread: `Ok(Err(..))`.
    /// `Err` when keygate did not answer (or answered 5xx).
    pub async fn verify_as_gateway(&self, request: &Verify) -> Result<Result<Verified, GatewayRefusal>, Error> {
        let mut request = request.clone();
        request.gateway_errors = true;
        let answer = self.send(Method::POST, "/v1/keys/verify", &[], Some(&request)).await?;
        let verdict = answer.head.get("keygate-verdict").and_then(|v| v.to_str().ok());
        match (answer.status, verdict) {
            (200..=299, _) => answer.read().map(Ok).ok_or(Error::Unreadable { status: answer.status }),
            // The checked key refused, not this client's own key.
            (status @ 400..=499, Some("refused")) => Ok(Err(GatewayRefusal {
                status,
                headers: answer.headers(|name| name == "content-type" || error::is_passed_on(name)),
                body: answer.bytes.to_vec(),
            })),
            _ => Err(answer.error()),
        }
    }

    /// The keys keygate's node dropped from its cache after `after` (a
    /// previous answer's `cursor`; `None` to start), waiting up to `wait`
    /// (`10s` at most) for one. Needs an admin key.
    pub async fn key_changes(&self, after: Option<&str>, wait: &str) -> Result<KeyChanges, Error> {
        let mut query = vec![("wait", wait)];
        if let Some(after) = after {
            query.push(("after", after));
        }
        self.call(Method::GET, "/v1/keys/changes", &query, None::<&()>).await
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<T, Error> {
        let answer = self.send(method, path, query, body).await?;
        if (200..300).contains(&answer.status) {
            return answer.read().ok_or(Error::Unreadable { status: answer.status });
        }
        Err(answer.error())
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<Answer, Error> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", self.key.expose_secret())
            .query(query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(Error::Unreachable)?;
        let status = response.status().as_u16();
        let head = response.headers().clone();
        let bytes = response.bytes().await.map_err(Error::Unreachable)?;
        Ok(Answer { status, head, bytes })
    }
}

/// keygate's answer, read whole.
struct Answer {
    status: u16,
    head: reqwest::header::HeaderMap,
    bytes: bytes::Bytes,
}

impl Answer {
    /// The body as `T`; `None` if it is not one.
    fn read<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.bytes).ok()
    }

    /// keygate's refusal in its envelope, with its code; or a body this client cannot read.
    fn error(&self) -> Error {
        let status = self.status;
        let Ok(body) = serde_json::from_slice::<Value>(&self.bytes) else {
            return Error::Unreadable { status };
        };
        let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
        match (text("code"), text("message")) {
            (Some(code), Some(message)) => Error::Api(ApiError {
                status,
                code,
                message,
                headers: self.headers(error::is_passed_on),
                body,
            }),
            _ => Error::Unreadable { status },
        }
    }

    /// The headers whose (lowercase) names `keep` keeps, as text.
    fn headers(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        self.head
            .iter()
            .filter(|(name, _)| keep(name.as_str()))
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect()
    }
}
