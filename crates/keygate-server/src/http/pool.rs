//! A route's targets: which one a request goes to, and which are left out
//! after failing (issue 16). Shared by every gateway thread, so a target one
//! thread has found dead is left out by all of them.
//!
//! Passive health: `eject_after` connect failures or timeouts in a row leave
//! a target out for `eject_for`; then one request at a time may try it, and
//! its success brings the target back. Requests never wait for a target to
//! come back: with every target out, the answer is an immediate 502.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, Uri};
use smallvec::SmallVec;

use crate::config::{Balance, Route};
use crate::http::upstream_conn::Target;

/// One target of a route and what is known of its health.
pub struct TargetState {
    pub target: Target,
    /// The target's URL: its path is the base the request path is appended to.
    pub url: Uri,
    /// Its `Host`, unless the route preserves the client's.
    pub host: Option<HeaderValue>,
    failures: AtomicU32,
    /// Milliseconds since the pool's origin until which the target is left
    /// out; 0 while it is in.
    out_until_ms: AtomicU64,
    /// A request is trying the target after its time out.
    probing: AtomicBool,
    in_flight: AtomicUsize,
    /// For `/metrics`: requests answered, and failures (not reset by a success).
    answered: AtomicU64,
    failed: AtomicU64,
}

impl TargetState {
    /// In rotation: not left out after failures.
    fn is_in(&self) -> bool {
        self.out_until_ms.load(Ordering::Acquire) == 0
    }

    /// What `/metrics` shows of this target.
    pub fn counts(&self) -> (bool, u64, u64) {
        (
            self.is_in(),
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The targets of one route.
pub struct Targets {
    targets: Box<[TargetState]>,
    balance: Balance,
    next: AtomicUsize,
    eject_after: u32,
    eject_for: Duration,
    origin: Instant,
}

/// Which targets a request has tried already (at most two: one retry).
pub type Tried = SmallVec<[usize; 2]>;

impl Targets {
    /// `first_id` numbers the targets across routes, so each client
    /// connection's idle connections are kept per target.
    pub fn new(route: &Route, first_id: usize) -> Self {
        let targets = route
            .upstreams
            .iter()
            .enumerate()
            .map(|(offset, url)| {
                let authority = url.authority();
                let address =
                    authority.map_or_else(String::new, |a| format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)));
                TargetState {
                    target: Target {
                        id: first_id + offset,
                        address: Arc::from(address),
                        connect_timeout: route.connect_timeout,
                    },
                    host: authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
                    url: url.clone(),
                    failures: AtomicU32::new(0),
                    out_until_ms: AtomicU64::new(0),
                    probing: AtomicBool::new(false),
                    in_flight: AtomicUsize::new(0),
                    answered: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                }
            })
            .collect();
        Self {
            targets,
            balance: route.balance,
            next: AtomicUsize::new(0),
            eject_after: route.eject_after,
            eject_for: route.eject_for,
            origin: Instant::now(),
        }
    }

    /// How many targets the route has (at least one).
    pub fn count(&self) -> usize {
        self.targets.len()
    }

    pub fn get(&self, index: usize) -> &TargetState {
        &self.targets[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &TargetState> {
        self.targets.iter()
    }

    /// How many targets are in (not left out) now, for `/readyz`.
    pub fn healthy(&self) -> usize {
        self.targets.iter().filter(|t| t.is_in()).count()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The target for the next attempt, not one of `tried`: in turn (or the
    /// least busy), skipping targets that are out, except that one whose
    /// time out is over takes one request to prove itself. `None`: every
    /// target is out.
    pub fn choose(&self, tried: &Tried) -> Option<usize> {
        let n = self.targets.len();
        if n == 1 {
            // Most routes: no turn to take, nothing to order.
            return (tried.is_empty() && self.admits(&self.targets[0])).then_some(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: SmallVec<[usize; 8]> = (0..n)
            .map(|offset| (start + offset) % n)
            .filter(|i| !tried.contains(i))
            .collect();
        if self.balance == Balance::LeastConnections {
            // Stable: targets equally busy keep their turn.
            order.sort_by_key(|&i| self.targets[i].in_flight.load(Ordering::Relaxed));
        }
        order.into_iter().find(|&i| self.admits(&self.targets[i]))
    }

    /// In, or out with its time over and no other request trying it (this
    /// one then does). The clock is read only for a target that is out.
    fn admits(&self, target: &TargetState) -> bool {
        match target.out_until_ms.load(Ordering::Acquire) {
            0 => true,
            until if until <= self.now_ms() => target
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
            _ => false,
        }
    }

    /// The target answered: it is in, with a clean record.
    /// Every answered request ends here, so the usual case (nothing to
    /// clear) only reads.
    pub fn succeeded(&self, index: usize) {
        let target = &self.targets[index];
        target.answered.fetch_add(1, Ordering::Relaxed);
        Self::bring_back(target);
    }

    /// An active health check passed: in, as after an answered request (but
    /// not counted as one).
    pub fn check_passed(&self, index: usize) {
        Self::bring_back(&self.targets[index]);
    }

    /// An active health check failed: out until a check passes. No request
    /// tries it in between: the checks decide.
    pub fn check_failed(&self, index: usize) {
        let target = &self.targets[index];
        target.probing.store(false, Ordering::Release);
        if target.out_until_ms.swap(u64::MAX, Ordering::AcqRel) != u64::MAX {
            tracing::warn!(target = %target.target.address, "upstream target failed its health check; left out");
        }
    }

    fn bring_back(target: &TargetState) {
        if target.failures.load(Ordering::Acquire) != 0 {
            target.failures.store(0, Ordering::Release);
        }
        if target.out_until_ms.load(Ordering::Acquire) != 0 && target.out_until_ms.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!(target = %target.target.address, "upstream target is back");
        }
        if target.probing.load(Ordering::Acquire) {
            target.probing.store(false, Ordering::Release);
        }
    }

    /// The target refused a connection or timed out: out after
    /// `eject_after` in a row, or at once if it was being tried again.
    pub fn failed(&self, index: usize) {
        let target = &self.targets[index];
        target.failed.fetch_add(1, Ordering::Relaxed);
        let failures = target.failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let was_probe = target.probing.swap(false, Ordering::AcqRel);
        if failures >= self.eject_after || was_probe {
            let until = self
                .now_ms()
                .saturating_add(u64::try_from(self.eject_for.as_millis()).unwrap_or(u64::MAX));
            if target.out_until_ms.swap(until, Ordering::AcqRel) == 0 {
                tracing::warn!(target = %target.target.address, failures, eject_for = ?self.eject_for, "upstream target left out");
            }
        }
    }

    /// Counts a request in flight on a target until the guard is dropped
    /// (with the response body), for `least_connections`.
    pub fn in_flight(self: &Arc<Self>, index: usize) -> Option<InFlight> {
        (self.balance == Balance::LeastConnections).then(|| {
            self.targets[index].in_flight.fetch_add(1, Ordering::Relaxed);
            InFlight {
                targets: self.clone(),
                index,
            }
        })
    }
}

pub struct InFlight {
    targets: Arc<Targets>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.targets.targets[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: usize, balance: Balance, eject_for: Duration) -> Arc<Targets> {
        let route = Route {
            path: "/api".into(),
            methods: vec![],
            upstreams: (0..n)
                .map(|i| format!("http://10.0.0.{i}:9000").parse().unwrap())
                .collect(),
            balance,
            eject_after: 3,
            eject_for,
            resources: vec!["default".into()],
            cost: 1,
            cost_header: None,
            scopes: vec![],
            auth: true,
            strip_prefix: false,
            preserve_host: false,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_body_bytes: 1024,
            forward_key: false,
            health_check: None,
        };
        Arc::new(Targets::new(&route, 0))
    }

    fn choose(targets: &Targets) -> Option<usize> {
        targets.choose(&Tried::new())
    }

    #[test]
    fn a_failed_health_check_leaves_a_target_out_until_a_check_passes() {
        let targets = targets(2, Balance::RoundRobin, Duration::ZERO);
        targets.check_failed(1);
        assert_eq!(targets.healthy(), 1);
        // eject_for is over at once, but no request may try it: the checks decide.
        assert!((0..6).all(|_| choose(&targets) == Some(0)));
        targets.check_failed(1);
        targets.check_passed(1);
        assert_eq!(targets.healthy(), 2);
        assert!((0..4).any(|_| choose(&targets) == Some(1)));
        assert_eq!(targets.get(1).counts(), (true, 0, 0), "checks are not requests");
    }

    #[test]
    fn round_robin_takes_each_target_in_turn() {
        let targets = targets(3, Balance::RoundRobin, Duration::from_secs(10));
        let picked: Vec<_> = (0..6).map(|_| choose(&targets).unwrap()).collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_retry_goes_to_another_target() {
        let targets = targets(2, Balance::RoundRobin, Duration::from_secs(10));
        let first = choose(&targets).unwrap();
        let tried: Tried = [first].into_iter().collect();
        assert_eq!(targets.choose(&tried), Some(1 - first));
        let both: Tried = [0, 1].into_iter().collect();
        assert_eq!(targets.choose(&both), None);
    }

    #[test]
    fn a_target_is_left_out_after_three_failures_in_a_row() {
        let targets = targets(2, Balance::RoundRobin, Duration::from_secs(10));
        targets.failed(1);
        targets.failed(1);
        targets.succeeded(1);
        targets.failed(1);
        targets.failed(1);
        assert_eq!(targets.healthy(), 2, "a success in between resets the count");
        targets.failed(1);
        assert_eq!(targets.healthy(), 1);
        assert!((0..6).all(|_| choose(&targets) == Some(0)));
    }

    #[test]
    fn after_its_time_out_one_request_tries_the_target_again() {
        let targets = targets(1, Balance::RoundRobin, Duration::ZERO);
        for _ in 0..3 {
            targets.failed(0);
        }
        assert_eq!(targets.healthy(), 0);
        assert_eq!(choose(&targets), Some(0), "the probe");
        assert_eq!(choose(&targets), None, "one probe at a time");
        targets.failed(0);
        assert_eq!(choose(&targets), Some(0), "a failed probe is out for eject_for, here 0");
        targets.succeeded(0);
        assert_eq!(targets.healthy(), 1);
        assert_eq!(choose(&targets), Some(0));
        assert_eq!(choose(&targets), Some(0));
    }

    #[test]
    fn every_target_out_is_none_at_once() {
        let targets = targets(2, Balance::RoundRobin, Duration::from_secs(10));
        for _ in 0..3 {
            targets.failed(0);
            targets.failed(1);
        }
        assert_eq!(choose(&targets), None);
    }

    #[test]
    fn least_connections_prefers_the_least_busy_target() {
        let targets = targets(3, Balance::LeastConnections, Duration::from_secs(10));
        let _a = targets.in_flight(0);
        let _b = targets.in_flight(0);
        let _c = targets.in_flight(1);
        assert_eq!(choose(&targets), Some(2));
        let _d = targets.in_flight(2);
        let _e = targets.in_flight(2);
        assert_eq!(choose(&targets), Some(1));
        drop((_a, _b));
        assert_eq!(choose(&targets), Some(0));
    }
}
