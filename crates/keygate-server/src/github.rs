//! GitHub's secret-scanning partner protocol: GitHub finds a token of this
//! deployment's format in a public place and POSTs it to
//! `/v1/leaks/github` (crates/keygate-server/src/http/admin/leaks.rs).
//!
//! The body is a JSON array of `{token, type, url, source}`, signed with
//! ECDSA P-256 over SHA-256 of the raw body: the base64 DER signature is in
//! `Github-Public-Key-Signature`, the id of the key that made it in
//! `Github-Public-Key-Identifier`. The public keys are the JSON document
//! GitHub publishes, read from `leaks.github_keys_file` at each report (an
//! offline deployment saves the document there), or fetched from
//! `leaks.github_keys_url` and kept for `leaks.github_keys_refresh`
//! ([`GithubKeys`]). The answer labels each
//! token `true_positive` or `false_positive`, by its SHA-256, so no token
//! goes back over the wire.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::prelude::{Engine as _, BASE64_STANDARD};
use keygate_core::key::KeyHash;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Tokens one report may carry: GitHub sends far fewer at a time.
pub const MAX_TOKENS: usize = 1000;

/// Why a report's signature was not accepted; each is a 401 to GitHub, and
/// the cause goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the request has no {0} header")]
    Missing(&'static str),
    #[error("the keys file {path} cannot be read: {cause}")]
    KeysFile { path: String, cause: String },
    #[error("no key `{0}` in GitHub's keys")]
    UnknownKey(String),
    #[error("key `{0}` in GitHub's keys is not a P-256 public key in PEM")]
    BadKey(String),
    /// Not the signature's fault: GitHub's keys could not be had (a 503,
    /// so that GitHub sends the report again later).
    #[error("GitHub's keys could not be fetched: {0}")]
    KeysUnavailable(String),
    #[error("the signature is not base64 DER")]
    Malformed,
    #[error("the signature does not verify")]
    Mismatch,
}

/// The document GitHub publishes at `/meta/public_keys/secret_scanning`.
#[derive(Deserialize)]
struct PublishedKeys {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

impl PublishedKeys {
    fn find(&self, key_id: &str) -> Option<&PublishedKey> {
        self.public_keys.iter().find(|key| key.key_identifier == key_id)
    }
}

/// How long a fetch of GitHub's keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest time between two fetches, whatever reports arrive: a key id
/// nobody knows (a forged report) must not make keygate hammer GitHub.
const MIN_REFETCH: Duration = Duration::from_secs(60);

/// Where GitHub's public keys come from: a file read at each report, a URL
/// whose document is kept for `refresh`, or both (the file first). A key id
/// the kept document does not know is fetched again (GitHub rotates its
/// keys), at most once a minute or once per `refresh` if shorter.
pub struct GithubKeys {
    file: Option<PathBuf>,
    url: Option<reqwest::Url>,
    refresh: Duration,
    client: reqwest::Client,
    fetched: tokio::sync::Mutex<Fetched>,
}

/// The document last fetched, and when fetching was last tried.
#[derive(Default)]
struct Fetched {
    document: Option<(Arc<PublishedKeys>, Instant)>,
    tried_at: Option<Instant>,
}

impl GithubKeys {
    /// `None` when neither a file nor a URL is configured: the partner
    /// endpoint is off.
    pub fn new(file: Option<PathBuf>, url: Option<reqwest::Url>, refresh: Duration) -> Option<Self> {
        if file.is_none() && url.is_none() {
            return None;
        }
        Some(Self {
            file,
            url,
            refresh,
            client: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            fetched: tokio::sync::Mutex::new(Fetched::default()),
        })
    }

    /// Checks that `body` was signed by GitHub's key `key_id`.
    pub async fn verify(&self, key_id: &str, signature: &str, body: &[u8]) -> Result<(), SignatureError> {
        let key = self.key(key_id).await?;
        let der = BASE64_STANDARD
            .decode(signature.trim())
            .map_err(|_| SignatureError::Malformed)?;
        let signature = Signature::from_der(&der).map_err(|_| SignatureError::Malformed)?;
        key.verify(body, &signature).map_err(|_| SignatureError::Mismatch)
    }

    async fn key(&self, key_id: &str) -> Result<VerifyingKey, SignatureError> {
        let parse = |published: &PublishedKey| {
            VerifyingKey::from_public_key_pem(&published.key).map_err(|_| SignatureError::BadKey(key_id.to_owned()))
        };
        if let Some(file) = &self.file {
            let document = read_file(file).await?;
            if let Some(published) = document.find(key_id) {
                return parse(published);
            }
        }
        if self.url.is_none() {
            return Err(SignatureError::UnknownKey(key_id.to_owned()));
        }
        let document = self.fetched_document(key_id).await?;
        document
            .find(key_id)
            .map_or_else(|| Err(SignatureError::UnknownKey(key_id.to_owned())), parse)
    }

    /// The kept document if it is fresh and knows `key_id`; else a new one,
    /// unless fetching was tried too recently; else the kept one, however old.
    async fn fetched_document(&self, key_id: &str) -> Result<Arc<PublishedKeys>, SignatureError> {
        let mut fetched = self.fetched.lock().await;
        let now = Instant::now();
        if let Some((document, at)) = &fetched.document {
            if now.duration_since(*at) < self.refresh && document.find(key_id).is_some() {
                return Ok(document.clone());
            }
        }
        let pause = MIN_REFETCH.min(self.refresh);
        let mut failure = None;
        if fetched.tried_at.is_none_or(|at| now.duration_since(at) >= pause) {
            fetched.tried_at = Some(now);
            match self.fetch().await {
                Ok(document) => fetched.document = Some((Arc::new(document), now)),
                Err(cause) => {
                    tracing::warn!(%cause, "GitHub's secret-scanning keys could not be fetched");
                    failure = Some(cause);
                }
            }
        }
        match &fetched.document {
            Some((document, _)) => Ok(document.clone()),
            None => Err(SignatureError::KeysUnavailable(
                failure.unwrap_or_else(|| "fetched too recently to try again".into()),
            )),
        }
    }

    async fn fetch(&self) -> Result<PublishedKeys, String> {
        let url = self.url.clone().ok_or("no leaks.github_keys_url")?;
        let response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::USER_AGENT, "keygate")
            .send()
            .await
            .map_err(|err| err.to_string())?
            .error_for_status()
            .map_err(|err| err.to_string())?;
        response.json().await.map_err(|err| err.to_string())
    }
}

async fn read_file(path: &std::path::Path) -> Result<PublishedKeys, SignatureError> {
    let unreadable = |cause: String| SignatureError::KeysFile {
        path: path.display().to_string(),
        cause,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|err| unreadable(err.to_string()))?;
    serde_json::from_str(&text).map_err(|err| unreadable(err.to_string()))
}

/// One match GitHub reports.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ReportedToken {
    /// The token as found; never logged or stored.
    #[schema(value_type = String)]
    pub token: SecretString,
    /// The pattern's name as registered with GitHub.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where it was found.
    pub url: Option<String>,
    /// What GitHub scanned: `content`, `commit`, `pull_request_description`, ...
    pub source: Option<String>,
}

/// GitHub's feedback for one token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Feedback {
    /// SHA-256 of the token, hex: the token itself is not sent back.
    pub token_hash: String,
    pub token_type: String,
    /// `true_positive`: a key of this deployment (live or not); else `false_positive`.
    pub label: &'static str,
}

impl Feedback {
    pub fn new(token: &str, kind: &str, ours: bool) -> Self {
        Self {
            // The SHA-256 keygate already names keys by.
            token_hash: KeyHash::of(token).to_hex(),
            token_type: kind.to_owned(),
            label: if ours { "true_positive" } else { "false_positive" },
        }
    }
}
