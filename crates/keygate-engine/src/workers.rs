//! The background loops of a node, in one place. Each runs until the node's
//! one stop token is cancelled; the usage flusher then flushes once more.
//!
//! Where they run is the server's choice (crates/keygate-server/src/app.rs):
//! the change listener on the main runtime, since a revocation must be heard
//! at once; the usage flusher and the event workers on the low-priority
//! background thread, so they never starve the data plane.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::webhooks::WebhookSender;
use crate::Engine;

impl Engine {
    /// Follows other nodes' changes until `stop`; returns at once for a
    /// single-node store.
    pub async fn run_change_listener(self: Arc<Self>, stop: CancellationToken) {
        self.verifier().run_change_listener(stop.cancelled()).await;
    }

    /// Heartbeats in the list of nodes until `stop`, then leaves it.
    pub async fn run_heartbeats(self: Arc<Self>, addresses: crate::nodes::NodeAddresses, stop: CancellationToken) {
        self.nodes().run_heartbeats(addresses, stop).await;
    }

    /// The usage flusher and the event workers, until `stop`.
    pub async fn run_background(
        self: Arc<Self>,
        flush_interval: Duration,
        sender: Arc<dyn WebhookSender>,
        stop: CancellationToken,
    ) {
        tokio::join!(
            self.run_usage_flusher(flush_interval, &stop),
            self.run_event_workers(sender.as_ref(), &stop),
        );
    }

    /// Flushes usage every `interval` until `stop`, then once more. The
    /// first flush is one interval after start: there is nothing to write
    /// before, and a first tick that a busy CPU delays (this runs at low
    /// priority) would otherwise land at an unforeseeable moment.
    async fn run_usage_flusher(&self, interval: Duration, stop: &CancellationToken) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.flush_usage().await,
                () = stop.cancelled() => break,
            }
        }
        self.flush_usage().await;
    }

    /// Usage counts and credit balances' spending, written together.
    async fn flush_usage(&self) {
        self.usage().flush_logged().await;
        self.verifier().flush_credits().await;
    }

    /// Scans for events every `events.scan_interval` and delivers webhooks
    /// every `webhooks.poll_interval`, until `stop`.
    async fn run_event_workers(&self, sender: &dyn WebhookSender, stop: &CancellationToken) {
        if !self.events().settings().enabled {
            return stop.cancelled().await;
        }
        // The first round one interval after start, like every later one.
        let poll = self.deliveries().settings().poll_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let scan_interval = self.events().settings().scan_interval;
        let mut last_scan: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => break,
            }
            if last_scan.is_none_or(|at| at.elapsed() >= scan_interval) {
                last_scan = Some(Instant::now());
                if let Err(err) = self.events().scan().await {
                    tracing::warn!(error = %err, "the event scan failed; will retry");
                }
            }
            match self.deliveries().deliver(sender).await {
                Ok(round) if round.attempts() > 0 => tracing::debug!(?round, "webhooks sent"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "webhook delivery round failed; will retry"),
            }
        }
    }
}
