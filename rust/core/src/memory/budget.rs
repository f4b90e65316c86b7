//! The seam between the limiter and an algorithm.
//!
//! A budget is the algorithm's state and every rule that reads it: deciding a take, giving
//! one back, how long until units are free, the slot a new booking gets, re-rating, and the
//! escrow of held reservations. The limiter (`limiter.rs`) owns the gate and the book and
//! knows no algorithm; each algorithm (`gcra.rs`, `sliding_window.rs`) knows no booking.
//!
//! Promises: a booking not yet due holds nothing; it is a promise at its slot, and a take
//! now is admitted only if every promise is still met at its slot (`chance`, `reserved`).
//!
//! Escrow: at its slot a promise's tokens are held: `hold(u)` moves `u` units out of the
//! free credit so that they neither refill nor can be taken; `release(u)` gives them back
//! to the free credit (a cancel, a lapse, an expiry); `consume(u)` spends them (an
//! execution: that is its admission). So the free credit plus the escrow never exceeds the
//! burst, and I1 holds over admission times by construction.

use crate::clock::{Clock, Nanos};
use crate::memory::hot::HotKeys;
use crate::memory::params::Params;
use crate::memory::rebalance::Demand;
use crate::memory::schedule::Schedule;
use crate::memory::weights::{Weights, EVEN};

/// The outcome of one take.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome<R> {
    Admitted {
        shard: usize,
        receipt: R,
    },
    /// Not enough now; `wait` nanoseconds until there will be.
    Refused {
        shard: usize,
        wait: Nanos,
    },
}

/// What the book has promised and not yet delivered: the bookings not yet held, with
/// their marks (`Budget::mark`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Promises<'a> {
    pub(crate) schedule: &'a Schedule,
}

impl Promises<'_> {
    /// Units booked and not yet held (funded).
    pub(crate) fn queued_units(&self) -> u64 {
        self.schedule.all().units as u64
    }

    /// The latest slot of a booking not yet held (0 with none).
    pub(crate) fn tail(&self) -> Nanos {
        self.schedule.last_slot()
    }
}

/// An algorithm's state and rules (see the module comment).
pub(crate) trait Budget: Send + Sync + Sized {
    /// What a take records so that it can be given back exactly.
    type Receipt: Send + 'static;

    fn new(params: &Params, now: Nanos) -> Self;
    /// The key's two candidate shards (the fuller one serves, where shards are real).
    fn candidates(&self, hash: u64) -> (usize, usize);
    /// Takes `units` now or refuses without writing; lock-free where the algorithm can be.
    fn acquire(&self, clock: &Clock, now: Nanos, hash: u64, units: u64) -> Outcome<Self::Receipt>;
    /// Undoes a take that turned out not to be an admission.
    fn give_back(&self, receipt: Self::Receipt, clock: &Clock);
    /// Units free now (escrow excluded).
    fn available(&self, now: Nanos) -> u64;
    /// Units free now in each shard.
    fn shard_available(&self, now: Nanos) -> Vec<u64>;
    /// Admissions served by each shard since the limiter was made or reset.
    fn served(&self) -> Vec<u64>;
    /// Of those, admissions served by gathering from every shard (the slow path).
    fn gathered(&self) -> u64;
    fn count_served(&self, shard: usize, served: bool);
    fn clear_served(&self);
    /// Nanoseconds from `now` until `units` are free, if nothing else is taken.
    fn wait(&self, now: Nanos, params: &Params, units: u64) -> Nanos;
    /// The earliest slot at which `units` can be held after every promise, if everyone
    /// ahead executes on time.
    fn slot(&self, now: Nanos, params: &Params, promises: &Promises<'_>, units: u64) -> Nanos;
    /// A slot as the budget measures refill, for the schedule (`schedule.rs`).
    fn mark(&self, at: Nanos) -> i128;
    /// Units that must stay free now so that every promise is met at its slot.
    fn reserved(&self, now: Nanos, params: &Params, promises: &Promises<'_>) -> u64;
    /// Nanoseconds from `now` until a take of `units` could be admitted beside every
    /// promise, if everyone executes on time (0: now).
    fn chance(&self, now: Nanos, params: &Params, promises: &Promises<'_>, units: u64) -> Nanos;
    /// Moves `units` (no more than are free) from the free credit into escrow.
    fn hold(&self, now: Nanos, params: &Params, units: u64);
    /// Gives `units` of escrow back to the free credit.
    fn release(&self, now: Nanos, params: &Params, units: u64);
    /// Spends `units` of escrow at `now` for the key with `hash`; returns the serving shard.
    fn consume(&self, now: Nanos, params: &Params, hash: u64, units: u64) -> usize;
    /// Takes every free unit and owes the refill until `until`: nothing is free before it
    /// (escrow aside, which stays held), and the budget refills from empty after it.
    fn owe_until(&self, now: Nanos, until: Nanos);
    /// Applies `new` params, keeping the free credit (capped) unless `refill`, with
    /// `held` tokens in escrow. Runs while no take can start.
    fn retune(&self, now: Nanos, old: &Params, new: &Params, held: u64, refill: bool);
    /// Each shard's weight in the refill and its part of `params.capacity`: even unless
    /// rebalancing moved them.
    fn parts(&self, params: &Params) -> (Vec<u64>, Vec<u64>) {
        let n = params.shards;
        (vec![EVEN; n], Weights::even(n).split(params.capacity))
    }

    /// Rebalancing, where the algorithm's shards hold shares of the budget (the token
    /// bucket; the sliding window is one log): the shares now and the shards keys spread
    /// over, `None` where there are none to move. Asking starts the count of demand.
    fn rebalanced(&self) -> Option<(Weights, usize)> {
        None
    }
    /// The shards keys spread over (all of them, unless rebalancing moved them).
    fn active(&self) -> usize {
        self.served().len()
    }
    /// What the shards were asked so far, once `rebalanced` was asked.
    fn demand(&self) -> Demand {
        Demand::default()
    }
    /// Moves the shares toward `weights` at `now`, keys then spreading over the first
    /// `active` shards; whether it did. Runs while no take can start.
    fn reweigh(&self, _now: Nanos, _weights: Weights, _active: usize) -> bool {
        false
    }
    /// The hot keys, once `rebalanced` was asked (see `hot.rs`).
    fn hot_keys(&self) -> Option<&HotKeys> {
        None
    }
    /// Counts a sampled decision of `count` tokens for `hash` in the hot-key sketch.
    fn observe(&self, hash: u64, count: u64) {
        if let Some(hot) = self.hot_keys() {
            hot.observe(hash, count);
        }
    }
}
