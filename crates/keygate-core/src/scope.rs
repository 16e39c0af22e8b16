//! Scopes: `invoices:write`; `invoices:*` grants every `invoices:` scope; `*`
//! grants everything. A key with no scopes (and no roles,
//! crates/keygate-core/src/role.rs) has full access to its workspace (the
//! echowin model), except for admin scopes, which must be granted explicitly
//! (see [`grants_explicitly`]).

/// Longest accepted scope string.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most scopes one key may carry.
pub const MAX_SCOPES: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error(
        "scope `{0}` must be 1 to 128 characters of letters, digits and `:_.-`, with `*` only as a whole last segment"
    )]
    Invalid(String),
    #[error("at most 64 scopes are allowed")]
    TooMany,
}

/// Validates scopes and returns them deduplicated, in the given order.
pub fn validate_scopes(scopes: &[String]) -> Result<Vec<String>, ScopeError> {
    if scopes.len() > MAX_SCOPES {
        return Err(ScopeError::TooMany);
    }
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if !is_valid_scope(scope) {
            return Err(ScopeError::Invalid(scope.clone()));
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    Ok(out)
}

fn is_valid_scope(scope: &str) -> bool {
    if scope == "*" {
        return true;
    }
    if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
        return false;
    }
    let segments: Vec<&str> = scope.split(':').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, seg)| {
        (*seg == "*" && i == last && i > 0)
            || (!seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    })
}

/// Does one of `granted` match `required`? An empty list grants nothing:
/// "no scopes means full access" is the key's rule, with its roles
/// (`Grants`, crates/keygate-core/src/role.rs), and never holds for admin
/// scopes such as `keys:manage`.
pub fn grants_explicitly(granted: &[String], required: &str) -> bool {
    granted.iter().any(|g| scope_matches(g, required))
}

fn scope_matches(granted: &str, required: &str) -> bool {
    if granted == "*" || granted == required {
        return true;
    }
    match granted.strip_suffix('*') {
        Some(stem) if stem.ends_with(':') => required.starts_with(stem),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn wildcards_and_empty_lists() {
        assert!(!grants_explicitly(&[], "keys:manage"));
        assert!(grants_explicitly(&s(&["*"]), "anything:at:all"));
        assert!(grants_explicitly(&s(&["invoices:*"]), "invoices:write"));
        assert!(grants_explicitly(&s(&["invoices:*"]), "invoices:line:read"));
        assert!(!grants_explicitly(&s(&["invoices:*"]), "invoicesx:write"));
        assert!(!grants_explicitly(&s(&["invoices:*"]), "invoices"));
        assert!(!grants_explicitly(&s(&["invoices:read"]), "invoices:write"));
        assert!(grants_explicitly(
            &s(&["invoices:read", "invoices:write"]),
            "invoices:write"
        ));
    }

    #[test]
    fn validation() {
        assert_eq!(
            validate_scopes(&s(&["a:b", "a:*", "*", "a:b"])).unwrap(),
            s(&["a:b", "a:*", "*"])
        );
        for bad in ["", "a b", "a:*:b", "*:a", "a::b", "<script>", &"a".repeat(129)] {
            assert!(validate_scopes(&s(&[bad])).is_err(), "{bad}");
        }
        assert_eq!(validate_scopes(&vec!["a".to_string(); 65]), Err(ScopeError::TooMany));
    }
}
