//! The plans of the config, which a config reload replaces whole
//! (crates/keygate-server/src/reload.rs). Requests read them through one
//! atomic pointer; each cached key's limit checks remember the generation
//! they were computed for, so a reload's new limits apply from the next
//! request on, without emptying the key cache.

use std::collections::BTreeMap;

use keygate_core::limits::Plan;

/// Plans by name and the default plan, as one value.
#[derive(Debug, Clone, Default)]
pub struct PlanBook {
    plans: BTreeMap<String, Plan>,
    /// The plan of workspaces that name none.
    default_plan: Option<String>,
    /// Bumped by each replacement; memoized limit checks of an older one are recomputed.
    generation: u64,
}

impl PlanBook {
    pub fn new(plans: BTreeMap<String, Plan>, default_plan: Option<String>) -> Self {
        Self {
            plans,
            default_plan,
            generation: 0,
        }
    }

    /// The plan a workspace is on: its own, else the default.
    pub fn of(&self, workspace_plan: Option<&String>) -> Option<&Plan> {
        let name = workspace_plan.or(self.default_plan.as_ref())?;
        self.plans.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.plans.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plans.keys().map(String::as_str)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// `next` with a generation after this one's.
    pub(crate) fn succeeded_by(&self, next: PlanBook) -> PlanBook {
        PlanBook {
            generation: self.generation + 1,
            ..next
        }
    }
}
