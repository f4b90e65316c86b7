//! The seam: what a limiter asks of whatever holds its budget.
//!
//! The in-memory stores implement it (`memory::limiter`, one budget per algorithm;
//! `memory::keyed`, one budget per key), and so does a store shared by processes (the
//! `ratelimit-redis` crate), which a [`crate::RateLimiter`] takes through
//! [`crate::RateLimiter::with_backend`]. Every call returns a fully computed answer, so
//! nothing above it reads the budget again later. Every call that asks the store returns a
//! `Result`: a store that does not answer is [`crate::Error::Unavailable`]. A key crosses
//! as its text, with a hash beside it for the in-memory stores ([`Key`]). Shards are the
//! in-memory stores' own: their views are an optional capability ([`ShardViews`]).

use std::any::Any;
use std::fmt;

use crate::balance::Shares;
use crate::clock::Clock;
use crate::decision::{Booking, Decision, Holder, ReservationCounts};
use crate::error::{Error, Result};
use crate::quota::{Quota, Scope};

/// A key as it crosses the seam: its text, by which a shared store names the budget, and a
/// hash of it, by which the in-memory stores find the budget and its shards (any hash the
/// caller keeps: the binding passes Python's own, cached in the string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key<'a> {
    text: Option<&'a str>,
    hash: u64,
}

impl<'a> Key<'a> {
    pub fn new(text: &'a str, hash: u64) -> Self {
        Key {
            text: Some(text),
            hash,
        }
    }

    /// A key known by its hash alone, which only an in-memory store can serve: a shared
    /// store refuses it ([`Key::text`]).
    pub fn hashed(hash: u64) -> Key<'static> {
        Key { text: None, hash }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The key's text; a key known by its hash alone is refused by name.
    pub fn text(&self) -> Result<&'a str> {
        self.text.ok_or_else(|| {
            Error::invalid(
                "key",
                "is needed as text by a budget shared through a store (a hash names no key \
                 there)",
            )
        })
    }
}

/// A key known by its hash alone (see [`Key::hashed`]).
impl From<u64> for Key<'static> {
    fn from(hash: u64) -> Self {
        Key::hashed(hash)
    }
}

/// An admission that can still be given back (see [`crate::RateLimiter::try_acquire_all`]).
pub struct Undo(pub(crate) Box<dyn Any + Send>);

impl fmt::Debug for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Undo")
    }
}

/// A rate limiter's budget, wherever it lives.
pub trait Backend: Send + Sync + fmt::Debug {
    /// The time source waits are measured on: the process's monotonic clock, or a test's
    /// manual one. A shared store decides on its server's clock and answers in durations.
    fn clock(&self) -> &Clock;
    fn quota(&self) -> Quota;
    /// Whether keys share the budget or each has its own.
    fn scope(&self) -> Scope;
    /// Takes `count` tokens for `key` now, or refuses without waiting; the decision tells
    /// the tokens left right after it.
    fn try_acquire(&self, key: Key<'_>, count: u64) -> Result<Decision> {
        self.take(key, count).map(|(decision, _)| decision)
    }
    /// [`Backend::try_acquire`] without the tokens left (`remaining_units` is `None`): the
    /// cheapest decision, for callers that only need allowed or not.
    fn check(&self, key: Key<'_>, count: u64) -> Result<Decision> {
        self.try_acquire(key, count)
    }
    /// [`Backend::try_acquire`], keeping what it took so that it can be undone (`None`: a
    /// take the store cannot give back, which then stays charged: never over).
    fn take(&self, key: Key<'_>, count: u64) -> Result<(Decision, Option<Undo>)>;
    fn undo(&self, undo: Undo) -> Result<()>;
    /// Books `count` tokens for a caller's reservation or a waiter's turn.
    fn book(&self, key: Key<'_>, count: u64, max_wait: f64, holder: Holder) -> Result<Booking>;
    fn execute_reservation(&self, id: &str) -> Result<Decision>;
    fn cancel_reservation(&self, id: &str) -> Result<bool>;
    /// Live bookings.
    fn reservations(&self) -> Result<usize> {
        self.reservation_counts().map(|counts| counts.active)
    }
    fn reservation_counts(&self) -> Result<ReservationCounts>;
    /// Tokens a `try_acquire` for `key` could take now.
    fn peek(&self, key: Key<'_>) -> Result<f64>;
    /// Keys with a budget of their own that the store keeps (0 where keys share one).
    fn keys(&self) -> Result<usize> {
        Ok(0)
    }
    fn set_quota(&self, quota: Quota) -> Result<()>;
    /// Admits nothing from the budget `key` draws on for `seconds`, then refills from
    /// empty (what an upstream's `Retry-After` asks).
    fn back_off(&self, key: Key<'_>, seconds: f64) -> Result<()>;
    fn reset(&self) -> Result<()>;
    /// Resets the budget `key` draws on (all of it where keys share one).
    fn reset_key(&self, _key: Key<'_>) -> Result<()> {
        self.reset()
    }
    /// The store's shards, where it has any (the in-memory stores).
    fn shard_views(&self) -> Option<&dyn ShardViews> {
        None
    }
}

/// What a store split into shards shows of them (for `get_status` and the balance report).
pub trait ShardViews {
    /// The two shards that serve a key's hash first.
    fn candidates(&self, hash: u64) -> (usize, usize);
    fn shard_tokens(&self) -> Vec<f64>;
    /// Admissions served by each shard since the limiter was made or reset.
    fn served(&self) -> Vec<u64>;
    /// Of those, admissions gathered from every shard (the slow path).
    fn gathered(&self) -> u64;
    /// Each shard's share of the rate and the burst.
    fn shares(&self) -> Shares;
}
