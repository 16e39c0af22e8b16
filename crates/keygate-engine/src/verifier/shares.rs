//! What many cached keys have in common, kept once (memory per cached key,
//! issue 18; BENCHMARKS.md): a workspace with 100,000 keys is held once, not
//! 100,000 times, and so is a set of scopes that 100,000 keys were given.
//!
//! A read that returns what is kept gets the kept copy; a changed workspace
//! replaces it, and keys cached before the change keep the copy they were
//! read with until they leave the cache, as before. Past each table's
//! capacity a read gets a copy of its own: correct, only larger.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;

use keygate_core::model::{ApiKey, Workspace};
use keygate_core::ratelimit::Rule;
use keygate_core::AccessLists;
use keygate_limiter::{ArcStr, CounterLimit};

/// A workspace, its id as an `ArcStr` (usage rows and workspace-scoped
/// counters are written under it) and an environment of its keys, behind
/// one pointer shared by the cached keys of that workspace and environment.
/// A workspace's keys are in a handful of environments, so the environment
/// rides here rather than in each key: one pointer less in every cached key
/// (memory per cached key, BENCHMARKS.md).
#[derive(Debug, Clone)]
pub(crate) struct SharedWorkspace(Arc<WorkspaceShare>);

#[derive(Debug)]
struct WorkspaceShare {
    workspace: Workspace,
    id: ArcStr,
    environment: Arc<String>,
}

impl SharedWorkspace {
    fn new(workspace: Workspace, environment: Arc<String>) -> Self {
        let id = ArcStr::from(workspace.id.as_str());
        Self(Arc::new(WorkspaceShare {
            workspace,
            id,
            environment,
        }))
    }

    pub(crate) fn workspace(&self) -> &Workspace {
        &self.0.workspace
    }

    pub(crate) fn id(&self) -> &ArcStr {
        &self.0.id
    }

    pub(crate) fn environment(&self) -> &str {
        &self.0.environment
    }
}

/// One copy of each distinct value: keyed by the values themselves (an
/// `Arc` hashes and compares as what it points to), so a value read again
/// finds the kept copy.
struct Kept<T: ?Sized>(quick_cache::sync::Cache<Arc<T>, Arc<T>>);

impl<T: ?Sized + Hash + Eq> Kept<T> {
    fn new() -> Self {
        Self(quick_cache::sync::Cache::new(Shares::CAPACITY))
    }

    fn share<R: Borrow<T> + Into<Arc<T>>>(&self, read: R) -> Arc<T> {
        if let Some(kept) = self.0.get(read.borrow()) {
            return kept;
        }
        let shared: Arc<T> = read.into();
        self.0.insert(shared.clone(), shared.clone());
        shared
    }
}

/// The tables of what is shared.
pub(crate) struct Shares {
    /// By workspace id and environment.
    workspaces: quick_cache::sync::Cache<(String, String), SharedWorkspace>,
    access: Kept<AccessLists>,
    /// Environments and creators: a handful of names for all the keys. An
    /// `Arc<String>` is one pointer in each key where an `Arc<str>` is two.
    names: Kept<String>,
    /// The rules of limits: a plan's limit is one rule for all its keys.
    rules: Kept<Rule>,
    /// The resources and windows of limits, as the rules.
    counter_limits: Kept<CounterLimit>,
}

impl Default for Shares {
    fn default() -> Self {
        Self {
            workspaces: quick_cache::sync::Cache::new(Self::CAPACITY),
            access: Kept::new(),
            names: Kept::new(),
            rules: Kept::new(),
            counter_limits: Kept::new(),
        }
    }
}

impl Shares {
    /// Distinct workspaces, and distinct values of each other kind, kept at most.
    const CAPACITY: usize = 65_536;

    /// A key's workspace, with the environment it is in.
    pub(crate) fn workspace(&self, read: Workspace, environment: String) -> SharedWorkspace {
        let slot = (read.id.clone(), environment);
        if let Some(kept) = self.workspaces.get(&slot) {
            if *kept.workspace() == read {
                return kept;
            }
        }
        let shared = SharedWorkspace::new(read, self.name(slot.1.clone()));
        self.workspaces.insert(slot, shared.clone());
        shared
    }

    /// The key's allowlist, scopes and roles, taken out of its row.
    pub(crate) fn access_lists(&self, key: &mut ApiKey) -> Arc<AccessLists> {
        self.access.share(AccessLists::new(
            std::mem::take(&mut key.ip_allowlist),
            std::mem::take(&mut key.scopes),
            std::mem::take(&mut key.roles),
        ))
    }

    /// A key's creator, or an environment.
    pub(crate) fn name(&self, read: String) -> Arc<String> {
        self.names.share(read)
    }

    pub(crate) fn rule(&self, rule: Rule) -> Arc<Rule> {
        self.rules.share(rule)
    }

    pub(crate) fn counter_limit(&self, limit: CounterLimit) -> Arc<CounterLimit> {
        self.counter_limits.share(limit)
    }
}
