//! Roles: named bundles of scopes from the config (`[roles] reader =
//! ["invoices:read", "contacts:read"]`). A key holds role names; what a role
//! grants is read from the config at each check, so changing a role changes
//! every key that holds it from the next request on.

use std::collections::BTreeMap;

use crate::scope::{grants_explicitly, validate_scopes, ScopeError};

/// Longest accepted role name.
pub const MAX_ROLE_NAME_LEN: usize = 64;
/// Most roles one key may hold.
pub const MAX_KEY_ROLES: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoleError {
    #[error("role name `{0}` must be 1 to 64 characters of letters, digits and `_.-`")]
    InvalidName(String),
    #[error("role `{role}`: {source}")]
    Scope {
        role: String,
        #[source]
        source: ScopeError,
    },
    #[error("unknown role `{name}`; configured roles: [{known}]")]
    Unknown { name: String, known: String },
    #[error("at most 16 roles are allowed")]
    TooMany,
}

fn is_valid_name(name: &str) -> bool {
    (1..=MAX_ROLE_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The roles of the config, validated. A config reload replaces them whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles(BTreeMap<String, Vec<String>>);

impl Roles {
    /// No roles: what the checks of a key that holds none read, without
    /// loading the config's (crates/keygate-engine/src/verifier/mod.rs).
    pub const NONE: Roles = Roles(BTreeMap::new());

    /// Checks every name and scope; a role may grant no scope at all (it then
    /// grants nothing, see [`Grants`]).
    pub fn new(roles: BTreeMap<String, Vec<String>>) -> Result<Self, RoleError> {
        roles
            .into_iter()
            .map(|(name, scopes)| {
                if !is_valid_name(&name) {
                    return Err(RoleError::InvalidName(name));
                }
                match validate_scopes(&scopes) {
                    Ok(scopes) => Ok((name, scopes)),
                    Err(source) => Err(RoleError::Scope { role: name, source }),
                }
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The scopes `role` grants; `None` for a role the config no longer has.
    pub fn scopes_of(&self, role: &str) -> Option<&[String]> {
        self.0.get(role).map(Vec::as_slice)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Role names as a key may be given them: each configured, at most
    /// [`MAX_KEY_ROLES`], deduplicated in the given order.
    pub fn validate_key_roles(&self, names: &[String]) -> Result<Vec<String>, RoleError> {
        if names.len() > MAX_KEY_ROLES {
            return Err(RoleError::TooMany);
        }
        let mut out: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            if !self.0.contains_key(name) {
                let known = self.names().collect::<Vec<_>>().join(", ");
                return Err(RoleError::Unknown {
                    name: name.clone(),
                    known,
                });
            }
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
        Ok(out)
    }
}

/// What one key is granted: its own scopes and those of its roles, as the
/// config says now.
///
/// A key with neither scopes nor roles has full access to its workspace
/// (except admin scopes, crates/keygate-core/src/scope.rs). A key with roles
/// is always a scoped key: if its roles grant nothing (emptied, or removed
/// from the config since), it is granted nothing rather than everything.
#[derive(Debug, Clone, Copy)]
pub struct Grants<'a> {
    scopes: &'a [String],
    roles: &'a [String],
    book: &'a Roles,
}

impl<'a> Grants<'a> {
    pub fn new(scopes: &'a [String], roles: &'a [String], book: &'a Roles) -> Self {
        Self { scopes, roles, book }
    }

    /// `required` on the data plane: an unscoped key without roles has it.
    pub fn grants(&self, required: &str) -> bool {
        (self.scopes.is_empty() && self.roles.is_empty()) || self.grants_explicitly(required)
    }

    /// `required` named by a scope of the key or of one of its roles (admin scopes).
    pub fn grants_explicitly(&self, required: &str) -> bool {
        grants_explicitly(self.scopes, required)
            || self
                .roles
                .iter()
                .filter_map(|role| self.book.scopes_of(role))
                .any(|scopes| grants_explicitly(scopes, required))
    }

    /// The first of `required` not granted, for the error message.
    pub fn first_missing<'r>(&self, required: &'r [String]) -> Option<&'r str> {
        required.iter().map(String::as_str).find(|r| !self.grants(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn book(entries: &[(&str, &[&str])]) -> Roles {
        Roles::new(
            entries
                .iter()
                .map(|(name, scopes)| (name.to_string(), s(scopes)))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_key_sees_the_union_of_its_scopes_and_its_roles() {
        let roles = book(&[("reader", &["invoices:read", "contacts:read"])]);
        let scopes = s(&["invoices:write"]);
        let held = s(&["reader"]);
        let grants = Grants::new(&scopes, &held, &roles);
        assert!(grants.grants("invoices:read"));
        assert!(grants.grants("contacts:read"));
        assert!(grants.grants("invoices:write"));
        assert!(!grants.grants("contacts:write"));
        assert_eq!(
            grants.first_missing(&s(&["invoices:read", "contacts:write"])),
            Some("contacts:write")
        );
    }

    #[test]
    fn a_key_with_roles_that_grant_nothing_is_granted_nothing() {
        let emptied = book(&[("reader", &[])]);
        let held = s(&["reader"]);
        assert!(!Grants::new(&[], &held, &emptied).grants("invoices:read"));
        // A role removed from the config since the key got it.
        assert!(!Grants::new(&[], &held, &Roles::default()).grants("invoices:read"));
        // Without roles, an unscoped key keeps its full access.
        assert!(Grants::new(&[], &[], &emptied).grants("invoices:read"));
    }

    #[test]
    fn admin_scopes_come_from_roles_only_when_named() {
        let roles = book(&[
            ("ops", &["keys:manage"]),
            ("all", &["*"]),
            ("reader", &["invoices:read"]),
        ]);
        let ops = s(&["ops"]);
        let reader = s(&["reader"]);
        assert!(Grants::new(&[], &ops, &roles).grants_explicitly("keys:manage"));
        assert!(!Grants::new(&[], &reader, &roles).grants_explicitly("keys:manage"));
        assert!(!Grants::new(&[], &[], &roles).grants_explicitly("keys:manage"));
        assert!(Grants::new(&[], &s(&["all"]), &roles).grants_explicitly("keys:manage"));
    }

    #[test]
    fn names_and_scopes_are_validated() {
        let bad_name = BTreeMap::from([("has space".to_string(), vec![])]);
        assert_eq!(Roles::new(bad_name), Err(RoleError::InvalidName("has space".into())));
        let bad_scope = BTreeMap::from([("reader".to_string(), s(&["a::b"]))]);
        assert!(matches!(Roles::new(bad_scope), Err(RoleError::Scope { role, .. }) if role == "reader"));
        assert!(Roles::new(BTreeMap::from([("x".repeat(65), vec![])])).is_err());
    }

    #[test]
    fn a_key_may_hold_configured_roles_only() {
        let roles = book(&[("reader", &["invoices:read"]), ("writer", &["invoices:write"])]);
        assert_eq!(
            roles.validate_key_roles(&s(&["writer", "reader", "writer"])),
            Ok(s(&["writer", "reader"]))
        );
        assert_eq!(
            roles.validate_key_roles(&s(&["admin"])).unwrap_err().to_string(),
            "unknown role `admin`; configured roles: [reader, writer]"
        );
        assert_eq!(
            roles.validate_key_roles(&vec!["reader".to_string(); 17]),
            Err(RoleError::TooMany)
        );
    }
}
