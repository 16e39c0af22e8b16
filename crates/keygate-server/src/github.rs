//! GitHub's secret-scanning partner protocol: GitHub finds a token of this
//! deployment's format in a public place and POSTs it to
//! `/v1/leaks/github` (crates/keygate-server/src/http/admin/leaks.rs).
//!
//! The body is a JSON array of `{token, type, url, source}`, signed with
//! ECDSA P-256 over SHA-256 of the raw body: the base64 DER signature is in
//! `Github-Public-Key-Signature`, the id of the key that made it in
//! `Github-Public-Key-Identifier`. The public keys are the JSON document
//! GitHub publishes, read from `leaks.github_keys_file` (keygate works
//! offline; fetch the document into that file). The answer labels each
//! token `true_positive` or `false_positive`, by its SHA-256, so no token
//! goes back over the wire.

use std::path::Path;

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
    #[error("no key `{0}` in the keys file")]
    UnknownKey(String),
    #[error("key `{0}` in the keys file is not a P-256 public key in PEM")]
    BadKey(String),
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

/// Checks that `body` was signed by the key `key_id` of the keys file.
pub async fn verify(keys_file: &Path, key_id: &str, signature: &str, body: &[u8]) -> Result<(), SignatureError> {
    let unreadable = |cause: String| SignatureError::KeysFile {
        path: keys_file.display().to_string(),
        cause,
    };
    let text = tokio::fs::read_to_string(keys_file)
        .await
        .map_err(|err| unreadable(err.to_string()))?;
    let keys: PublishedKeys = serde_json::from_str(&text).map_err(|err| unreadable(err.to_string()))?;
    let published = keys
        .public_keys
        .iter()
        .find(|key| key.key_identifier == key_id)
        .ok_or_else(|| SignatureError::UnknownKey(key_id.to_owned()))?;
    let key =
        VerifyingKey::from_public_key_pem(&published.key).map_err(|_| SignatureError::BadKey(key_id.to_owned()))?;
    let der = BASE64_STANDARD
        .decode(signature.trim())
        .map_err(|_| SignatureError::Malformed)?;
    let signature = Signature::from_der(&der).map_err(|_| SignatureError::Malformed)?;
    key.verify(body, &signature).map_err(|_| SignatureError::Mismatch)
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
