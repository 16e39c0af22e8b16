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

/// A workspace and its id as an `ArcStr` (usage rows and workspace-scoped
/// counters are written under it), behind one pointer shared by the cached
/// keys of the workspace.
#[derive(Debug, Clone)]
pub(crate) struct SharedWorkspace(Arc<(Workspace, ArcStr)>);

impl SharedWorkspace {
    pub(crate) fn new(workspace: Workspace) -> Self {
        let id = ArcStr::from(workspace.id.as_str());
        Self(Arc::new((workspace, id)))
    }

    pub(crate) fn workspace(&self) -> &Workspace {
        &self.0 .0
    }

    pub(crate) fn id(&self) -> &ArcStr {
        &self.0 .1
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
    workspaces: quick_cache::sync::Cache<String, SharedWorkspace>,
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

    pub(crate) fn workspace(&self, read: Workspace) -> SharedWorkspace {
        if let Some(kept) = self.workspaces.get(&read.id) {
            if *kept.workspace() == read {
                return kept;
            }
        }
        let shared = SharedWorkspace::new(read);
        self.workspaces.insert(shared.workspace().id.clone(), shared.clone());
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

    /// A key's environment or creator.
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
