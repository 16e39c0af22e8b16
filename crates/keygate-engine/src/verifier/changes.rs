//! Hearing other nodes' changes, so that a key revoked anywhere stops
//! verifying here within about a second.
//!
//! Every change committed to a shared store is announced (see
//! `keygate_store::changes`); this node drops what it cached of the changed
//! key, or everything on a workspace change. A node that cannot hear (the
//! feed is reconnecting) re-reads cached keys after `cache.ttl_unheard`
//! instead of `cache.ttl`, and drops its whole cache when it hears again.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use keygate_store::{Change, FeedEvent};

use super::Verifier;

const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// Whether this node hears the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hearing {
    /// The store serves one node; the writer evicts its own cache.
    NotNeeded,
    Listening,
    /// Not connected (starting, or the store is unreachable).
    NotListening,
}

impl Hearing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotNeeded => "not_needed",
            Self::Listening => "listening",
            Self::NotListening => "not_listening",
        }
    }
}

/// [`Hearing`] shared between the listener task and the verify path.
#[derive(Debug)]
pub(crate) struct HearingState(AtomicU8);

impl HearingState {
    /// A node starts as if alone; [`Verifier::run_change_listener`] says
    /// otherwise as soon as its store has a feed.
    pub fn new() -> Self {
        Self(AtomicU8::new(Hearing::NotNeeded as u8))
    }

    pub fn get(&self) -> Hearing {
        Self::decode(self.0.load(Ordering::Acquire))
    }

    /// Sets the state and returns the one before.
    pub fn set(&self, hearing: Hearing) -> Hearing {
        Self::decode(self.0.swap(hearing as u8, Ordering::AcqRel))
    }

    fn decode(value: u8) -> Hearing {
        match value {
            x if x == Hearing::NotNeeded as u8 => Hearing::NotNeeded,
            x if x == Hearing::Listening as u8 => Hearing::Listening,
            _ => Hearing::NotListening,
        }
    }
}

impl Verifier {
    /// Follows the store's change feed until `shutdown` resolves. Returns at
    /// once for a single-node store.
    pub(crate) async fn run_change_listener(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut feed = match self.context.store().change_feed().await {
            Ok(Some(feed)) => {
                self.hearing.set(Hearing::NotListening);
                feed
            }
            Ok(None) => {
                self.hearing.set(Hearing::NotNeeded);
                return;
            }
            Err(err) => {
                self.hearing.set(Hearing::NotListening);
                tracing::error!(error = %err, "cannot follow other nodes' changes; cached keys are re-read after cache.ttl_unheard");
                return;
            }
        };
        let mut retry = FIRST_RETRY;
        loop {
            let event = tokio::select! {
                event = feed.next() => event,
                () = &mut shutdown => return,
            };
            match event {
                Ok(FeedEvent::Connected) => {
                    // Whatever was announced while not listening is lost: start clean.
                    self.forget_all_keys();
                    self.hearing.set(Hearing::Listening);
                    self.context.store_health().succeeded();
                    retry = FIRST_RETRY;
                    tracing::info!("listening to other nodes' changes");
                }
                Ok(FeedEvent::Changed(Change::Key(hash))) => self.forget_key(&hash),
                Ok(FeedEvent::Changed(Change::Receipt(id))) => self.confirm_receipt(id),
                Ok(FeedEvent::Changed(Change::Workspace(_)) | FeedEvent::Unreadable) => self.forget_all_keys(),
                Err(err) => {
                    if self.hearing.set(Hearing::NotListening) == Hearing::Listening {
                        tracing::warn!(error = %err, "stopped hearing other nodes' changes; reconnecting");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = &mut shutdown => return,
                    }
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// Everything announced before receipt `id` has been applied here (the
    /// feed keeps commit order): says so in the store, off the listener, so
    /// that the next change is not held up by the write.
    fn confirm_receipt(&self, id: String) {
        let store = self.context.store().clone();
        let node = self.context.node_id().to_owned();
        let now = self.context.now();
        tokio::spawn(async move {
            if let Err(err) = store.confirm_receipt(&id, &node, now).await {
                tracing::warn!(error = %err, receipt = %id, "receipt not confirmed");
            }
        });
    }

    pub(crate) fn hearing(&self) -> Hearing {
        self.hearing.get()
    }
}
