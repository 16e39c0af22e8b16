//! The operations of the admin API: validation, authorization, the store
//! write with its audit event, and cache eviction, in that order.
//!
//! Authorization: keys of the built-in admin workspace act on everything. A
//! workspace key whose scopes explicitly grant `keys:manage` acts on its own
//! workspace's keys only and gets `NotFound` for anything else; an empty scope
//! list ("full access" on the data plane) does not grant it. Such a key
//! changes only keys of its own environment (a `test` key cannot mint or
//! revoke `live` keys, as Stripe's test mode cannot touch live data) unless
//! it also holds `keys:manage:all`.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use keygate_core::credits::CreditSpec;
use keygate_core::error::ErrorInstance;
use keygate_core::id::{self, ADMIN_WORKSPACE_ID, AUDIT_PREFIX, KEY_PREFIX, WORKSPACE_PREFIX};
use keygate_core::ip::IpAllowlist;
use keygate_core::key::ADMIN_ENVIRONMENT;
use keygate_core::limits::{validate_limits, LimitSpec};
use keygate_core::model::{ApiKey, KeyStatus, OnLeak, Workspace};
use keygate_core::scope::validate_scopes;
use keygate_core::{duration::parse_duration, ErrorCode, PlaintextKey};
use keygate_store::{AuditEvent, AuditFilter, KeyFilter, Page, Paged, RevokeOutcome};
use serde_json::{json, Map, Value};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::context::Context;
use crate::usage::Usage;
use crate::verifier::{LimitMode, Rejection, Verified, Verifier, VerifyRequest};
use crate::AdminError;

mod import;
mod key_changes;
mod leaks;
mod usage;
mod webhooks;

pub use import::{ImportReport, ImportRow, RowRefusal, MAX_IMPORT_ROWS};
pub use key_changes::{parse_cursor, KeyChanges, CURSOR_PATTERN};
pub use leaks::{LeakReport, LeakVerdict, PublicReport, MAX_HASHES_PER_LOOKUP, PUBLIC_REPORTS_PER_MINUTE};
pub use usage::{
    Granularity, HourlyRequests, UsageBucket, MAX_DAILY_USAGE_RANGE_DAYS, MAX_TOP_KEYS, MAX_USAGE_RANGE_DAYS,
};
pub use webhooks::Resealed;

/// The scope a workspace key needs to manage its workspace's keys.
pub const MANAGE_SCOPE: &str = "keys:manage";
/// The scope that lets a workspace key manage keys of every environment.
pub const MANAGE_ALL_SCOPE: &str = "keys:manage:all";
pub const MAX_NAME_LEN: usize = 200;
/// What an admin caller may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorScope {
    Admin,
    Workspace(String),
}

/// Who is making an admin call, for authorization and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// A key id, or `cli` for direct store access.
    pub id: String,
    pub ip: Option<String>,
    pub scope: ActorScope,
    /// The one environment whose keys it may create and change; `None`: all.
    pub environment: Option<String>,
}

impl Actor {
    /// The operator at a terminal with direct access to the store.
    pub fn cli() -> Self {
        Self {
            id: "cli".into(),
            ip: None,
            scope: ActorScope::Admin,
            environment: None,
        }
    }

    /// Keys of `environment` may be created or changed by this caller.
    fn may_manage(&self, environment: &str) -> Result<(), AdminError> {
        match &self.environment {
            Some(own) if own != environment => Err(AdminError::Forbidden(
                "this API key manages keys of its own environment only; other environments need keys:manage:all",
            )),
            _ => Ok(()),
        }
    }

    fn can_see(&self, workspace_id: &str) -> bool {
        match &self.scope {
            ActorScope::Admin => true,
            ActorScope::Workspace(own) => own == workspace_id,
        }
    }

    /// Operations on the whole node (a config reload, say) need an admin key.
    pub fn require_admin(&self) -> Result<(), AdminError> {
        match self.scope {
            ActorScope::Admin => Ok(()),
            ActorScope::Workspace(_) => Err(AdminError::Forbidden("this operation needs an admin key")),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NewWorkspace {
    pub name: String,
    pub plan: Option<String>,
    pub ip_allowlist: Vec<String>,
    pub limits: Vec<LimitSpec>,
    /// Credits for each of its keys, overriding the plan's.
    pub credits: Option<CreditSpec>,
    /// Overrides `leaks.on_report` for this workspace's keys.
    pub leak_policy: Option<OnLeak>,
}

/// Fields a PATCH may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WorkspacePatch {
    pub name: Option<String>,
    pub plan: Option<Option<String>>,
    pub ip_allowlist: Option<Vec<String>>,
    pub limits: Option<Vec<LimitSpec>>,
    /// `Some(None)` goes back to the plan's credits.
    pub credits: Option<Option<CreditSpec>>,
    pub disabled: Option<bool>,
    /// `Some(None)` goes back to the config's `leaks.on_report`.
    pub leak_policy: Option<Option<OnLeak>>,
}

#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub environment: Option<String>,
    pub scopes: Vec<String>,
    /// Names of the config's `[roles]`.
    pub roles: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub expires_in: Option<String>,
    pub ip_allowlist: Vec<String>,
    pub metadata: Option<Map<String, Value>>,
    pub limits: Vec<LimitSpec>,
    pub credits: Option<CreditSpec>,
}

#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    pub ip_allowlist: Option<Vec<String>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub metadata: Option<Map<String, Value>>,
    pub limits: Option<Vec<LimitSpec>>,
    /// Sets the key's credits, a new balance from now; `Some(None)` goes
    /// back to its workspace's or plan's, also from now.
    pub credits: Option<Option<CreditSpec>>,
}

/// What the dashboard's key list shows of one page of keys.
#[derive(Debug, Clone)]
pub struct KeyListPage {
    pub workspace: Workspace,
    pub keys: Paged<ApiKey>,
    /// Keys in the workspace, whatever the filter.
    pub total: u64,
    /// Requests of each listed key per hour, the last 24 hours up to now;
    /// keys without any are absent.
    pub last_day: HashMap<String, HourlyRequests>,
}

/// Stores keep milliseconds; truncating first makes responses equal later reads.
fn to_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// `after` from `now`: a duration past the calendar's end is the caller's
/// mistake (`field`), never an overflow.
fn later(field: &str, now: DateTime<Utc>, after: Duration) -> Result<DateTime<Utc>, AdminError> {
    chrono::Duration::from_std(after)
        .ok()
        .and_then(|after| now.checked_add_signed(after))
        .ok_or_else(|| AdminError::validation(field, "is too far in the future"))
}

/// Length and characters are checked as sent, as the OpenAPI document states
/// them (crates/keygate-core/src/grammar.rs); the name kept is trimmed.
fn validate_name(field: &str, name: &str) -> Result<String, AdminError> {
    if name.chars().count() > MAX_NAME_LEN {
        return Err(AdminError::validation(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(AdminError::validation(field, "must not contain control characters"));
    }
    let name = name.trim();
    if name.is_empty() {
        return Err(AdminError::validation(field, "must not be empty"));
    }
    Ok(name.to_owned())
}

fn validate_credits(field: &str, credits: Option<CreditSpec>) -> Result<Option<CreditSpec>, AdminError> {
    credits
        .map(|spec| spec.validate().map_err(|e| AdminError::validation(field, e)))
        .transpose()
}

fn validate_allowlist(field: &str, entries: &[String]) -> Result<IpAllowlist, AdminError> {
    IpAllowlist::parse(entries).map_err(|e| AdminError::validation(field, e))
}

fn validate_limit_list(field: &str, limits: &[LimitSpec]) -> Result<Vec<LimitSpec>, AdminError> {
    validate_limits(limits).map_err(|e| AdminError::validation(field, e))
}

/// What the admin operations need of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminSettings {
    /// A rotated key's old secret works this long unless the call says otherwise (`keys.rotation_grace`).
    pub default_rotation_grace: Duration,
    /// Largest key metadata, as JSON (`keys.max_metadata_bytes`).
    pub max_metadata_bytes: usize,
    /// What a report of a leaked key does (`leaks.on_report`), unless its
    /// workspace says otherwise.
    pub on_leak: OnLeak,
    /// How long a reported key keeps working where the policy is to expire it (`leaks.grace`).
    pub leak_grace: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            default_rotation_grace: Duration::from_secs(24 * 3600),
            max_metadata_bytes: 4096,
            on_leak: OnLeak::Revoke,
            leak_grace: Duration::from_secs(3600),
        }
    }
}

/// The admin operations. A change evicts what the verifier cached of it
/// (this node at once, other nodes through the store's change feed).
pub struct Admin {
    context: Arc<Context>,
    settings: AdminSettings,
    verifier: Arc<Verifier>,
    usage: Arc<Usage>,
}

impl Admin {
    pub(crate) fn new(
        context: Arc<Context>,
        settings: AdminSettings,
        verifier: Arc<Verifier>,
        usage: Arc<Usage>,
    ) -> Self {
        Self {
            context,
            settings,
            verifier,
            usage,
        }
    }

    /// Authenticates an admin API call: the key must be valid for the caller's
    /// address and be an admin key or hold `keys:manage`.
    pub async fn authenticate_admin(&self, presented: &str, client_ip: IpAddr) -> Result<Actor, Rejection> {
        // The control plane is not rate-limited by plans: limits are for the API behind the gateway.
        let request = VerifyRequest {
            limits: LimitMode::Skip,
            ..VerifyRequest::new(presented, Some(client_ip))
        };
        let verified = self.verifier.verify(request).await?;
        let cached = &verified.key;
        let roles = self.verifier.roles();
        let grants = cached.access().grants(&roles);
        let scope = if cached.workspace().is_admin() {
            ActorScope::Admin
        } else if grants.grants_explicitly(MANAGE_SCOPE) {
            ActorScope::Workspace(cached.workspace().id.clone())
        } else {
            return Err(Rejection {
                error: ErrorInstance::new(ErrorCode::Forbidden)
                    .with_message("This API key may not use the admin API: it needs the keys:manage scope."),
                key: Some(verified.key.clone()),
                limits: None,
            });
        };
        let all_environments = matches!(scope, ActorScope::Admin) || grants.grants_explicitly(MANAGE_ALL_SCOPE);
        Ok(Actor {
            id: cached.id().to_string(),
            ip: Some(client_ip.to_string()),
            scope,
            environment: (!all_environments).then(|| cached.environment().to_owned()),
        })
    }

    /// The verify API: the gateway's decision for a key, seen by a caller that
    /// may only learn about keys of the workspaces it can see.
    pub async fn verify_for(&self, actor: &Actor, request: VerifyRequest<'_>) -> Result<Verified, Rejection> {
        let visible = |workspace_id: &str| actor.can_see(workspace_id);
        match self.verifier.verify(request).await {
            Ok(verified) if visible(verified.key.workspace_id()) => Ok(verified),
            Err(rejection) if rejection.key.as_ref().is_none_or(|k| visible(k.workspace_id())) => Err(rejection),
            _ => Err(Rejection {
                error: ErrorInstance::new(ErrorCode::InvalidApiKey),
                key: None,
                limits: None,
            }),
        }
    }

    pub(crate) fn audit_event(
        &self,
        actor: &Actor,
        action: &str,
        object_id: &str,
        workspace_id: &str,
        details: Value,
        now: DateTime<Utc>,
    ) -> AuditEvent {
        AuditEvent {
            id: self.context.new_id(AUDIT_PREFIX, now),
            at: now,
            actor: actor.id.clone(),
            actor_ip: actor.ip.clone(),
            action: action.to_owned(),
            object_type: action.split('.').next().unwrap_or_default().to_owned(),
            object_id: object_id.to_owned(),
            workspace_id: Some(workspace_id.to_owned()),
            details,
        }
    }

    fn validate_plan(&self, plan: Option<String>) -> Result<Option<String>, AdminError> {
        match plan {
            Some(plan) if !self.verifier.plans().contains(&plan) => {
                let plans = self.verifier.plans();
                let known: Vec<&str> = plans.names().collect();
                Err(AdminError::validation(
                    "plan",
                    format!("unknown plan `{plan}`; configured plans: [{}]", known.join(", ")),
                ))
            }
            other => Ok(other),
        }
    }

    // ----- workspaces -----

    pub async fn create_workspace(&self, actor: &Actor, input: NewWorkspace) -> Result<Workspace, AdminError> {
        actor.require_admin()?;
        let now = self.context.now();
        let workspace = Workspace {
            id: self.context.new_id(WORKSPACE_PREFIX, now),
            name: validate_name("name", &input.name)?,
            plan: self.validate_plan(input.plan)?,
            ip_allowlist: validate_allowlist("ip_allowlist", &input.ip_allowlist)?,
            limits: validate_limit_list("limits", &input.limits)?,
            credits: validate_credits("credits", input.credits)?,
            disabled: false,
            leak_policy: input.leak_policy,
            created_at: now,
            updated_at: now,
        };
        let details = json!({"name": workspace.name, "plan": workspace.plan});
        let event = self.audit_event(actor, "workspace.created", &workspace.id, &workspace.id, details, now);
        self.context.store().insert_workspace(&workspace, &event).await?;
        Ok(workspace)
    }

    pub async fn get_workspace(&self, actor: &Actor, id: &str) -> Result<Workspace, AdminError> {
        if !id::looks_like(WORKSPACE_PREFIX, id) || !actor.can_see(id) {
            return Err(AdminError::NotFound);
        }
        self.context
            .store()
            .get_workspace(id)
            .await?
            .ok_or(AdminError::NotFound)
    }

    pub async fn list_workspaces(&self, actor: &Actor, page: &Page) -> Result<Paged<Workspace>, AdminError> {
        match &actor.scope {
            ActorScope::Admin => Ok(self.context.store().list_workspaces(page).await?),
            ActorScope::Workspace(own) => {
                let items = self.context.store().get_workspace(own).await?.into_iter().collect();
                Ok(Paged {
                    items,
                    next_cursor: None,
                })
            }
        }
    }

    pub async fn update_workspace(
        &self,
        actor: &Actor,
        id: &str,
        patch: WorkspacePatch,
    ) -> Result<Workspace, AdminError> {
        let mut workspace = self.get_workspace(actor, id).await?;
        actor.require_admin()?;
        let now = self.context.now();
        let mut changed = Vec::new();
        if let Some(name) = patch.name {
            workspace.name = validate_name("name", &name)?;
            changed.push("name");
        }
        if let Some(plan) = patch.plan {
            workspace.plan = self.validate_plan(plan)?;
            changed.push("plan");
        }
        if let Some(entries) = patch.ip_allowlist {
            workspace.ip_allowlist = validate_allowlist("ip_allowlist", &entries)?;
            changed.push("ip_allowlist");
        }
        if let Some(limits) = patch.limits {
            workspace.limits = validate_limit_list("limits", &limits)?;
            changed.push("limits");
        }
        if let Some(credits) = patch.credits {
            workspace.credits = validate_credits("credits", credits)?;
            changed.push("credits");
        }
        if let Some(disabled) = patch.disabled {
            if workspace.is_admin() && disabled {
                return Err(AdminError::Conflict("the admin workspace cannot be disabled".into()));
            }
            workspace.disabled = disabled;
            changed.push("disabled");
        }
        if let Some(leak_policy) = patch.leak_policy {
            workspace.leak_policy = leak_policy;
            changed.push("leak_policy");
        }
        workspace.updated_at = now;
        let event = self.audit_event(actor, "workspace.updated", id, id, json!({"changed": changed}), now);
        self.context.store().update_workspace(&workspace, &event).await?;
        self.verifier.forget_all_keys();
        Ok(workspace)
    }

    pub async fn delete_workspace(&self, actor: &Actor, id: &str) -> Result<(), AdminError> {
        self.get_workspace(actor, id).await?;
        actor.require_admin()?;
        if id == ADMIN_WORKSPACE_ID {
            return Err(AdminError::Conflict("the admin workspace cannot be deleted".into()));
        }
        let now = self.context.now();
        let event = self.audit_event(actor, "workspace.deleted", id, id, json!({}), now);
        self.context.store().delete_workspace(id, now, &event).await?;
        self.verifier.forget_all_keys();
        Ok(())
    }

    // ----- keys -----

    /// Creates a key; the plaintext exists only in the returned value.
    pub async fn create_key(
        &self,
        actor: &Actor,
        workspace_id: &str,
        input: NewKey,
    ) -> Result<(ApiKey, PlaintextKey), AdminError> {
        let workspace = self.get_workspace(actor, workspace_id).await?;
        let now = self.context.now();
        // A caller limited to one environment creates keys there unless it asks.
        let requested = input.environment.or_else(|| actor.environment.clone());
        let environment = self.key_environment(&workspace, requested)?;
        actor.may_manage(&environment)?;
        let expires_at = match (input.expires_at, input.expires_in) {
            (Some(_), Some(_)) => {
                return Err(AdminError::validation(
                    "expires_in",
                    "give expires_at or expires_in, not both",
                ))
            }
            (Some(at), None) => Some(to_millis(at)),
            (None, Some(text)) => {
                let after = parse_duration(&text).map_err(|e| AdminError::validation("expires_in", e))?;
                Some(later("expires_in", now, after)?)
            }
            (None, None) => None,
        };
        if expires_at.is_some_and(|at| at <= now) {
            return Err(AdminError::validation("expires_at", "must be in the future"));
        }
        let plaintext = self
            .verifier
            .key_format()
            .generate(&environment, &mut rand::thread_rng())
            .map_err(|e| AdminError::validation("environment", e))?;
        let id = self.context.new_id(KEY_PREFIX, now);
        let key = ApiKey {
            lineage_id: id.clone(),
            id,
            workspace_id: workspace.id.clone(),
            name: validate_name("name", &input.name)?,
            environment,
            hash: plaintext.hash(),
            hint: plaintext.hint(),
            scopes: validate_scopes(&input.scopes).map_err(|e| AdminError::validation("scopes", e))?,
            roles: self.validate_roles(&input.roles)?,
            ip_allowlist: validate_allowlist("ip_allowlist", &input.ip_allowlist)?,
            expires_at,
            metadata: self.validate_metadata(input.metadata.unwrap_or_default())?,
            limits: validate_limit_list("limits", &input.limits)?,
            credits: validate_credits("credits", input.credits)?,
            credits_set_at: None,
            created_at: now,
            created_by: Some(actor.id.clone()),
            last_used_at: None,
            last_used_ip: None,
            revoked_at: None,
            revoked_reason: None,
            rotated_from: None,
            rotated_to: None,
            deleted_at: None,
            legacy: false,
        };
        let details = json!({
            "name": key.name,
            "environment": key.environment,
            "scopes": key.scopes,
            "roles": key.roles,
        });
        let event = self.audit_event(actor, "key.created", &key.id, &key.workspace_id, details, now);
        self.context.store().insert_key(&key, &event).await?;
        self.verifier.forget_key(&key.hash);
        Ok((key, plaintext))
    }

    /// Admin keys always live in the `admin` environment; other keys in a configured one.
    fn key_environment(&self, workspace: &Workspace, requested: Option<String>) -> Result<String, AdminError> {
        let format = self.verifier.key_format();
        match (workspace.is_admin(), requested) {
            (true, None) => Ok(ADMIN_ENVIRONMENT.to_owned()),
            (true, Some(env)) if env == ADMIN_ENVIRONMENT => Ok(env),
            (false, None) => Ok(format.default_environment().to_owned()),
            (false, Some(env)) if env != ADMIN_ENVIRONMENT && format.is_known_environment(&env) => Ok(env),
            (_, Some(env)) => Err(AdminError::validation(
                "environment",
                format!(
                    "unknown environment `{env}`; this workspace uses [{}]",
                    if workspace.is_admin() {
                        ADMIN_ENVIRONMENT.to_owned()
                    } else {
                        format.environments().join(", ")
                    }
                ),
            )),
        }
    }

    /// Roles a key may be given: configured now (a role removed later grants
    /// nothing, crates/keygate-core/src/role.rs).
    fn validate_roles(&self, names: &[String]) -> Result<Vec<String>, AdminError> {
        self.verifier
            .roles()
            .validate_key_roles(names)
            .map_err(|e| AdminError::validation("roles", e))
    }

    fn validate_metadata(&self, metadata: Map<String, Value>) -> Result<Map<String, Value>, AdminError> {
        let size = serde_json::to_vec(&metadata).map_or(usize::MAX, |bytes| bytes.len());
        if size > self.settings.max_metadata_bytes {
            return Err(AdminError::validation(
                "metadata",
                format!("must be at most {} bytes as JSON", self.settings.max_metadata_bytes),
            ));
        }
        Ok(metadata)
    }

    /// A key the caller may see. A deleted key is gone from here (and so
    /// from every call that reads, changes or deletes it), as its `DELETE`
    /// said; its record stays for `?status=deleted` lists and
    /// [`Self::key_record`].
    pub async fn get_key(&self, actor: &Actor, id: &str) -> Result<ApiKey, AdminError> {
        match self.key_record(actor, id).await? {
            key if key.deleted_at.is_some() => Err(AdminError::NotFound),
            key => Ok(key),
        }
    }

    /// A key the caller may see, deleted or not: its dashboard page (with its
    /// usage) stays readable after a `DELETE`, as its audit trail does.
    pub async fn key_record(&self, actor: &Actor, id: &str) -> Result<ApiKey, AdminError> {
        if !id::looks_like(KEY_PREFIX, id) {
            return Err(AdminError::NotFound);
        }
        match self.context.store().get_key(id).await? {
            Some(key) if actor.can_see(&key.workspace_id) => Ok(key),
            _ => Err(AdminError::NotFound),
        }
    }

    /// The workspace of the key a list is filtered by (`/v1/audit-events`
    /// and `/v1/events` alike): another workspace's key is not found, as its
    /// own `GET` is; a key that is gone (deleted) still has its history, so
    /// the filter stands (a workspace key still sees only its workspace's).
    pub(crate) async fn workspace_of_filtered_key(
        &self,
        actor: &Actor,
        key_id: &str,
    ) -> Result<Option<String>, AdminError> {
        match self.context.store().get_key(key_id).await? {
            Some(key) if actor.can_see(&key.workspace_id) => Ok(Some(key.workspace_id)),
            Some(_) => Err(AdminError::NotFound),
            None => Ok(None),
        }
    }

    /// A key the caller may change: visible to it, and of an environment it manages.
    async fn managed_key(&self, actor: &Actor, id: &str) -> Result<ApiKey, AdminError> {
        let key = self.get_key(actor, id).await?;
        actor.may_manage(&key.environment)?;
        Ok(key)
    }

    pub async fn list_keys(
        &self,
        actor: &Actor,
        workspace_id: &str,
        filter: &KeyFilter,
        page: &Page,
    ) -> Result<Paged<ApiKey>, AdminError> {
        self.get_workspace(actor, workspace_id).await?;
        Ok(self
            .context
            .store()
            .list_keys(workspace_id, filter, page, self.context.now())
            .await?)
    }

    /// A page of a workspace's keys with the workspace, its key count and
    /// each listed key's requests per hour over the last day, as the
    /// dashboard shows them: one authorization, one workspace read, one usage read.
    pub async fn key_list_page(
        &self,
        actor: &Actor,
        workspace_id: &str,
        filter: &KeyFilter,
        page: &Page,
    ) -> Result<KeyListPage, AdminError> {
        let workspace = self.get_workspace(actor, workspace_id).await?;
        let now = self.context.now();
        let keys = self.context.store().list_keys(workspace_id, filter, page, now).await?;
        let total = self.context.store().count_keys(workspace_id).await?;
        let last_day = self.last_day_by_hour(&keys.items, now).await?;
        Ok(KeyListPage {
            workspace,
            keys,
            total,
            last_day,
        })
    }

    pub async fn update_key(&self, actor: &Actor, id: &str, patch: KeyPatch) -> Result<ApiKey, AdminError> {
        let mut key = self.managed_key(actor, id).await?;
        if key.status(self.context.now()) == KeyStatus::Deleted {
            return Err(AdminError::NotFound);
        }
        let now = self.context.now();
        let mut changed = Vec::new();
        if let Some(name) = patch.name {
            key.name = validate_name("name", &name)?;
            changed.push("name");
        }
        if let Some(scopes) = patch.scopes {
            key.scopes = validate_scopes(&scopes).map_err(|e| AdminError::validation("scopes", e))?;
            changed.push("scopes");
        }
        if let Some(roles) = patch.roles {
            key.roles = self.validate_roles(&roles)?;
            changed.push("roles");
        }
        if let Some(entries) = patch.ip_allowlist {
            key.ip_allowlist = validate_allowlist("ip_allowlist", &entries)?;
            changed.push("ip_allowlist");
        }
        if let Some(expires_at) = patch.expires_at {
            key.expires_at = expires_at.map(to_millis);
            changed.push("expires_at");
        }
        if let Some(metadata) = patch.metadata {
            key.metadata = self.validate_metadata(metadata)?;
            changed.push("metadata");
        }
        if let Some(limits) = patch.limits {
            key.limits = validate_limit_list("limits", &limits)?;
            changed.push("limits");
        }
        if let Some(credits) = patch.credits {
            key.credits = validate_credits("credits", credits)?;
            key.credits_set_at = Some(now);
            changed.push("credits");
        }
        let event = self.audit_event(
            actor,
            "key.updated",
            id,
            &key.workspace_id,
            json!({"changed": changed}),
            now,
        );
        self.context.store().update_key(&key, &event).await?;
        self.verifier.forget_key(&key.hash);
        Ok(key)
    }

    /// Revokes a key; revoking a revoked key returns it unchanged.
    pub async fn revoke_key(&self, actor: &Actor, id: &str, reason: Option<String>) -> Result<ApiKey, AdminError> {
        let key = self.managed_key(actor, id).await?;
        if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
            return Err(AdminError::validation("reason", "must be at most 500 characters"));
        }
        let reason = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
        let now = self.context.now();
        let event = self.audit_event(
            actor,
            "key.revoked",
            id,
            &key.workspace_id,
            json!({"reason": reason}),
            now,
        );
        let outcome = self
            .context
            .store()
            .revoke_key(id, now, reason.as_deref(), &event)
            .await?;
        self.verifier.forget_key(&key.hash);
        Ok(match outcome {
            RevokeOutcome::Revoked(key) | RevokeOutcome::AlreadyRevoked(key) => key,
        })
    }

    /// Revokes if needed and hides the key from lists; the row stays for the audit trail.
    pub async fn delete_key(&self, actor: &Actor, id: &str) -> Result<ApiKey, AdminError> {
        let key = self.managed_key(actor, id).await?;
        let now = self.context.now();
        let event = self.audit_event(actor, "key.deleted", id, &key.workspace_id, json!({}), now);
        let deleted = self.context.store().delete_key(id, now, &event).await?;
        self.verifier.forget_key(&key.hash);
        Ok(deleted)
    }

    /// Issues a successor with the same name, scopes, roles, limits, credits
    /// and metadata; the old key keeps working until now + `grace`. Returns
    /// the new key and its plaintext.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        id: &str,
        grace: Option<&str>,
    ) -> Result<(ApiKey, PlaintextKey), AdminError> {
        let old = self.managed_key(actor, id).await?;
        let grace = match grace {
            Some(text) => parse_duration(text).map_err(|e| AdminError::validation("grace", e))?,
            None => self.settings.default_rotation_grace,
        };
        let now = self.context.now();
        let grace_end = later("grace", now, grace)?;
        let plaintext = self
            .verifier
            .key_format()
            .generate(&old.environment, &mut rand::thread_rng())
            .map_err(|e| AdminError::validation("environment", e))?;
        let new = ApiKey {
            id: self.context.new_id(KEY_PREFIX, now),
            hash: plaintext.hash(),
            hint: plaintext.hint(),
            created_at: now,
            created_by: Some(actor.id.clone()),
            last_used_at: None,
            last_used_ip: None,
            revoked_at: None,
            revoked_reason: None,
            rotated_from: Some(old.id.clone()),
            rotated_to: None,
            deleted_at: None,
            legacy: false,
            // The same balance: its periods still count from the lineage's.
            credits_set_at: Some(old.credits_origin()),
            ..old.clone()
        };
        let details = json!({"new_key_id": new.id, "old_key_expires_at": grace_end});
        let event = self.audit_event(actor, "key.rotated", id, &old.workspace_id, details, now);
        self.context.store().rotate_key(id, grace_end, &new, &event).await?;
        self.verifier.forget_key(&old.hash);
        Ok((new, plaintext))
    }

    pub async fn audit_events(
        &self,
        actor: &Actor,
        mut filter: AuditFilter,
        page: &Page,
    ) -> Result<Paged<AuditEvent>, AdminError> {
        let asked = filter.workspace_id.take();
        filter.workspace_id = self.listed_workspace(actor, filter.key_id.as_deref(), asked).await?;
        Ok(self.context.store().list_audit_events(&filter, page).await?)
    }

    /// The workspace a listing filtered by key and workspace shows: the
    /// key's own (so another workspace's key finds nothing rather than
    /// everything), and for a workspace key only its own; asking for
    /// another is `NotFound`.
    pub(crate) async fn listed_workspace(
        &self,
        actor: &Actor,
        key_id: Option<&str>,
        asked: Option<String>,
    ) -> Result<Option<String>, AdminError> {
        let mut workspace_id = asked;
        if let Some(key_id) = key_id {
            if let Some(of_key) = self.workspace_of_filtered_key(actor, key_id).await? {
                workspace_id.get_or_insert(of_key);
            }
        }
        if let ActorScope::Workspace(own) = &actor.scope {
            if workspace_id.as_ref().is_some_and(|ws| ws != own) {
                return Err(AdminError::NotFound);
            }
            workspace_id = Some(own.clone());
        }
        Ok(workspace_id)
    }

    /// Creates an admin key directly on the store: how automation and the
    /// first start bootstrap access.
    pub async fn create_admin_key(&self, name: &str) -> Result<(ApiKey, PlaintextKey), AdminError> {
        let input = NewKey {
            name: name.to_owned(),
            ..NewKey::default()
        };
        self.create_key(&Actor::cli(), ADMIN_WORKSPACE_ID, input).await
    }

    /// True when no admin key was ever created: the first start.
    pub async fn needs_bootstrap(&self) -> Result<bool, AdminError> {
        Ok(self.context.store().count_keys(ADMIN_WORKSPACE_ID).await? == 0)
    }
}
