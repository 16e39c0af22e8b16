//! The queue that lets one Redis script call decide many requests
//! (redis.rs): at most one call in flight per node, and the requests that
//! arrive meanwhile wait for the next one.
//!
//! There is no task of its own. The request that finds no call in flight
//! makes it; when that call ends, the first request queued behind it makes
//! the next one, for itself and for those behind it. Each call is made by a
//! request that waits for it anyway.
//!
//! The right to make the next call is a value, [`Lead`], handed from request
//! to request. Dropping it hands the call on, wherever it is dropped: in the
//! task of a request whose client left half-way, or unread in the channel
//! to a request that went away just after it was sent. So no request that
//! goes away can leave the queue waiting for a call nobody makes.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::oneshot;

use crate::lease::Target;
use crate::{Charge, LimitCheck, LimiterError};
use keygate_core::ratelimit::Decision;

/// One request's limits, as [`crate::Limiter::check`] was given them.
#[derive(Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) checks: &'a [LimitCheck],
    pub(crate) cost: u64,
    pub(crate) charge: Charge,
    /// The block asked for (lease.rs): `cost` for a plain decision.
    pub(crate) want: u64,
    /// The bucket a block is charged to: the next one for a block reserved
    /// ahead (lease.rs), which only the keeper asks for, never a waiting request.
    pub(crate) target: Target,
}

/// A request that waits for the call in flight, and how it hears back.
pub(crate) struct Waiting {
    checks: Vec<LimitCheck>,
    cost: u64,
    charge: Charge,
    want: u64,
    turn: oneshot::Sender<Turn>,
}

impl Waiting {
    pub(crate) fn request(&self) -> Request<'_> {
        Request {
            checks: &self.checks,
            cost: self.cost,
            charge: self.charge,
            want: self.want,
            target: Target::Current,
        }
    }

    /// Tells this request its decision; it may have gone away meanwhile.
    pub(crate) fn answer(self, decided: Result<Decision, LimiterError>) {
        let _ = self.turn.send(Turn::Decided(decided));
    }
}

/// What a waiting request hears: its decision, or that it makes the next
/// call, for itself and for the requests that queued behind it.
pub(crate) enum Turn {
    Decided(Result<Decision, LimiterError>),
    Lead(Lead),
}

/// The right to make the next script call, with the requests it carries.
/// Dropped, it hands the call after it on ([`Coalescer::hand_over`]); the
/// requests it still carries then wait for that call.
pub(crate) struct Lead {
    /// `None` once given back to the queue unused ([`Lead::into_others`]).
    coalescer: Option<Arc<Coalescer>>,
    others: Vec<Waiting>,
}

impl Lead {
    fn new(coalescer: &Arc<Coalescer>, others: Vec<Waiting>) -> Self {
        Self {
            coalescer: Some(coalescer.clone()),
            others,
        }
    }

    /// The requests this call decides besides its maker's. Whoever takes
    /// them answers them; the lead still hands over when dropped.
    pub(crate) fn take_others(&mut self) -> Vec<Waiting> {
        std::mem::take(&mut self.others)
    }

    /// Its requests, for a lead that was never delivered: no hand-over, since
    /// the queue that tried to deliver it goes on by itself.
    fn into_others(mut self) -> Vec<Waiting> {
        self.coalescer = None;
        self.take_others()
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if let Some(coalescer) = self.coalescer.take() {
            coalescer.hand_over(self.take_others());
        }
    }
}

/// Requests per script call, so one call stays short.
const MAX_BATCH: usize = 128;

/// At most one script call in flight per node; the requests that arrive
/// meanwhile queue here.
#[derive(Default)]
pub(crate) struct Coalescer {
    state: Mutex<CoalescerState>,
}

#[derive(Default)]
struct CoalescerState {
    calling: bool,
    waiting: Vec<Waiting>,
}

impl CoalescerState {
    /// Puts requests back at the head of the queue, ahead of later arrivals.
    fn requeue_first(&mut self, first: Vec<Waiting>) {
        if !first.is_empty() {
            let later = std::mem::replace(&mut self.waiting, first);
            self.waiting.extend(later);
        }
    }
}

impl Coalescer {
    fn state(&self) -> MutexGuard<'_, CoalescerState> {
        self.state.lock()
    }

    /// `Ok`: no call is in flight, and the caller makes the next one.
    /// `Err`: the receiver of the caller's turn.
    pub(crate) fn join(this: &Arc<Self>, request: Request<'_>) -> Result<Lead, oneshot::Receiver<Turn>> {
        let mut state = this.state();
        if !state.calling {
            state.calling = true;
            return Ok(Lead::new(this, Vec::new()));
        }
        let (turn, heard) = oneshot::channel();
        state.waiting.push(Waiting {
            checks: request.checks.to_vec(),
            cost: request.cost,
            charge: request.charge,
            want: request.want,
            turn,
        });
        Err(heard)
    }

    /// After a call: the first request still waiting makes the next call,
    /// with up to `MAX_BATCH - 1` of those behind it; with none waiting,
    /// the next request to arrive does. `unserved` were carried by the lead
    /// that ended without deciding them; they go first.
    fn hand_over(self: Arc<Self>, unserved: Vec<Waiting>) {
        let mut state = self.state();
        state.requeue_first(unserved);
        while !state.waiting.is_empty() {
            let take = state.waiting.len().min(MAX_BATCH);
            let mut batch: Vec<Waiting> = state.waiting.drain(..take).collect();
            let leader = batch.remove(0);
            match leader.turn.send(Turn::Lead(Lead::new(&self, batch))) {
                // Sent: if that request goes away before reading it, the
                // lead is dropped with the channel and hands over from there.
                Ok(()) => return,
                // That request went away (its client, or its timeout): the
                // next one leads, and the rest wait as they were.
                Err(Turn::Lead(lead)) => state.requeue_first(lead.into_others()),
                Err(Turn::Decided(_)) => {}
            }
        }
        state.calling = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Request<'static> = Request {
        checks: &[],
        cost: 1,
        charge: Charge::Consume,
        want: 1,
        target: Target::Current,
    };

    fn leads(queue: &Arc<Coalescer>) -> Lead {
        match Coalescer::join(queue, NONE) {
            Ok(lead) => lead,
            Err(_) => panic!("a call is in flight: this request waits"),
        }
    }

    fn waits(queue: &Arc<Coalescer>) -> oneshot::Receiver<Turn> {
        match Coalescer::join(queue, NONE) {
            Ok(_) => panic!("no call in flight: this request leads"),
            Err(heard) => heard,
        }
    }

    fn lead_of(heard: &mut oneshot::Receiver<Turn>) -> Option<Lead> {
        match heard.try_recv() {
            Ok(Turn::Lead(lead)) => Some(lead),
            _ => None,
        }
    }

    #[test]
    fn the_first_request_calls_and_the_next_wait() {
        let queue = Arc::new(Coalescer::default());
        let lead = leads(&queue);
        let mut second = waits(&queue);
        let mut third = waits(&queue);
        drop(lead);
        let mut next = lead_of(&mut second).expect("the first one waiting leads");
        assert_eq!(next.take_others().len(), 1, "and carries the one behind it");
        assert!(third.try_recv().is_err(), "which hears nothing yet");
    }

    #[test]
    fn a_lead_sent_to_a_request_that_went_away_is_handed_on() {
        let queue = Arc::new(Coalescer::default());
        let lead = leads(&queue);
        let second = waits(&queue);
        let mut third = waits(&queue);
        drop(lead);
        // The lead reached `second`'s channel, and `second` leaves unread.
        drop(second);
        let mut next = lead_of(&mut third).expect("the request behind it leads instead");
        assert!(next.take_others().is_empty());
    }

    #[test]
    fn a_lead_that_never_reached_its_request_is_handed_on() {
        let queue = Arc::new(Coalescer::default());
        let lead = leads(&queue);
        drop(waits(&queue));
        let mut third = waits(&queue);
        drop(lead);
        assert!(lead_of(&mut third).is_some());
    }

    #[test]
    fn with_nobody_waiting_the_next_arrival_calls() {
        let queue = Arc::new(Coalescer::default());
        drop(leads(&queue));
        leads(&queue);
    }

    #[test]
    fn requests_a_dropped_lead_carried_wait_for_the_next_call() {
        let queue = Arc::new(Coalescer::default());
        let lead = leads(&queue);
        let second = waits(&queue);
        let mut third = waits(&queue);
        let mut fourth = waits(&queue);
        drop(lead);
        // `second` leaves with the lead and `third`, `fourth` unanswered.
        drop(second);
        let mut next = lead_of(&mut third).expect("third leads");
        assert_eq!(next.take_others().len(), 1, "carrying fourth");
        assert!(fourth.try_recv().is_err());
    }
}
