//! The seam: what a limiter asks of whatever holds its budget.
//!
//! The in-memory stores implement it (`memory::limiter`, one budget per algorithm;
//! `memory::keyed`, one budget per key); a Redis backend will too. Every call returns a
//! fully computed answer, so nothing above it reads the budget again later. Every call that
//! asks the store returns a `Result`: a store that does not answer is
//! [`crate::Error::Unavailable`]. The shard views (candidates, per-shard tokens and counts,
//! shares) are the in-memory stores' own.

use std::any::Any;
use std::fmt;

use crate::balance::Shares;
use crate::clock::Clock;
use crate::decision::{Booking, Decision, Holder, ReservationCounts};
use crate::error::Result;
use crate::quota::Quota;

/// An admission that can still be given back (see [`RateLimiter::try_acquire_all`]).
pub struct Undo(pub(crate) Box<dyn Any + Send>);

impl fmt::Debug for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Undo")
    }
}

/// A rate limiter's budget, wherever it lives.
pub trait Backend: Send + Sync + fmt::Debug {
    fn clock(&self) -> &Clock;
    fn quota(&self) -> Quota;
    /// The two shards that serve a key's hash first.
    fn candidates(&self, hash: u64) -> (usize, usize);
    /// Takes `count` tokens for the key with `hash` now, or refuses without waiting; the
    /// decision tells the tokens left right after it.
    fn try_acquire_hashed(&self, hash: u64, count: u64) -> Result<Decision> {
        self.take(hash, count).map(|(decision, _)| decision)
    }
    /// [`Backend::try_acquire_hashed`] without the tokens left (`remaining_units` is
    /// `None`): the cheapest decision, for callers that only need allowed or not.
    fn check_hashed(&self, hash: u64, count: u64) -> Result<Decision> {
        self.try_acquire_hashed(hash, count)
    }
    /// [`Backend::try_acquire_hashed`], keeping what it took so that it can be undone.
    fn take(&self, hash: u64, count: u64) -> Result<(Decision, Option<Undo>)>;
    fn undo(&self, undo: Undo) -> Result<()>;
    /// Books `count` tokens for a caller's reservation or a waiter's turn.
    fn book(&self, hash: u64, count: u64, max_wait: f64, holder: Holder) -> Result<Booking>;
    fn execute_reservation(&self, id: &str) -> Result<Decision>;
    fn cancel_reservation(&self, id: &str) -> Result<bool>;
    /// Live bookings.
    fn reservations(&self) -> Result<usize> {
        self.reservation_counts().map(|counts| counts.active)
    }
    fn reservation_counts(&self) -> Result<ReservationCounts>;
    /// Tokens a `try_acquire` for the key with `hash` could take now.
    fn peek(&self, hash: u64) -> Result<f64>;
    fn shard_tokens(&self) -> Vec<f64>;
    /// Admissions served by each shard since the limiter was made or reset.
    fn served(&self) -> Vec<u64>;
    /// Of those, admissions gathered from every shard (the slow path).
    fn gathered(&self) -> u64;
    /// Each shard's share of the rate and the burst.
    fn shares(&self) -> Shares;
    /// Keys with a budget of their own (0 where keys share one).
    fn keys(&self) -> Result<usize> {
        Ok(0)
    }
    fn set_quota(&self, quota: Quota) -> Result<()>;
    /// Admits nothing from the budget the key with `hash` draws on for `seconds`, then
    /// refills from empty (what an upstream's `Retry-After` asks).
    fn back_off(&self, hash: u64, seconds: f64) -> Result<()>;
    fn reset(&self) -> Result<()>;
    /// Resets the budget the key with `hash` draws on (all of it where keys share one).
    fn reset_key(&self, _hash: u64) -> Result<()> {
        self.reset()
    }
}
