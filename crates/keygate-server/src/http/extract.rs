//! Extractors that turn every malformed input into a stable 4xx code:
//! JSON bodies (415, 400, 413, 422 naming the field), queries and paths.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::HeaderMap;
use ipnet::IpNet;
use keygate_core::credential::{select_credential, CredentialError};
use keygate_core::error::ErrorInstance;
use keygate_core::ErrorCode;
use keygate_engine::Engine;
use keygate_store::{Page, MAX_PAGE_SIZE};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::http::dto::PageQuery;
use crate::http::error::ApiError;

/// Largest admin request body: far above any valid request, far below harm.
pub const MAX_ADMIN_BODY: usize = 64 * 1024;
/// Largest key import body: 1,000 rows of at most 4 KiB of metadata each,
/// with room for their other fields (crates/keygate-engine/src/admin/import.rs).
pub const MAX_IMPORT_BODY: usize = 8 * 1024 * 1024;

/// A JSON body. An empty body reads as `{}`, so optional-only bodies may be omitted.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_content = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            });
        let bytes = Bytes::from_request(req, state).await?;
        if bytes.is_empty() {
            return parse(b"{}").map(JsonBody);
        }
        if json_content != Some(true) {
            return Err(ApiError::new(ErrorCode::UnsupportedMediaType));
        }
        parse(&bytes).map(JsonBody)
    }
}

/// Why text with NUL is refused: PostgreSQL cannot store it, and a value one
/// store keeps and another refuses would make the stores disagree.
const NUL_REFUSED: &str = "must not contain the NUL character (U+0000)";

/// A JSON body's value, every malformed input a stable 4xx.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Value::deserialize(&mut deserializer).map_err(|err| invalid_json(&err.to_string()))?;
    deserializer
        .end()
        .map_err(|_| invalid_json("it has trailing characters after the JSON value"))?;
    if let Some(field) = nul_in(&value, "") {
        return Err(ApiError::validation(&field, NUL_REFUSED));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = strip_position(&err.into_inner().to_string());
        ApiError::validation(&field_name(&path, &message), message)
    })
}

fn invalid_json(cause: &str) -> ApiError {
    ApiError(ErrorInstance::new(ErrorCode::InvalidJson).with_message(format!(
        "The request body is not valid JSON: {}.",
        strip_position(cause)
    )))
}

/// The path (`metadata.note`, `scopes[2]`) of the first string or object key
/// in `value` that holds a NUL character, if one does.
fn nul_in(value: &Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::String(text) if text.contains('\0') => Some(if path.is_empty() { "body".into() } else { path.into() }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_in(item, &format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, field)| {
            if key.contains('\0') {
                Some(join(&key.replace('\0', "\\0")))
            } else {
                nul_in(field, &join(key))
            }
        }),
        _ => None,
    }
}

/// The field an error is about: the path, or for unknown and missing fields
/// the name serde puts in backticks.
fn field_name(path: &str, message: &str) -> String {
    let named = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_owned(),
        // Unknown fields are already the last segment of the path.
        (_, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => path.to_owned(),
        (_, Some(name)) => format!("{path}.{name}"),
        (".", None) => "body".to_owned(),
        (_, None) => path.to_owned(),
    }
}

/// serde_json appends " at line 1 column 17"; clients do not need it twice.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// A query string whose errors are `VALIDATION_ERROR`s; a value with NUL
/// is refused as in JSON bodies.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(field) = parts.uri.query().and_then(nul_in_query) {
            return Err(ApiError::validation(&field, NUL_REFUSED));
        }
        let axum::extract::Query(value) = axum::extract::Query::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// The name of the first query parameter whose value (or name) decodes to
/// text with NUL, if one does.
fn nul_in_query(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let has_nul = pair.as_bytes().windows(3).any(|w| w == b"%00");
        has_nul.then(|| pair.split('=').next().unwrap_or_default().replace("%00", "\\0"))
    })
}

/// Items on a page when the call does not say (`limit`).
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// The page a list call asks for (`limit`, 1 to `MAX_PAGE_SIZE`, and
/// `cursor`), checked the same way for every list: a `limit` out of range
/// is a `VALIDATION_ERROR` naming it. The call's own filters come from its
/// own query type, which leaves these two fields to this one.
pub struct Pagination(pub Page);

impl<S: Send + Sync> FromRequestParts<S> for Pagination {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let QueryParams(PageQuery { limit, cursor }) = QueryParams::from_request_parts(parts, state).await?;
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if limit == 0 || limit > MAX_PAGE_SIZE {
            return Err(ApiError::validation(
                "limit",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        Ok(Self(Page { limit, cursor }))
    }
}

/// A path parameter; a malformed one is simply `NOT_FOUND`.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathParam<T>(pub T);

/// The credential of a request, from `X-API-Key` or `Authorization: Bearer`.
pub fn credential(headers: &HeaderMap) -> Result<&str, CredentialError> {
    select_credential(
        headers.get_all("x-api-key").iter().map(|v| v.as_bytes()),
        headers.get_all(AUTHORIZATION).iter().map(|v| v.as_bytes()),
    )
}

/// The error for a credential that could not be selected. An unreadable one
/// (not UTF-8, oversized) counts as a failed attempt, like any invalid key.
pub fn credential_rejection(engine: &Engine, err: CredentialError, client: Option<IpAddr>) -> ErrorInstance {
    match err {
        CredentialError::Missing => ErrorCode::MissingApiKey.into(),
        CredentialError::Ambiguous => ErrorCode::AmbiguousApiKey.into(),
        CredentialError::Invalid => engine.verifier().reject_unreadable(client).error,
    }
}

/// The connection's peer, as the transport recorded it (loopback where none was).
pub fn peer_of(parts: &axum::http::request::Parts) -> SocketAddr {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|axum::extract::ConnectInfo(addr)| *addr)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// A trusted proxy says it terminated TLS (`X-Forwarded-Proto: https`).
pub fn forwarded_https(from_trusted_proxy: bool, headers: &HeaderMap) -> bool {
    from_trusted_proxy
        && headers
            .get("x-forwarded-proto")
            .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// The client address, believing `X-Forwarded-For` only from trusted proxies.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    if trusted_proxies.is_empty() {
        return keygate_core::ip::canonical(peer.ip());
    }
    let mut values = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    match (values.next(), values.next()) {
        (None, _) => keygate_core::ip::client_ip(peer.ip(), None, trusted_proxies),
        (Some(only), None) => keygate_core::ip::client_ip(peer.ip(), Some(only), trusted_proxies),
        // Several headers are one list, in order (RFC 9110 section 5.3).
        (Some(first), Some(second)) => {
            let joined = [first, second].into_iter().chain(values).collect::<Vec<_>>().join(",");
            keygate_core::ip::client_ip(peer.ip(), Some(&joined), trusted_proxies)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_from_serde_messages() {
        assert_eq!(field_name(".", "unknown field `nme`, expected one of `name`"), "nme");
        assert_eq!(field_name(".", "missing field `name`"), "name");
        assert_eq!(
            field_name("colour", "unknown field `colour`, expected `name`"),
            "colour"
        );
        assert_eq!(field_name("limits[0]", "missing field `per`"), "limits[0].per");
        assert_eq!(
            field_name("limits[0].x", "unknown field `x`, expected `per`"),
            "limits[0].x"
        );
        assert_eq!(
            field_name("scopes[0]", "invalid type: integer `1`, expected a string"),
            "scopes[0]"
        );
        assert_eq!(field_name(".", "invalid type: string, expected a map"), "body");
    }
}
