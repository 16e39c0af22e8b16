//! Key import (issue 21): keys already held by customers, issued by another
//! gateway or by the team's own code, brought into a workspace so that they
//! keep working. Each row is the key itself or only its SHA-256; a key in
//! this deployment's format becomes an ordinary key, anything else a legacy
//! key (crates/keygate-core/src/legacy.rs). Rows are checked one by one: a
//! bad row is refused with its index and the others are imported. A row
//! whose key is already stored is counted, not changed, so a re-run of the
//! same file adds nothing.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use keygate_core::id::KEY_PREFIX;
use keygate_core::key::ADMIN_ENVIRONMENT;
use keygate_core::legacy::{hash_hint, parse_imported_hash, Presented};
use keygate_core::model::{ApiKey, Workspace};
use keygate_core::scope::validate_scopes;
use keygate_core::KeyHash;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use super::{to_millis, validate_name, Actor, Admin};
use crate::AdminError;

/// Rows per call: one transaction of a bounded size.
pub const MAX_IMPORT_ROWS: usize = 1000;
/// The longest hint a hash-only row may bring (it is shown in key lists).
const MAX_HINT_LEN: usize = 64;

/// One key to import, as a file row gave it.
#[derive(Debug, Default)]
pub struct ImportRow {
    /// The key as clients send it; exclusive with `hash`.
    pub key: Option<SecretString>,
    /// Its SHA-256, hex or base64, when the plaintext is not known.
    pub hash: Option<String>,
    /// How lists show a hash-only key (`sk_live_AbCd...`); default the
    /// start of its hash.
    pub hint: Option<String>,
    pub name: String,
    /// Default: the one of a key in this deployment's format, else the first configured.
    pub environment: Option<String>,
    pub scopes: Vec<String>,
    /// A key that has expired is imported as expired.
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Option<Map<String, Value>>,
}

/// A row that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRefusal {
    /// Its index in the call's rows, from 0.
    pub row: usize,
    pub field: String,
    pub message: String,
}

/// What one call did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Keys added by this call.
    pub imported: u64,
    /// Of those, legacy keys.
    pub legacy: u64,
    /// Rows whose key the workspace already held (or that repeat an earlier row).
    pub existing: u64,
    pub refused: Vec<RowRefusal>,
}

/// The key material of a row, once checked.
struct Identity {
    hash: KeyHash,
    hint: String,
    /// The environment a key in this deployment's format names.
    environment: Option<String>,
    legacy: bool,
}

impl Admin {
    /// Imports `rows` into the workspace. Legacy keys are taken when this
    /// node verifies them (`keys.legacy`) or when the caller says so for
    /// this call (`allow_legacy`: importing ahead of switching them on).
    pub async fn import_keys(
        &self,
        actor: &Actor,
        workspace_id: &str,
        rows: Vec<ImportRow>,
        allow_legacy: bool,
    ) -> Result<ImportReport, AdminError> {
        let workspace = self.get_workspace(actor, workspace_id).await?;
        if workspace.is_admin() {
            return Err(AdminError::Conflict(
                "keys cannot be imported into the admin workspace".into(),
            ));
        }
        if rows.is_empty() || rows.len() > MAX_IMPORT_ROWS {
            return Err(AdminError::validation(
                "keys",
                format!("1 to {MAX_IMPORT_ROWS} rows per call"),
            ));
        }
        let now = self.context.now();
        let allow_legacy = allow_legacy || self.verifier.takes_legacy_keys();
        let mut report = ImportReport::default();
        let mut checked = Vec::with_capacity(rows.len());
        let mut seen = HashSet::with_capacity(rows.len());
        for (index, row) in rows.into_iter().enumerate() {
            match self.imported_key(actor, &workspace, row, allow_legacy, now) {
                Ok(key) if seen.insert(key.hash) => checked.push((index, key)),
                Ok(_) => report.existing += 1,
                Err(AdminError::Validation { field, message }) => report.refused.push(RowRefusal {
                    row: index,
                    field,
                    message,
                }),
                Err(other) => return Err(other),
            }
        }
        let hashes: Vec<KeyHash> = checked.iter().map(|(_, key)| key.hash).collect();
        let stored: HashMap<KeyHash, String> = self
            .context
            .store()
            .stored_key_hashes(&hashes)
            .await?
            .into_iter()
            .collect();
        let mut new = Vec::with_capacity(checked.len());
        for (index, key) in checked {
            match stored.get(&key.hash) {
                None => new.push(key),
                Some(holder) if *holder == workspace.id => report.existing += 1,
                Some(_) => report.refused.push(RowRefusal {
                    row: index,
                    field: "key".into(),
                    message: "is already a key of another workspace".into(),
                }),
            }
        }
        report.refused.sort_by_key(|refusal| refusal.row);
        let legacy = new.iter().filter(|key| key.legacy).count() as u64;
        let details = json!({"keys": new.len(), "legacy": legacy});
        let event = self.audit_event(actor, "keys.imported", &workspace.id, &workspace.id, details, now);
        let inserted = self.context.store().import_keys(&new, &event).await?;
        // Keys a concurrent import stored first are there all the same.
        report.existing += new.len() as u64 - inserted;
        report.imported = inserted;
        report.legacy = legacy.min(inserted);
        for key in &new {
            // Someone may have tried the key here before it was imported.
            self.verifier.forget_key(&key.hash);
        }
        Ok(report)
    }

    /// One row as a key, or why it is refused (always `Validation`, naming the field).
    fn imported_key(
        &self,
        actor: &Actor,
        workspace: &Workspace,
        row: ImportRow,
        allow_legacy: bool,
        now: DateTime<Utc>,
    ) -> Result<ApiKey, AdminError> {
        let identity = self.identity(&row, allow_legacy)?;
        let environment = match (identity.environment, row.environment) {
            (Some(own), Some(named)) if own != named => {
                return Err(AdminError::validation(
                    "environment",
                    format!("the key is of environment `{own}`, not `{named}`"),
                ))
            }
            (Some(own), _) => own,
            (None, named) => self.import_environment(named)?,
        };
        actor.may_manage(&environment)?;
        let id = self.context.new_id(KEY_PREFIX, now);
        Ok(ApiKey {
            lineage_id: id.clone(),
            id,
            workspace_id: workspace.id.clone(),
            name: validate_name("name", &row.name)?,
            environment,
            hash: identity.hash,
            hint: identity.hint,
            scopes: validate_scopes(&row.scopes).map_err(|e| AdminError::validation("scopes", e))?,
            roles: Vec::new(),
            ip_allowlist: Default::default(),
            expires_at: row.expires_at.map(to_millis),
            metadata: self.validate_metadata(row.metadata.unwrap_or_default())?,
            limits: Vec::new(),
            credits: None,
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
            legacy: identity.legacy,
        })
    }

    fn identity(&self, row: &ImportRow, allow_legacy: bool) -> Result<Identity, AdminError> {
        let legacy_refused = || {
            AdminError::validation(
                "key",
                "is not in this deployment's key format: it is a legacy key, taken with keys.legacy = true \
                 or \"legacy\": true on the import",
            )
        };
        match (&row.key, &row.hash) {
            (Some(_), Some(_)) => Err(AdminError::validation("hash", "give the key or its hash, not both")),
            (None, None) => Err(AdminError::validation("key", "give the key or its hash")),
            (Some(key), None) => match Presented::of(self.verifier.key_format(), key.expose_secret()) {
                Presented::Own(parsed) if parsed.environment() == ADMIN_ENVIRONMENT => {
                    Err(AdminError::validation("key", "admin keys cannot be imported"))
                }
                Presented::Own(parsed) => Ok(Identity {
                    hash: parsed.hash(),
                    hint: parsed.hint(),
                    environment: Some(parsed.environment().to_owned()),
                    legacy: false,
                }),
                Presented::Mistyped => Err(AdminError::validation(
                    "key",
                    "has this deployment's key format but a wrong checksum: a key copied wrongly",
                )),
                Presented::Legacy(_) if !allow_legacy => Err(legacy_refused()),
                Presented::Legacy(legacy) => Ok(Identity {
                    hash: legacy.hash(),
                    hint: legacy.hint(),
                    environment: None,
                    legacy: true,
                }),
                Presented::Invalid => Err(AdminError::validation(
                    "key",
                    "must be 8 to 256 printable ASCII characters without spaces",
                )),
            },
            (None, Some(text)) => {
                let hash = parse_imported_hash(text).map_err(|e| AdminError::validation("hash", e))?;
                if !allow_legacy {
                    return Err(legacy_refused());
                }
                Ok(Identity {
                    hash,
                    hint: import_hint(row.hint.as_deref(), &hash)?,
                    environment: None,
                    legacy: true,
                })
            }
        }
    }

    /// A row's environment: one of the configured ones, never `admin`.
    fn import_environment(&self, named: Option<String>) -> Result<String, AdminError> {
        let format = self.verifier.key_format();
        match named {
            None => Ok(format.default_environment().to_owned()),
            Some(env) if env != ADMIN_ENVIRONMENT && format.is_known_environment(&env) => Ok(env),
            Some(env) => Err(AdminError::validation(
                "environment",
                format!(
                    "unknown environment `{env}`; this deployment uses [{}]",
                    format.environments().join(", ")
                ),
            )),
        }
    }
}

/// A hash-only row's hint: what the file says (printable, at most 64
/// characters), or the start of the hash.
fn import_hint(given: Option<&str>, hash: &KeyHash) -> Result<String, AdminError> {
    match given {
        None => Ok(hash_hint(hash)),
        Some(hint) if hint.len() <= MAX_HINT_LEN && !hint.is_empty() && hint.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(hint.to_owned())
        }
        Some(_) => Err(AdminError::validation(
            "hint",
            format!("must be 1 to {MAX_HINT_LEN} printable ASCII characters without spaces"),
        )),
    }
}
