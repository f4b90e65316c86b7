//! Reservations and waiting turns on a limiter: booking slots in the FIFO book
//! (`reservation.rs`), executing and cancelling them, and the blocking `acquire` built on them.

use std::sync::atomic::Ordering;

use crate::clock::{Nanos, NANOS_PER_SEC};
use crate::error::{Error, Result};
use crate::limiter::{on_set, Decision, RateLimiter, Refusal};
use crate::reservation::{Book, Entry, Lookup, State};
use crate::shard::{Outcome, Shard, ShardSet};

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

impl RateLimiter {
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
    pub(crate) fn behind_the_queue(&self, now: Nanos, hash: u64, count: u64) -> Option<Decision> {
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
    pub(crate) fn settle_reservations(&self) {
        if self.tuning.pending.load(Ordering::SeqCst) > 0 {
            let mut book = self.book.lock();
            let now = self.clock.now();
            on_set!(&self.budget, set => self.take_due(set, &mut book, now));
        }
    }

    /// Pending reservations whose slot has come take their tokens, in order, at their slots.
    pub(crate) fn take_due<S: Shard>(&self, set: &ShardSet<S>, book: &mut Book, horizon: Nanos) {
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
