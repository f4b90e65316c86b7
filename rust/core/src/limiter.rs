//! The limiter: a validated quota, a clock, and the sharded budget that enforces it.

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::balance::Balance;
use crate::booking::ReservationPolicy;
use crate::clock::{Clock, Nanos, NANOS_PER_SEC};
use crate::error::{Error, Result};
use crate::gcra::{self, GcraShard, Settlement};
use crate::quota::{Algorithm, Quota};
use crate::reservation::Book;
use crate::shard::{Outcome, Shard, ShardSet, Undo};
use crate::sliding_window::WindowShard;

/// Keys longer than this (in bytes; in characters from Python) are refused: a key is an
/// identifier, and an unbounded one is almost always a bug.
pub const MAX_KEY_LEN: usize = 1024;

/// A token must cost at least this many ticks of one shard's credit, which bounds the
/// rounding of the rate to 0.01 %.
const MIN_TOKEN_COST: u64 = 10_000;
/// A shard's credit fits comfortably in a u64 of ticks (4.5 years of burst).
const MAX_CAPACITY_TICKS: u64 = 1 << 62;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not enough tokens now; `retry_after` says when there will be.
    RateLimited,
    /// More tokens than the burst: it can never succeed.
    ExceedsCapacity,
    /// Admission would need a longer wait than the caller allows.
    MaxWaitExceeded,
    /// A reservation executed before its slot.
    NotReady,
    /// A reservation past its time to live.
    Expired,
    /// A reservation that was cancelled.
    Cancelled,
    /// A reservation executed before: it admits once.
    AlreadyExecuted,
    /// An id this limiter never issued.
    UnknownReservation,
}

impl Refusal {
    /// The stable short code of SPEC §2.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::ExceedsCapacity => "exceeds_capacity",
            Refusal::MaxWaitExceeded => "max_wait_exceeded",
            Refusal::NotReady => "not_ready",
            Refusal::Expired => "expired",
            Refusal::Cancelled => "cancelled",
            Refusal::AlreadyExecuted => "already_executed",
            Refusal::UnknownReservation => "unknown_reservation",
        }
    }
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Option<Refusal>,
    /// The shard that served (or would have served) the request.
    pub shard: usize,
    /// Seconds until the request could be admitted; `None` when admitted or never.
    pub retry_after: Option<f64>,
    /// When it was decided, on the limiter's clock. The tokens left in the whole budget
    /// are [`RateLimiter::remaining_at`] this time: reading every shard is left to callers
    /// who want it, so that a decision touches only the shards that serve it.
    pub at: Nanos,
}

/// Checks a wait bound in seconds: `None` or infinity waits as long as it takes.
pub fn validate_max_wait(max_wait: Option<f64>) -> Result<f64> {
    match max_wait {
        None => Ok(f64::INFINITY),
        Some(wait) if wait >= 0.0 => Ok(wait),
        Some(wait) => Err(Error::invalid(
            "max_wait",
            format!("must be None or a number of seconds >= 0, got {wait}"),
        )),
    }
}

/// A sharded rate limiter over one shared budget (SPEC `scope="global"`).
///
/// The algorithm and the shard count are fixed for the limiter's life; rate, period and
/// burst can change at run time ([`RateLimiter::set_quota`]).
pub struct RateLimiter {
    pub(crate) clock: Clock,
    hasher: ahash::RandomState,
    pub(crate) tuning: CachePadded<Tuning>,
    pub(crate) budget: Budget,
    /// The current quota; its lock also makes re-ratings take turns.
    quota: Mutex<Quota>,
    pub(crate) book: Mutex<Book>,
}

/// Runs `$body` with `$set` bound to the limiter's shard set, whichever algorithm it is.
macro_rules! on_set {
    ($budget:expr, $set:ident => $body:expr) => {
        match $budget {
            $crate::limiter::Budget::TokenBucket($set) => $body,
            $crate::limiter::Budget::SlidingWindow($set) => $body,
        }
    };
}
pub(crate) use on_set;

/// An admission kept for undoing, with the limiter state it was made in.
pub(crate) struct Taken {
    retunes: u64,
    shard: usize,
    undo: Undo,
}

/// What every decision reads, on one read-mostly cache line.
#[derive(Debug)]
pub(crate) struct Tuning {
    /// Even while stable; odd while the limiter is being re-rated or reset. A decision that
    /// saw it change decides again, so nothing is ever admitted under a half-applied quota.
    pub(crate) version: AtomicU64,
    /// Units of budget one token costs (ticks for the token bucket, 1 for the window).
    pub(crate) unit: AtomicU64,
    /// Units the whole budget holds.
    pub(crate) capacity: AtomicU64,
    /// Reservations waiting for their slot: while any is, others queue behind them.
    pub(crate) pending: AtomicU64,
    /// Odd while a re-rating or reset rewrites the shards: a take that overlapped one must
    /// stay charged rather than be given back into a state that may already count it.
    pub(crate) retunes: AtomicU64,
}

// One per limiter, so the size difference costs nothing; boxing would add a pointer chase.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Budget {
    TokenBucket(ShardSet<GcraShard>),
    SlidingWindow(ShardSet<WindowShard>),
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", &self.quota())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(quota: Quota, clock: Clock) -> Result<Self> {
        let params = Params::new(&quota)?;
        let n = quota.shards;
        let now = clock.now();
        let budget = match quota.algorithm {
            // Every shard starts full: its TAT is now.
            Algorithm::TokenBucket => Budget::TokenBucket(ShardSet::new(
                (0..n).map(|i| GcraShard::new(params.share(n, i), gcra::ticks(now))),
                Settlement::new(gcra::ticks(now)),
            )),
            Algorithm::SlidingWindow => Budget::SlidingWindow(ShardSet::new(
                (0..n)
                    .map(|i| WindowShard::new(params.share(n, i), params.window, VecDeque::new())),
                (),
            )),
        };
        Self {
            clock,
            hasher: ahash::RandomState::new(),
            tuning: CachePadded::new(Tuning {
                version: AtomicU64::new(0),
                unit: AtomicU64::new(params.unit),
                capacity: AtomicU64::new(params.capacity),
                pending: AtomicU64::new(0),
                retunes: AtomicU64::new(0),
            }),
            budget,
            quota: Mutex::new(quota),
            book: Mutex::new(Book::new(0, 0)),
        }
        .with_reservations(ReservationPolicy::default())
    }

    /// Sets how long reservations live and how many are kept.
    pub fn with_reservations(self, policy: ReservationPolicy) -> Result<Self> {
        if !(policy.ttl.is_finite() && policy.ttl > 0.0) {
            return Err(Error::invalid(
                "reservation_ttl",
                format!("must be a finite number of seconds > 0, got {}", policy.ttl),
            ));
        }
        if policy.max == 0 {
            return Err(Error::invalid(
                "max_reservations",
                "must be an int >= 1, got 0".to_string(),
            ));
        }
        *self.book.lock() = Book::new((policy.ttl * NANOS_PER_SEC).ceil() as Nanos, policy.max);
        Ok(self)
    }

    pub fn quota(&self) -> Quota {
        *self.quota.lock()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Hashes a key as [`RateLimiter::try_acquire`] does.
    pub fn hash_key(&self, key: &str) -> Result<u64> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::invalid(
                "key",
                format!("must be at most {MAX_KEY_LEN} bytes, got {}", key.len()),
            ));
        }
        Ok(self.hasher.hash_one(key))
    }

    /// The two shards that serve a key's hash first (the fuller one serves).
    pub fn candidates(&self, hash: u64) -> (usize, usize) {
        match &self.budget {
            Budget::TokenBucket(set) => set.candidates(hash),
            Budget::SlidingWindow(set) => set.candidates(hash),
        }
    }

    /// Takes `count` tokens for `key` now, or refuses without waiting.
    pub fn try_acquire(&self, key: &str, count: u64) -> Result<Decision> {
        self.try_acquire_hashed(self.hash_key(key)?, count)
    }

    /// [`RateLimiter::try_acquire`] for a key already hashed (the binding uses Python's
    /// cached string hash). Only shard choice depends on the hash.
    #[inline]
    pub fn try_acquire_hashed(&self, hash: u64, count: u64) -> Result<Decision> {
        self.take(hash, count).map(|(decision, _)| decision)
    }

    /// Takes from every limiter or from none: each part is `(limiter, key hash, count)`.
    /// Returns `Ok` with every admission, or `Err` with the index and the refusal of the
    /// first part that refused, after giving back what the parts before it took.
    pub fn try_acquire_all(
        parts: &[(&RateLimiter, u64, u64)],
    ) -> Result<std::result::Result<Vec<Decision>, (usize, Decision)>> {
        let mut admitted: Vec<(Decision, Option<Taken>)> = Vec::with_capacity(parts.len());
        for (index, &(limiter, hash, count)) in parts.iter().enumerate() {
            let (decision, taken) = limiter.take(hash, count)?;
            if !decision.allowed {
                for (&(earlier, ..), (_, taken)) in parts.iter().zip(admitted).rev() {
                    if let Some(taken) = taken {
                        earlier.undo(taken);
                    }
                }
                return Ok(Err((index, decision)));
            }
            admitted.push((decision, taken));
        }
        Ok(Ok(admitted
            .into_iter()
            .map(|(decision, _)| decision)
            .collect()))
    }

    /// A decision that keeps what it took, so that it can be undone.
    fn take(&self, hash: u64, count: u64) -> Result<(Decision, Option<Taken>)> {
        if count == 0 {
            return Err(Error::invalid_count(&count));
        }
        loop {
            let version = self.tuning.version.load(Ordering::SeqCst);
            if version & 1 == 0 {
                let now = self.clock.now();
                let decided = if self.tuning.pending.load(Ordering::SeqCst) > 0 {
                    self.behind_the_queue(now, hash, count).map(|d| (d, None))
                } else {
                    let retunes = self.tuning.retunes.load(Ordering::SeqCst);
                    on_set!(&self.budget, set => {
                        self.decide(set, (version, retunes), now, hash, count)
                            .map(|(d, undo)| (d, undo.map(|(shard, undo)| Taken { retunes, shard, undo })))
                    })
                };
                if let Some(decided) = decided {
                    return Ok(decided);
                }
            }
            std::thread::yield_now();
        }
    }

    /// One decision under `version`; `None` when a reservation was booked or the limiter
    /// re-rated meanwhile, and the caller decides again. A take that raced a booking is given
    /// back (the booking's plan may not have seen it); one that raced a re-rating stays
    /// charged (the new shard state may already count it): never over, at worst a token lost.
    #[inline]
    fn decide<S: Shard>(
        &self,
        set: &ShardSet<S>,
        (version, retunes): (u64, u64),
        now: Nanos,
        hash: u64,
        count: u64,
    ) -> Option<(Decision, Option<(usize, Undo)>)> {
        let unit = self.tuning.unit.load(Ordering::Relaxed);
        let units = count
            .checked_mul(unit)
            .filter(|&units| units <= self.tuning.capacity.load(Ordering::Relaxed));
        let outcome = units.map(|units| set.acquire(&self.clock, now, hash, units));
        // Booking and re-rating bump the version before they read any shard: a take that
        // still sees the old version is in what they read.
        if self.tuning.version.load(Ordering::SeqCst) != version {
            if let Some(Outcome::Admitted { shard, taken }) = outcome {
                if retunes & 1 == 0 && self.tuning.retunes.load(Ordering::SeqCst) == retunes {
                    set.give_back(taken, &self.clock);
                }
                set.count_served(shard, false);
            }
            return None;
        }
        let mut undo = None;
        let (allowed, reason, shard, retry_after) = match outcome {
            Some(Outcome::Admitted { shard, taken }) => {
                undo = Some((shard, S::undo(taken)));
                (true, None, shard, None)
            }
            Some(Outcome::Refused { shard, wait }) => (
                false,
                Some(Refusal::RateLimited),
                shard,
                Some(wait as f64 / NANOS_PER_SEC),
            ),
            None => (
                false,
                Some(Refusal::ExceedsCapacity),
                set.candidates(hash).0,
                None,
            ),
        };
        Some((
            Decision {
                allowed,
                reason,
                shard,
                retry_after,
                at: now,
            },
            undo,
        ))
    }

    /// Gives back an admission, unless the limiter was re-rated since (then the new state
    /// may already count it, and it stays charged: never over).
    fn undo(&self, taken: Taken) {
        let retunes = self.tuning.retunes.load(Ordering::SeqCst);
        if retunes != taken.retunes || retunes & 1 == 1 {
            return;
        }
        match (taken.undo, &self.budget) {
            (Undo::Bucket(t), Budget::TokenBucket(set)) => {
                set.give_back(t, &self.clock);
                set.count_served(taken.shard, false);
            }
            (Undo::Window(t), Budget::SlidingWindow(set)) => {
                set.give_back(t, &self.clock);
                set.count_served(taken.shard, false);
            }
            _ => unreachable!("a take is undone on the limiter that made it"),
        }
    }

    /// Tokens available in the whole budget now, without taking any.
    pub fn peek(&self) -> f64 {
        self.remaining_at(self.clock.now())
    }

    /// Tokens the whole budget holds at `at` (a decision's time, or now), counting every
    /// take made so far.
    pub fn remaining_at(&self, at: Nanos) -> f64 {
        self.settle_reservations();
        let units = match &self.budget {
            Budget::TokenBucket(set) => set.available(at),
            Budget::SlidingWindow(set) => set.available(at),
        };
        units as f64 / self.tuning.unit.load(Ordering::Relaxed) as f64
    }

    /// Tokens available in each shard now.
    pub fn shard_tokens(&self) -> Vec<f64> {
        self.settle_reservations();
        let now = self.clock.now();
        let unit = self.tuning.unit.load(Ordering::Relaxed) as f64;
        match &self.budget {
            Budget::TokenBucket(set) => per_shard(set, now, unit),
            Budget::SlidingWindow(set) => per_shard(set, now, unit),
        }
    }

    /// Requests admitted by each shard since the limiter was made or reset.
    pub fn served(&self) -> Vec<u64> {
        match &self.budget {
            Budget::TokenBucket(set) => set.served(),
            Budget::SlidingWindow(set) => set.served(),
        }
    }

    /// How evenly the shards have served requests (see [`Balance`]).
    pub fn balance(&self) -> Balance {
        Balance::of(self.served())
    }

    /// Changes rate, period and burst at run time. The tokens available now carry over
    /// (capped at the new burst), and so does the sliding window's log. The algorithm and
    /// the shard count cannot change.
    pub fn set_quota(&self, quota: Quota) -> Result<()> {
        let mut current = self.quota.lock();
        if quota.algorithm != current.algorithm {
            return Err(Error::invalid(
                "algorithm",
                format!(
                    "is fixed for the limiter's life ({:?}), got {:?}",
                    current.algorithm.name(),
                    quota.algorithm.name()
                ),
            ));
        }
        if quota.shards != current.shards {
            return Err(Error::invalid(
                "shards",
                format!(
                    "is fixed for the limiter's life ({}), got {}",
                    current.shards, quota.shards
                ),
            ));
        }
        let params = Params::new(&quota)?;
        self.retune(params, false);
        *current = quota;
        Ok(())
    }

    /// Refills the budget, clears the per-shard counters and forgets every reservation.
    pub fn reset(&self) {
        let quota = self.quota.lock();
        let params = Params::new(&quota).expect("the current quota is valid");
        let mut book = self.book.lock();
        *book = Book::new(book.ttl, book.max);
        self.tuning.pending.store(0, Ordering::SeqCst);
        self.retune(params, true);
    }

    /// Applies `params` to every shard, carrying the current fill over unless `refill`.
    /// The caller holds the quota lock, so re-ratings take turns.
    fn retune(&self, params: Params, refill: bool) {
        self.tuning.retunes.fetch_add(1, Ordering::SeqCst);
        self.tuning.version.fetch_add(1, Ordering::SeqCst);
        let now = self.clock.now();
        match &self.budget {
            Budget::TokenBucket(set) => {
                let old_unit = self.tuning.unit.load(Ordering::Relaxed);
                let tokens = set.available(now) as f64 / old_unit as f64;
                let fill = if refill {
                    1.0
                } else {
                    (tokens * params.unit as f64 / params.capacity as f64).min(1.0)
                };
                let n = set.len();
                let now = gcra::ticks(now);
                for i in 0..n {
                    let capacity = params.share(n, i);
                    let missing = if fill >= 1.0 {
                        0
                    } else {
                        capacity.saturating_sub((capacity as f64 * fill) as u64)
                    };
                    set.shard(i).reconfigure(capacity, now + missing);
                }
                let earliest = (0..n).map(|i| set.shard(i).tat()).min().unwrap_or(now);
                set.shared.restart(now, earliest);
                if refill {
                    set.clear_served();
                }
            }
            Budget::SlidingWindow(set) => {
                let n = set.len();
                // Lock every shard, in order, for one consistent view of the log.
                let mut logs: Vec<_> = (0..n).map(|i| set.shard(i).lock()).collect();
                let mut live: Vec<Nanos> = Vec::new();
                for log in logs.iter_mut() {
                    if !refill {
                        live.extend(
                            log.entries
                                .iter()
                                .filter(|&&ts| ts.saturating_add(log.window) >= now),
                        );
                    }
                    log.entries.clear();
                }
                live.sort_unstable();
                let keep = live.len().min(params.capacity as usize);
                for (i, log) in logs.iter_mut().enumerate() {
                    log.capacity = params.share(n, i);
                    log.window = params.window;
                }
                // Newest first into whichever shard has room, round robin; each shard's
                // log stays sorted because it receives a subsequence.
                let mut shard = 0;
                for &stamp in live[live.len() - keep..].iter().rev() {
                    while logs[shard].entries.len() as u64 >= logs[shard].capacity {
                        shard = (shard + 1) % n;
                    }
                    logs[shard].entries.push_front(stamp);
                    shard = (shard + 1) % n;
                }
                drop(logs);
                if refill {
                    set.clear_served();
                }
            }
        }
        self.tuning.unit.store(params.unit, Ordering::SeqCst);
        self.tuning
            .capacity
            .store(params.capacity, Ordering::SeqCst);
        self.tuning.version.fetch_add(1, Ordering::SeqCst);
    }
}

fn per_shard<S: Shard>(set: &ShardSet<S>, now: Nanos, unit: f64) -> Vec<f64> {
    (0..set.len())
        .map(|i| set.shard(i).available(now) as f64 / unit)
        .collect()
}

/// Derived, checked sizes of a quota's shards.
#[derive(Clone, Copy)]
struct Params {
    /// Units one token costs in one shard.
    unit: u64,
    /// Units the whole budget holds.
    capacity: u64,
    window: Nanos,
}

impl Params {
    fn new(quota: &Quota) -> Result<Self> {
        let n = quota.shards as f64;
        let window = (quota.period * NANOS_PER_SEC).ceil();
        match quota.algorithm {
            Algorithm::TokenBucket => {
                // Each shard refills one tick per tick, so a token costs N * period / rate
                // there; rounding up keeps the rate at or under the quota.
                let unit = (n * window * gcra::TICKS_PER_NANO as f64 / quota.rate).ceil();
                if unit < MIN_TOKEN_COST as f64 {
                    let max =
                        n * gcra::TICKS_PER_NANO as f64 * NANOS_PER_SEC / MIN_TOKEN_COST as f64;
                    return Err(Error::invalid(
                        "rate",
                        format!(
                            "at most {max} tokens per second with shards={} (clock \
                             resolution), got {}",
                            quota.shards,
                            quota.rate / quota.period
                        ),
                    ));
                }
                let unit = unit as u64;
                // Whole tokens in integers, so that a burst of B is exactly B tokens however
                // large the product; only a fractional part goes through floats.
                let whole = (quota.burst.trunc() as u128) * unit as u128;
                let capacity = whole + (quota.burst.fract() * unit as f64).floor() as u128;
                if capacity >= MAX_CAPACITY_TICKS as u128 {
                    return Err(Error::invalid(
                        "burst_size",
                        format!(
                            "burst_size * shards * period / rate must be under four years, \
                             got {} s",
                            quota.burst * n * quota.period / quota.rate
                        ),
                    ));
                }
                Ok(Self {
                    unit,
                    capacity: capacity as u64,
                    window: window as Nanos,
                })
            }
            Algorithm::SlidingWindow => Ok(Self {
                unit: 1,
                capacity: quota.burst as u64,
                window: window as Nanos,
            }),
        }
    }

    /// Shard `i`'s share of the capacity: equal shares, the remainder to the first shards,
    /// so that the shares add up to the whole budget exactly.
    fn share(&self, shards: usize, i: usize) -> u64 {
        let n = shards as u64;
        self.capacity / n + u64::from((i as u64) < self.capacity % n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_wait_must_be_a_non_negative_number() {
        assert_eq!(validate_max_wait(None), Ok(f64::INFINITY));
        assert_eq!(validate_max_wait(Some(0.0)), Ok(0.0));
        for bad in [-1.0, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(
                validate_max_wait(Some(bad)).unwrap_err().argument(),
                "max_wait"
            );
        }
    }
}
