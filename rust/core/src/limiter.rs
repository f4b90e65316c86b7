//! The limiter: a validated quota, a clock, and the sharded budget that enforces it.

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, Nanos, NANOS_PER_SEC};
use crate::error::{Error, Result};
use crate::gcra::{self, GcraShard, Settlement};
use crate::quota::{Algorithm, Quota};
use crate::reservation::{Book, Entry, Lookup, State};
use crate::shard::{Outcome, Shard, ShardSet};
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

/// Requests served per shard and how far the busiest shard is above the mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    pub distribution: Vec<u64>,
    /// `(max - mean) / mean`; 0 when nothing was served yet.
    pub imbalance_ratio: f64,
    pub most_loaded: usize,
    pub least_loaded: usize,
}

impl Balance {
    /// Shards are called balanced while the busiest is within this fraction of the mean.
    pub const THRESHOLD: f64 = 0.3;

    fn of(distribution: Vec<u64>) -> Self {
        let total: u64 = distribution.iter().sum();
        let mean = total as f64 / distribution.len() as f64;
        let (mut most, mut least) = (0, 0);
        for (i, &served) in distribution.iter().enumerate() {
            if served > distribution[most] {
                most = i;
            }
            if served < distribution[least] {
                least = i;
            }
        }
        let imbalance_ratio = if total == 0 {
            0.0
        } else {
            (distribution[most] as f64 - mean) / mean
        };
        Self {
            distribution,
            imbalance_ratio,
            most_loaded: most,
            least_loaded: least,
        }
    }

    pub fn balanced(&self) -> bool {
        self.imbalance_ratio <= Self::THRESHOLD
    }
}

/// A sharded rate limiter over one shared budget (SPEC `scope="global"`).
///
/// The algorithm and the shard count are fixed for the limiter's life; rate, period and
/// burst can change at run time ([`RateLimiter::set_quota`]).
pub struct RateLimiter {
    clock: Clock,
    hasher: ahash::RandomState,
    tuning: CachePadded<Tuning>,
    budget: Budget,
    /// The current quota; its lock also makes re-ratings take turns.
    quota: Mutex<Quota>,
    book: Mutex<Book>,
}

/// Runs `$body` with `$set` bound to the limiter's shard set, whichever algorithm it is.
macro_rules! on_set {
    ($budget:expr, $set:ident => $body:expr) => {
        match $budget {
            Budget::TokenBucket($set) => $body,
            Budget::SlidingWindow($set) => $body,
        }
    };
}

/// Tokens held for a slot (see [`RateLimiter::reserve`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Opaque; valid only with the limiter that issued it.
    pub id: String,
    pub count: u64,
    pub shard: usize,
    /// Times on the limiter's clock.
    pub reserved_at: Nanos,
    pub execute_at: Nanos,
    pub expires_at: Nanos,
}

/// The answer to a reservation request.
#[derive(Debug, Clone, PartialEq)]
pub enum Booking {
    Reserved(Reservation),
    /// `exceeds_capacity`, or `max_wait_exceeded` with the wait the slot would have needed.
    Refused(Decision),
}

/// How long reservations live and how many a limiter keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReservationPolicy {
    /// Seconds after its slot during which a reservation can be executed or cancelled.
    pub ttl: f64,
    /// Reservations kept at once (pending, held, and done but not yet expired).
    pub max: usize,
}

impl Default for ReservationPolicy {
    fn default() -> Self {
        Self {
            ttl: 60.0,
            max: 10_000,
        }
    }
}

/// Executing this much before the slot still counts as on time (timers wake early).
const EXECUTE_TOLERANCE: Nanos = 2_000_000;

/// What every decision reads, on one read-mostly cache line.
#[derive(Debug)]
struct Tuning {
    /// Even while stable; odd while the limiter is being re-rated or reset. A decision that
    /// saw it change decides again, so nothing is ever admitted under a half-applied quota.
    version: AtomicU64,
    /// Units of budget one token costs (ticks for the token bucket, 1 for the window).
    unit: AtomicU64,
    /// Units the whole budget holds.
    capacity: AtomicU64,
    /// Reservations waiting for their slot: while any is, others queue behind them.
    pending: AtomicU64,
    /// Odd while a re-rating or reset rewrites the shards: a take that overlapped one must
    /// stay charged rather than be given back into a state that may already count it.
    retunes: AtomicU64,
}

// One per limiter, so the size difference costs nothing; boxing would add a pointer chase.
#[allow(clippy::large_enum_variant)]
enum Budget {
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
        if count == 0 {
            return Err(Error::invalid_count(&count));
        }
        loop {
            let version = self.tuning.version.load(Ordering::SeqCst);
            if version & 1 == 0 {
                let now = self.clock.now();
                let decided = if self.tuning.pending.load(Ordering::SeqCst) > 0 {
                    self.behind_the_queue(now, hash, count)
                } else {
                    let retunes = self.tuning.retunes.load(Ordering::SeqCst);
                    on_set!(&self.budget, set => self.decide(set, (version, retunes), now, hash, count))
                };
                if let Some(decision) = decided {
                    return Ok(decision);
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
    ) -> Option<Decision> {
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
        let (allowed, reason, shard, retry_after) = match outcome {
            Some(Outcome::Admitted { shard, .. }) => (true, None, shard, None),
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
        Some(Decision {
            allowed,
            reason,
            shard,
            retry_after,
            at: now,
        })
    }

    /// Waits its turn: takes the next slot in the reservation queue (refused at once if that
    /// is more than `max_wait` seconds away, or if `count` exceeds the burst), sleeps on the
    /// limiter's clock until then, at most `slice` nanoseconds at a time, asking
    /// `keep_waiting` between slices, and is admitted. When `keep_waiting` says stop, the
    /// reservation is cancelled (its tokens go back) and the result is `None`. Returns the
    /// decision and the seconds waited.
    pub fn acquire_blocking(
        &self,
        hash: u64,
        count: u64,
        max_wait: f64,
        slice: Nanos,
        mut keep_waiting: impl FnMut() -> bool,
    ) -> Result<Option<(Decision, f64)>> {
        let start = self.clock.now();
        let now = self.try_acquire_hashed(hash, count)?;
        if now.reason != Some(Refusal::RateLimited) {
            return Ok(Some((now, 0.0)));
        }
        let reservation = match self.reserve_turn(hash, count, max_wait)? {
            Booking::Refused(decision) => return Ok(Some((decision, 0.0))),
            Booking::Reserved(reservation) => reservation,
        };
        loop {
            let now = self.clock.now();
            if reservation.execute_at > now {
                self.clock.sleep((reservation.execute_at - now).min(slice));
                if !keep_waiting() {
                    self.cancel_reservation(&reservation.id);
                    return Ok(None);
                }
                continue;
            }
            let decision = self.execute_reservation(&reservation.id);
            let waited = (self.clock.now() - start) as f64 / NANOS_PER_SEC;
            return Ok(Some((decision, waited)));
        }
    }

    /// A decision while reservations wait: due ones take their slots first; if any is still
    /// waiting, the request queues behind them and is told when the queue will have passed.
    /// `None` when the queue has drained and the request can be decided as usual.
    fn behind_the_queue(&self, now: Nanos, hash: u64, count: u64) -> Option<Decision> {
        let mut book = self.book.lock();
        on_set!(&self.budget, set => self.take_due(set, &mut book, now));
        if book.pending() == 0 {
            return None;
        }
        let unit = self.tuning.unit.load(Ordering::Relaxed);
        let shard = on_set!(&self.budget, set => set.candidates(hash).0);
        let units = count
            .checked_mul(unit)
            .filter(|&units| units <= self.tuning.capacity.load(Ordering::Relaxed));
        let (reason, retry_after) = match units {
            None => (Refusal::ExceedsCapacity, None),
            Some(units) => {
                let slot = on_set!(&self.budget, set => plan_slot(set, &book, unit, now, units));
                (
                    Refusal::RateLimited,
                    Some((slot - now) as f64 / NANOS_PER_SEC),
                )
            }
        };
        Some(Decision {
            allowed: false,
            reason: Some(reason),
            shard,
            retry_after,
            at: now,
        })
    }

    /// Lets due reservations take their tokens before the budget is read, so that a reading
    /// does not depend on what was called before it.
    fn settle_reservations(&self) {
        if self.tuning.pending.load(Ordering::SeqCst) > 0 {
            let mut book = self.book.lock();
            let now = self.clock.now();
            on_set!(&self.budget, set => self.take_due(set, &mut book, now));
        }
    }

    /// Pending reservations whose slot has come take their tokens, in order, at their slots.
    fn take_due<S: Shard>(&self, set: &ShardSet<S>, book: &mut Book, horizon: Nanos) {
        let unit = self.tuning.unit.load(Ordering::Relaxed);
        for (index, entry) in book.due(horizon) {
            let units = entry.count * unit;
            // The queue kept everyone else off these tokens, so the take succeeds.
            let _ = set.acquire(&self.clock, entry.slot, entry.hash, units);
            book.hold(index, units);
        }
        self.tuning
            .pending
            .store(book.pending() as u64, Ordering::SeqCst);
    }

    /// Holds `count` tokens for the key with `hash` at the next slot in the queue: now, when
    /// the budget has them and nobody is queued, else when the budget will have them after
    /// every reservation before it. Refused, without holding anything, when `count` exceeds
    /// the burst or the slot is more than `max_wait` seconds away (`retry_after` says how far).
    /// Fails when the limiter already keeps `max_reservations`.
    pub fn reserve(&self, hash: u64, count: u64, max_wait: f64) -> Result<Booking> {
        self.book(hash, count, max_wait, false)
    }

    /// A turn in the queue for a waiting `acquire`: a reservation that leaves the book as
    /// soon as it is executed or cancelled (its id is nobody else's business).
    pub fn reserve_turn(&self, hash: u64, count: u64, max_wait: f64) -> Result<Booking> {
        self.book(hash, count, max_wait, true)
    }

    fn book(&self, hash: u64, count: u64, max_wait: f64, turn: bool) -> Result<Booking> {
        if count == 0 {
            return Err(Error::invalid_count(&count));
        }
        let mut book = self.book.lock();
        // Odd while booking: a decision racing this one gives its take back and queues.
        self.tuning.version.fetch_add(1, Ordering::SeqCst);
        let booked = on_set!(&self.budget, set => {
            self.book_on(set, &mut book, hash, count, max_wait, turn)
        });
        self.tuning
            .pending
            .store(book.pending() as u64, Ordering::SeqCst);
        self.tuning.version.fetch_add(1, Ordering::SeqCst);
        booked
    }

    fn book_on<S: Shard>(
        &self,
        set: &ShardSet<S>,
        book: &mut Book,
        hash: u64,
        count: u64,
        max_wait: f64,
        turn: bool,
    ) -> Result<Booking> {
        let now = self.clock.now();
        self.take_due(set, book, now);
        book.purge(now);
        let unit = self.tuning.unit.load(Ordering::Relaxed);
        let (first, _) = set.candidates(hash);
        let refused = |reason, retry_after| {
            Ok(Booking::Refused(Decision {
                allowed: false,
                reason: Some(reason),
                shard: first,
                retry_after,
                at: now,
            }))
        };
        let Some(units) = count
            .checked_mul(unit)
            .filter(|&units| units <= self.tuning.capacity.load(Ordering::Relaxed))
        else {
            return refused(Refusal::ExceedsCapacity, None);
        };
        if book.len() >= book.max {
            return Err(Error::TooManyReservations { max: book.max });
        }
        let admitted_now = match book.pending() {
            0 => match set.acquire(&self.clock, now, hash, units) {
                Outcome::Admitted { shard, .. } => Some(shard),
                Outcome::Refused { .. } => None,
            },
            _ => None,
        };
        let (slot, shard, state) = match admitted_now {
            Some(shard) => (now, shard, State::Held),
            None => (
                plan_slot(set, book, unit, now, units),
                first,
                State::Pending,
            ),
        };
        let wait = (slot - now) as f64 / NANOS_PER_SEC;
        if wait > max_wait {
            return refused(Refusal::MaxWaitExceeded, Some(wait));
        }
        let expires = slot.saturating_add(book.ttl);
        let id = book.push(Entry {
            slot,
            expires,
            units: if state == State::Held { units } else { 0 },
            count,
            hash,
            state,
            turn,
        });
        Ok(Booking::Reserved(Reservation {
            id,
            count,
            shard,
            reserved_at: now,
            execute_at: slot,
            expires_at: expires,
        }))
    }

    /// Admits a reservation once its slot has come (2 ms early is on time): charges nothing
    /// more. Refused with `not_ready` (and `retry_after`) before the slot, and with `expired`,
    /// `cancelled`, `already_executed` or `unknown_reservation` otherwise.
    pub fn execute_reservation(&self, id: &str) -> Decision {
        let mut book = self.book.lock();
        let now = self.clock.now();
        on_set!(&self.budget, set => {
            self.take_due(set, &mut book, now + EXECUTE_TOLERANCE);
        });
        book.purge(now);
        let refused = |reason, shard, retry_after| Decision {
            allowed: false,
            reason: Some(reason),
            shard,
            retry_after,
            at: now,
        };
        let index = match book.lookup(id) {
            Lookup::Found(index) => index,
            Lookup::Gone => return refused(Refusal::Expired, 0, None),
            Lookup::Unknown => return refused(Refusal::UnknownReservation, 0, None),
        };
        let entry = *book.entry(index);
        let shard = on_set!(&self.budget, set => set.candidates(entry.hash).0);
        match entry.state {
            State::Executed => refused(Refusal::AlreadyExecuted, shard, None),
            State::Cancelled => refused(Refusal::Cancelled, shard, None),
            _ if entry.expires <= now => refused(Refusal::Expired, shard, None),
            State::Pending => refused(
                Refusal::NotReady,
                shard,
                Some((entry.slot.saturating_sub(now)) as f64 / NANOS_PER_SEC),
            ),
            State::Held => {
                book.finish(index, State::Executed);
                Decision {
                    allowed: true,
                    reason: None,
                    shard,
                    retry_after: None,
                    at: now,
                }
            }
        }
    }

    /// Gives a reservation's tokens back and forgets it; `true` once, `false` for an id that
    /// is unknown, expired, executed or already cancelled. A pending reservation never took
    /// its tokens; a held one returns what time has not already refilled. Later slots stay.
    pub fn cancel_reservation(&self, id: &str) -> bool {
        let mut book = self.book.lock();
        let now = self.clock.now();
        on_set!(&self.budget, set => self.take_due(set, &mut book, now));
        book.purge(now);
        let Lookup::Found(index) = book.lookup(id) else {
            return false;
        };
        let entry = *book.entry(index);
        if entry.expires <= now {
            return false;
        }
        match entry.state {
            State::Pending => {}
            State::Held => on_set!(&self.budget, set => refund(set, now, entry)),
            State::Executed | State::Cancelled => return false,
        }
        book.cancel(index, now);
        self.tuning
            .pending
            .store(book.pending() as u64, Ordering::SeqCst);
        true
    }

    /// Reservations kept now (pending, held, and done but not yet expired).
    pub fn reservations(&self) -> usize {
        let mut book = self.book.lock();
        let now = self.clock.now();
        on_set!(&self.budget, set => self.take_due(set, &mut book, now));
        book.purge(now);
        book.len()
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

/// Returns a held reservation's tokens.
fn refund<S: Shard>(set: &ShardSet<S>, now: Nanos, entry: Entry) {
    S::refund(set, now, entry.slot, entry.units);
}

/// The next slot for `units` after the book's queue.
fn plan_slot<S: Shard>(set: &ShardSet<S>, book: &Book, unit: u64, now: Nanos, units: u64) -> Nanos {
    let mut queue = book.queue().map(|(slot, count)| (slot, count * unit));
    S::plan(set, now, &mut queue, units)
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
    fn balance_is_defined_before_any_traffic() {
        let balance = Balance::of(vec![0, 0, 0, 0]);
        assert_eq!(balance.imbalance_ratio, 0.0);
        assert!(balance.balanced());
        assert_eq!((balance.most_loaded, balance.least_loaded), (0, 0));
    }

    #[test]
    fn balance_measures_the_busiest_shard_against_the_mean() {
        let balance = Balance::of(vec![10, 30, 20, 20]);
        assert_eq!(balance.imbalance_ratio, 0.5);
        assert!(!balance.balanced());
        assert_eq!((balance.most_loaded, balance.least_loaded), (1, 0));
    }

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
