//! What many cached keys have in common, kept once (memory per cached key,
//! issue 18; BENCHMARKS.md): a workspace with 100,000 keys is held once, not
//! 100,000 times, and so is a set of scopes that 100,000 keys were given.
//!
//! A read that returns what is kept gets the kept copy; a changed workspace
//! replaces it, and keys cached before the change keep the copy they were
//! read with until they leave the cache, as before. Past each table's
//! capacity a read gets a copy of its own: correct, only larger.

use std::sync::Arc;

use keygate_core::model::{ApiKey, Workspace};
use keygate_core::AccessLists;

/// A workspace and its id as an `Arc<str>` (usage rows and workspace-scoped
/// counters are written under it), behind one pointer shared by the cached
/// keys of the workspace.
#[derive(Debug, Clone)]
pub(crate) struct SharedWorkspace(Arc<(Workspace, Arc<str>)>);

impl SharedWorkspace {
    pub(crate) fn new(workspace: Workspace) -> Self {
        let id = Arc::from(workspace.id.as_str());
        Self(Arc::new((workspace, id)))
    }

    pub(crate) fn workspace(&self) -> &Workspace {
        &self.0 .0
    }

    pub(crate) fn id(&self) -> &Arc<str> {
        &self.0 .1
    }
}

/// The tables of what is shared.
pub(crate) struct Shares {
    workspaces: quick_cache::sync::Cache<String, SharedWorkspace>,
    /// Keyed by the lists themselves: an `Arc` hashes and compares as what
    /// it points to, so a row's lists find the kept copy.
    access: quick_cache::sync::Cache<Arc<AccessLists>, Arc<AccessLists>>,
    /// Environments and creators: a handful of names for all the keys.
    names: quick_cache::sync::Cache<Arc<str>, Arc<str>>,
}

impl Default for Shares {
    fn default() -> Self {
        Self {
            workspaces: quick_cache::sync::Cache::new(Self::CAPACITY),
            access: quick_cache::sync::Cache::new(Self::CAPACITY),
            names: quick_cache::sync::Cache::new(Self::CAPACITY),
        }
    }
}

impl Shares {
    /// Distinct workspaces, access lists and names, kept at most.
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
        let read = AccessLists::new(
            std::mem::take(&mut key.ip_allowlist),
            std::mem::take(&mut key.scopes),
            std::mem::take(&mut key.roles),
        );
        if let Some(kept) = self.access.get(&read) {
            return kept;
        }
        let shared = Arc::new(read);
        self.access.insert(shared.clone(), shared.clone());
        shared
    }

    /// A key's environment or creator.
    pub(crate) fn name(&self, read: String) -> Arc<str> {
        if let Some(kept) = self.names.get(read.as_str()) {
            return kept;
        }
        let shared: Arc<str> = Arc::from(read);
        self.names.insert(shared.clone(), shared.clone());
        shared
    }
}
