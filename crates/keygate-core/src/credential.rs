//! Step 1 of the request flow: find the credential in `X-API-Key` or
//! `Authorization: Bearer`. The query string is never read (keys in URLs end up
//! in logs). Works on raw header bytes so that invalid UTF-8 is an answer, not a panic.

use crate::legacy::MAX_LEGACY_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// Nothing usable was sent (empty values and non-Bearer schemes count as nothing).
    Missing,
    /// Two different credentials were sent.
    Ambiguous,
    /// Something was sent that cannot be a key (not UTF-8, oversized).
    Invalid,
}

/// Picks the one credential among all `X-API-Key` values and all
/// `Authorization` values. Identical duplicates are accepted; different ones are ambiguous.
pub fn select_credential<'a>(
    api_key_values: impl IntoIterator<Item = &'a [u8]>,
    authorization_values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<&'a str, CredentialError> {
    let bearer = authorization_values.into_iter().filter_map(bearer_token);
    let mut chosen: Option<&'a [u8]> = None;
    for candidate in api_key_values.into_iter().map(trim).chain(bearer) {
        if candidate.is_empty() {
            continue;
        }
        match chosen {
            Some(existing) if existing != candidate => return Err(CredentialError::Ambiguous),
            _ => chosen = Some(candidate),
        }
    }
    let bytes = chosen.ok_or(CredentialError::Missing)?;
    if bytes.len() > MAX_LEGACY_LEN {
        return Err(CredentialError::Invalid);
    }
    std::str::from_utf8(bytes).map_err(|_| CredentialError::Invalid)
}

/// The token of `Bearer <token>` (scheme case-insensitive), or `None` for other schemes.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = trim(value);
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    match value.get(6) {
        None => Some(&[]),
        Some(b' ' | b'\t') => Some(trim(&value[7..])),
        Some(_) => None,
    }
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select<'a>(api: &[&'a [u8]], auth: &[&'a [u8]]) -> Result<&'a str, CredentialError> {
        select_credential(api.iter().copied(), auth.iter().copied())
    }

    #[test]
    fn finds_the_key_in_either_header() {
        assert_eq!(select(&[b"abc"], &[]), Ok("abc"));
        assert_eq!(select(&[], &[b"Bearer abc"]), Ok("abc"));
        assert_eq!(select(&[], &[b"bearer   abc "]), Ok("abc"));
        assert_eq!(select(&[b"abc"], &[b"Bearer abc"]), Ok("abc"));
        assert_eq!(select(&[b"abc", b"abc"], &[]), Ok("abc"));
    }

    #[test]
    fn missing_ambiguous_and_invalid() {
        assert_eq!(select(&[], &[]), Err(CredentialError::Missing));
        assert_eq!(select(&[b""], &[]), Err(CredentialError::Missing));
        assert_eq!(select(&[b"   "], &[]), Err(CredentialError::Missing));
        assert_eq!(select(&[], &[b"Bearer"]), Err(CredentialError::Missing));
        assert_eq!(select(&[], &[b"Bearer "]), Err(CredentialError::Missing));
        assert_eq!(select(&[], &[b"Basic dXNlcjpwYXNz"]), Err(CredentialError::Missing));
        assert_eq!(select(&[], &[b"Bearerabc"]), Err(CredentialError::Missing));
        assert_eq!(select(&[b"abc"], &[b"Bearer xyz"]), Err(CredentialError::Ambiguous));
        assert_eq!(select(&[b"abc", b"xyz"], &[]), Err(CredentialError::Ambiguous));
        assert_eq!(select(&[b"\xff\xfe"], &[]), Err(CredentialError::Invalid));
        let huge = vec![b'a'; 8192];
        assert_eq!(select(&[&huge], &[]), Err(CredentialError::Invalid));
    }
}
