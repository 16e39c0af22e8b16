//! The checks of a request against a known key: steps 4 to 6 of the request flow.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::ErrorCode;
use crate::ip::IpAllowlist;
use crate::model::{ApiKey, Workspace};
use crate::role::{Grants, Roles};

/// Why a known key may not make this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    Revoked,
    Expired,
    WorkspaceDisabled,
    IpNotAllowed,
    InsufficientScope(String),
}

impl Denial {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Revoked => ErrorCode::ApiKeyRevoked,
            Self::Expired => ErrorCode::ApiKeyExpired,
            Self::WorkspaceDisabled => ErrorCode::WorkspaceDisabled,
            Self::IpNotAllowed => ErrorCode::IpNotAllowed,
            Self::InsufficientScope(_) => ErrorCode::InsufficientScope,
        }
    }

    /// The scope to name in the message, for `INSUFFICIENT_SCOPE`.
    pub fn missing_scope(&self) -> Option<&str> {
        match self {
            Self::InsufficientScope(scope) => Some(scope),
            _ => None,
        }
    }
}

/// What the checks read of a key. A cached key keeps this instead of its
/// whole row (crates/keygate-engine/src/verifier/cached_key.rs), so a
/// request reads a few cache lines, not the row's twenty fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAccess {
    /// Revoked or deleted: either way it answers `API_KEY_REVOKED`.
    revoked: bool,
    expires_at: Option<DateTime<Utc>>,
    lists: Arc<AccessLists>,
}

/// A key's allowlist, scopes and roles. Many keys have the same ones, so a
/// node's key cache keeps one copy of each distinct set
/// (crates/keygate-engine/src/verifier/shares.rs; memory per cached key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AccessLists {
    ip_allowlist: IpAllowlist,
    scopes: Box<[String]>,
    /// Role names; what they grant is the config's (crates/keygate-core/src/role.rs).
    roles: Box<[String]>,
}

impl AccessLists {
    /// Takes the lists of a row, without copying them.
    pub fn new(ip_allowlist: IpAllowlist, scopes: Vec<String>, roles: Vec<String>) -> Self {
        Self {
            ip_allowlist,
            scopes: scopes.into_boxed_slice(),
            roles: roles.into_boxed_slice(),
        }
    }
}

impl KeyAccess {
    pub fn new(revoked: bool, expires_at: Option<DateTime<Utc>>, lists: Arc<AccessLists>) -> Self {
        Self {
            revoked,
            expires_at,
            lists,
        }
    }

    /// A copy of what `key` says.
    pub fn of(key: &ApiKey) -> Self {
        let lists = AccessLists::new(key.ip_allowlist.clone(), key.scopes.clone(), key.roles.clone());
        Self::new(
            key.revoked_at.is_some() || key.deleted_at.is_some(),
            key.expires_at,
            Arc::new(lists),
        )
    }

    pub fn scopes(&self) -> &[String] {
        &self.lists.scopes
    }

    pub fn roles(&self) -> &[String] {
        &self.lists.roles
    }

    /// What the key is granted under `roles`, the config's roles now.
    pub fn grants<'a>(&'a self, roles: &'a Roles) -> Grants<'a> {
        Grants::new(&self.lists.scopes, &self.lists.roles, roles)
    }

    pub fn ip_allowlist(&self) -> &IpAllowlist {
        &self.lists.ip_allowlist
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// A key expires at `expires_at` exactly, as [`ApiKey::is_expired`] says.
    fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// State first (revoked, expired, disabled), then where the request comes from,
/// then what it asks for: the cheapest and most fundamental answer wins.
/// An unknown client IP (`None`, e.g. a verify call without `ip`) passes only
/// empty allowlists, so forgetting to pass it never opens an allowlist.
/// Scopes are the key's own and its roles' under `roles`.
pub fn check_access(
    key: &KeyAccess,
    workspace: &Workspace,
    client_ip: Option<IpAddr>,
    required_scopes: &[String],
    roles: &Roles,
    now: DateTime<Utc>,
) -> Result<(), Denial> {
    if key.revoked {
        return Err(Denial::Revoked);
    }
    if key.is_expired(now) {
        return Err(Denial::Expired);
    }
    if workspace.disabled {
        return Err(Denial::WorkspaceDisabled);
    }
    if !key.ip_allowlist().allows_opt(client_ip) || !workspace.ip_allowlist.allows_opt(client_ip) {
        return Err(Denial::IpNotAllowed);
    }
    if let Some(missing) = key.grants(roles).first_missing(required_scopes) {
        return Err(Denial::InsufficientScope(missing.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyHash;
    use crate::role::Roles;
    use chrono::Duration;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn workspace() -> Workspace {
        Workspace {
            id: "ws_1".into(),
            name: "Acme".into(),
            plan: None,
            ip_allowlist: IpAllowlist::default(),
            limits: vec![],
            credits: None,
            disabled: false,
            leak_policy: None,
            created_at: t(0),
            updated_at: t(0),
        }
    }

    fn key() -> ApiKey {
        ApiKey {
            id: "key_1".into(),
            workspace_id: "ws_1".into(),
            lineage_id: "key_1".into(),
            name: "Production Server".into(),
            environment: "live".into(),
            hash: KeyHash::of("x"),
            hint: "kg_live_abcd...wxyz".into(),
            scopes: vec![],
            roles: vec![],
            ip_allowlist: IpAllowlist::default(),
            expires_at: None,
            metadata: Default::default(),
            limits: vec![],
            credits: None,
            credits_set_at: None,
            created_at: t(0),
            created_by: None,
            last_used_at: None,
            last_used_ip: None,
            revoked_at: None,
            revoked_reason: None,
            rotated_from: None,
            rotated_to: None,
            deleted_at: None,
            legacy: false,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn allow(v: &[&str]) -> IpAllowlist {
        IpAllowlist::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_plain_key_passes() {
        assert_eq!(
            check_access(
                &KeyAccess::of(&key()),
                &workspace(),
                ip("1.2.3.4"),
                &["x:y".into()],
                &Roles::default(),
                t(1)
            ),
            Ok(())
        );
    }

    #[test]
    fn expiry_is_exact_to_the_instant() {
        let k = ApiKey {
            expires_at: Some(t(60)),
            ..key()
        };
        assert_eq!(
            check_access(
                &KeyAccess::of(&k),
                &workspace(),
                ip("1.2.3.4"),
                &[],
                &Roles::default(),
                t(60) - Duration::milliseconds(1)
            ),
            Ok(())
        );
        assert_eq!(
            check_access(
                &KeyAccess::of(&k),
                &workspace(),
                ip("1.2.3.4"),
                &[],
                &Roles::default(),
                t(60)
            ),
            Err(Denial::Expired)
        );
    }

    #[test]
    fn revoked_beats_expired_and_disabled() {
        let k = ApiKey {
            revoked_at: Some(t(0)),
            expires_at: Some(t(0)),
            ..key()
        };
        let ws = Workspace {
            disabled: true,
            ..workspace()
        };
        assert_eq!(
            check_access(&KeyAccess::of(&k), &ws, ip("1.2.3.4"), &[], &Roles::default(), t(5)),
            Err(Denial::Revoked)
        );
    }

    #[test]
    fn both_allowlists_apply() {
        let k = ApiKey {
            ip_allowlist: allow(&["10.0.0.0/8"]),
            ..key()
        };
        let ws = Workspace {
            ip_allowlist: allow(&["10.1.0.0/16"]),
            ..workspace()
        };
        assert_eq!(
            check_access(&KeyAccess::of(&k), &ws, ip("10.1.2.3"), &[], &Roles::default(), t(0)),
            Ok(())
        );
        assert_eq!(
            check_access(&KeyAccess::of(&k), &ws, ip("10.2.2.3"), &[], &Roles::default(), t(0)),
            Err(Denial::IpNotAllowed)
        );
        assert_eq!(
            check_access(
                &KeyAccess::of(&k),
                &workspace(),
                ip("11.0.0.1"),
                &[],
                &Roles::default(),
                t(0)
            ),
            Err(Denial::IpNotAllowed)
        );
        assert_eq!(
            check_access(&KeyAccess::of(&k), &workspace(), None, &[], &Roles::default(), t(0)),
            Err(Denial::IpNotAllowed)
        );
        assert_eq!(
            check_access(&KeyAccess::of(&key()), &workspace(), None, &[], &Roles::default(), t(0)),
            Ok(())
        );
    }

    #[test]
    fn scope_denial_names_the_scope() {
        let k = ApiKey {
            scopes: vec!["invoices:read".into()],
            ..key()
        };
        let denial = check_access(
            &KeyAccess::of(&k),
            &workspace(),
            ip("1.2.3.4"),
            &["invoices:write".into()],
            &Roles::default(),
            t(0),
        )
        .unwrap_err();
        assert_eq!(denial.missing_scope(), Some("invoices:write"));
        assert_eq!(denial.code(), ErrorCode::InsufficientScope);
    }
}
