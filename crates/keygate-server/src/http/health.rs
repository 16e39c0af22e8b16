//! Active health checks (issue 16): for a route with
//! `health_check = { path, interval }`, every target gets `GET path` each
//! interval on a connection of its own. A 2xx or 3xx answer within the
//! route's `timeout` keeps or brings the target in; anything else (refused,
//! timed out, another status) leaves it out until a check passes
//! (crates/keygate-server/src/http/pool.rs). Passive health keeps working
//! beside it, so a target that dies between two checks is left out by the
//! requests that find it dead.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use tokio::task::JoinSet;

use crate::config::HealthCheck;
use crate::http::pool::{TargetState, Targets};
use crate::http::upstream_conn::connect;
use crate::reload::LiveConfig;

/// Checks every route that asks for it until `stop` resolves; after a
/// config reload, the routes of the new config.
pub async fn run(config: LiveConfig, stop: impl Future<Output = ()>) {
    let mut reloads = config.subscribe();
    tokio::pin!(stop);
    loop {
        let mut checks = JoinSet::new();
        for upstream in config.snapshot().upstreams.iter() {
            if let Some(check) = &upstream.route.health_check {
                checks.spawn(check_route(
                    upstream.targets.clone(),
                    check.clone(),
                    upstream.route.timeout,
                ));
            }
        }
        tokio::select! {
            () = &mut stop => return,
            changed = reloads.changed() => {
                checks.abort_all();
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn check_route(targets: Arc<Targets>, check: HealthCheck, timeout: Duration) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // All targets at once: a slow one does not delay the others' checks.
        let mut probes = JoinSet::new();
        for index in 0..targets.count() {
            let (targets, path) = (targets.clone(), check.path.clone());
            probes.spawn(async move {
                if passes(targets.get(index), &path, timeout).await {
                    targets.check_passed(index);
                } else {
                    targets.check_failed(index);
                }
            });
        }
        while probes.join_next().await.is_some() {}
    }
}

/// `GET path` on a new connection: a 2xx or 3xx answer within `timeout`.
async fn passes(target: &TargetState, path: &str, timeout: Duration) -> bool {
    let probe = async {
        let mut sender = connect(&target.target).await.ok()?;
        let mut request = Request::get(path).body(Body::empty()).ok()?;
        if let Some(host) = &target.host {
            request.headers_mut().insert(header::HOST, host.clone());
        }
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        Some(status.is_success() || status.is_redirection())
    };
    let passed = tokio::time::timeout(timeout, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
    if !passed {
        tracing::debug!(target = %target.target.address, path, "health check failed");
    }
    passed
}
