//! The admission model as pure transitions: one budget (a token bucket or a sliding window)
//! and the book of bookings, stepped one operation at a time by
//! [`Model::step`]`(state, now, op) -> (answer, state)`.
//!
//! It states DESIGN's "The admission model: promises" for one budget, and is the reference
//! the limiter is checked against (`rust/core/tests/model.rs`) and another backend can be:
//! plain values, no clock (every step is told the time), no atomics, locks, shards or hashing,
//! integer arithmetic only, and O(n) loops over the bookings rather than the limiter's
//! indexes.
//!
//! Units: with `rate` tokens per `period_ns`, one token costs `period_ns` units and one
//! nanosecond refills `rate` units (the token bucket), so every quantity is an exact
//! integer; the sliding window counts tokens. The limiter's finished-id memory is unbounded
//! here (it remembers the last 65,536 callers' ids).

mod book;
mod sliding_window;
mod token_bucket;

pub use book::{Book, Booking, Id, Promises, State};
pub use sliding_window::SlidingWindow;
pub use token_bucket::{TokenBucket, LOOK_AHEAD};

use crate::clock::Nanos;
use crate::decision::{Holder, Refusal};

/// Credit, in the budget's units.
pub type Units = i128;

/// The default grace: how long a held caller's reservation keeps its tokens past its slot
/// (or past the moment it was funded, if later) before they go back to the budget.
pub const GRACE: Nanos = 250_000_000;

/// How soon a booking (or a take) asks again when only held tokens stand in its way
/// (their holders may spend them any moment). The limiter uses these two constants too.
pub const RECHECK: Nanos = 1_000_000;

/// One request to the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `try_acquire(count)`.
    Take {
        count: u64,
    },
    /// A caller's `reserve`, or a waiting `acquire`'s turn (`waiter`); refused when the
    /// slot is more than `max_wait_ns` away (`None`: no bound).
    Book {
        count: u64,
        max_wait_ns: Option<Nanos>,
        waiter: bool,
    },
    Execute {
        id: Id,
    },
    Cancel {
        id: Id,
    },
    /// `back_off`: nothing is admitted for `ns`, then the budget refills from empty.
    BackOff {
        ns: Nanos,
    },
    /// `peek()`: what a take could have now beside every promise.
    Peek,
}

/// What the limiter answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Admitted,
    /// `retry_after` in nanoseconds, where the limiter gives one.
    Refused {
        reason: Refusal,
        retry_after: Option<Nanos>,
    },
    /// `expires` is `Nanos::MAX` for a waiter's turn.
    Booked {
        id: Id,
        slot: Nanos,
        expires: Nanos,
    },
    Cancelled(bool),
    BackedOff,
    /// Units a take could have now (tokens times [`Budget::unit`]).
    Peeked {
        units: Units,
    },
}

fn refused(reason: Refusal, retry_after: Option<Nanos>) -> Answer {
    Answer::Refused {
        reason,
        retry_after,
    }
}

/// An algorithm's state and rules, in units (see the module comment).
pub trait Budget: Clone + std::fmt::Debug {
    /// Units one token costs.
    fn unit(&self) -> Units;
    /// Units the whole budget holds.
    fn capacity(&self) -> Units;
    /// Units free now (escrow excluded).
    fn free(&self, now: Nanos) -> Units;
    /// Takes `units` now (no more than are free).
    fn take(&mut self, now: Nanos, units: Units);
    /// Moves `units` (no more than are free) into escrow.
    fn hold(&mut self, now: Nanos, units: Units);
    /// Gives `units` of escrow back (a cancel, a lapse, an expiry).
    fn release(&mut self, now: Nanos, units: Units);
    /// Spends `units` of escrow now: an admission.
    fn consume(&mut self, now: Nanos, units: Units);
    /// Nothing is free before `until` (escrow aside); the budget refills from empty after.
    fn owe_until(&mut self, now: Nanos, until: Nanos);
    /// Nanoseconds until `units` are free, if nothing else is taken.
    fn wait(&self, now: Nanos, units: Units) -> Nanos;
    /// The first slot at which `units` can be held after every promise, if everyone ahead
    /// executes on time; never before the last queued promise's slot.
    fn slot(&self, now: Nanos, promises: &Promises<'_>, units: Units) -> Nanos;
    /// Units that must stay free now so that every promise is met at its slot.
    fn reserved(&self, now: Nanos, promises: &Promises<'_>) -> Units;
    /// Nanoseconds until a take of `units` could be admitted beside every promise, if
    /// everyone executes on time (0: now).
    fn chance(&self, now: Nanos, promises: &Promises<'_>, units: Units) -> Nanos;
    /// Instants at which the budget's answers change (for tests that step the clock to them).
    fn moments(&self) -> Vec<Nanos>;
}

/// One budget and its book: the whole state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model<B> {
    pub budget: B,
    pub book: Book,
    /// A caller's reservation expires this long after its slot.
    pub ttl: Nanos,
    /// A held caller's reservation lapses this long after its slot (or its funding).
    pub grace: Nanos,
    /// [`RECHECK`], in the model's time unit (a backend that counts microseconds is
    /// compared with a model run in microseconds).
    pub recheck: Nanos,
}

impl<B: Budget> Model<B> {
    pub fn new(budget: B, ttl: Nanos, grace: Nanos) -> Self {
        Self {
            budget,
            book: Book::default(),
            ttl,
            grace,
            recheck: RECHECK,
        }
    }

    /// The answer to `op` at `now`, and the state after it.
    pub fn step(&self, now: Nanos, op: &Op) -> (Answer, Self) {
        let mut next = self.clone();
        let answer = next.apply(now, op);
        (answer, next)
    }

    /// [`Model::step`] in place.
    pub fn apply(&mut self, now: Nanos, op: &Op) -> Answer {
        self.refresh(now);
        match *op {
            Op::Take { count } => self.take(now, count),
            Op::Book {
                count,
                max_wait_ns,
                waiter,
            } => {
                let holder = if waiter {
                    Holder::Waiter
                } else {
                    Holder::Caller
                };
                self.book(now, count, max_wait_ns, holder)
            }
            Op::Execute { id } => self.execute(now, id),
            Op::Cancel { id } => self.cancel(now, id),
            Op::BackOff { ns } => {
                self.budget.owe_until(now, now.saturating_add(ns));
                Answer::BackedOff
            }
            Op::Peek => {
                let reserved = self.budget.reserved(now, &self.book.promises());
                let spare = self.budget.free(now) - reserved;
                Answer::Peeked {
                    units: spare.max(0),
                }
            }
        }
    }

    /// Instants at which the answers may change: slots, lapses and expiries, and the
    /// budget's own.
    pub fn moments(&self) -> Vec<Nanos> {
        let mut moments = self.budget.moments();
        for booking in self.book.bookings.iter().filter(|b| b.is_live()) {
            moments.extend([booking.slot, booking.expires]);
            if let State::Held {
                lapses: Some(lapses),
            } = booking.state
            {
                moments.push(lapses);
            }
        }
        moments
    }

    /// `count` tokens in units, if the budget can ever hold them.
    fn units(&self, count: u64) -> Option<Units> {
        let units = count as Units * self.budget.unit();
        (units <= self.budget.capacity()).then_some(units)
    }

    fn units_of(&self, id: Id) -> Units {
        self.book.bookings[id].count as Units * self.budget.unit()
    }

    /// Brings the account up to `now`, as every operation does first: bookings past their
    /// time to live leave (held tokens go back), held reservations past their grace lapse
    /// (their tokens go back), then queued bookings whose slot has come are funded, in
    /// booking order, while the budget has their tokens.
    fn refresh(&mut self, now: Nanos) {
        for id in self.book.due(now, |b| Some(b.expires)) {
            if let State::Held { .. } = self.book.finish(id, Refusal::Expired) {
                self.budget.release(now, self.units_of(id));
            }
        }
        let lapses = |b: &Booking| match b.state {
            State::Held { lapses } => lapses,
            _ => None,
        };
        for id in self.book.due(now, lapses) {
            self.book.set_state(id, State::Lapsed);
            self.budget.release(now, self.units_of(id));
        }
        while let Some(id) = self.book.first_queued() {
            let units = self.units_of(id);
            let booking = self.book.bookings[id];
            if booking.slot > now || self.budget.free(now) < units {
                break;
            }
            self.budget.hold(now, units);
            let lapses = match booking.holder {
                Holder::Caller => Some(booking.slot.max(now).saturating_add(self.grace) + 1),
                Holder::Waiter => None,
            };
            self.book.set_state(id, State::Held { lapses });
        }
    }

    /// A take now: admitted when every promise is still met at its slot.
    fn take(&mut self, now: Nanos, count: u64) -> Answer {
        let Some(units) = self.units(count) else {
            return refused(Refusal::ExceedsCapacity, None);
        };
        match self.budget.chance(now, &self.book.promises(), units) {
            0 => {
                self.budget.take(now, units);
                Answer::Admitted
            }
            wait => refused(Refusal::RateLimited, Some(self.hint(units, wait))),
        }
    }

    /// A wait the promise rule gave, no sooner than [`RECHECK`] when held tokens stand in
    /// the way (escrow lowers what the budget refills to: the rule's wait assumes it is
    /// spent on time).
    fn hint(&self, units: Units, wait: Nanos) -> Nanos {
        let held = self.book.held_tokens() as Units * self.budget.unit();
        if wait > 0 && held > 0 && units > self.budget.capacity() - held {
            return wait.max(self.recheck);
        }
        wait
    }

    /// A booking at the first slot after every promise, funded at once if that is now.
    fn book(&mut self, now: Nanos, count: u64, max_wait: Option<Nanos>, holder: Holder) -> Answer {
        let Some(units) = self.units(count) else {
            return refused(Refusal::ExceedsCapacity, None);
        };
        let slot = self.budget.slot(now, &self.book.promises(), units);
        let wait = slot - now;
        if max_wait.is_some_and(|max| wait > max) {
            return refused(Refusal::MaxWaitExceeded, Some(wait));
        }
        let expires = match holder {
            Holder::Caller => slot.saturating_add(self.ttl),
            Holder::Waiter => Nanos::MAX,
        };
        let id = self.book.push(Booking {
            count,
            slot,
            expires,
            holder,
            state: State::Queued,
        });
        self.refresh(now);
        Answer::Booked { id, slot, expires }
    }

    /// A held booking is admitted; a queued one when it could be taken now beside every
    /// other promise; a lapsed one when a take could be. Otherwise `not_ready` with the
    /// wait. A waiter's finished turn is unknown: only callers' ids are remembered.
    fn execute(&mut self, now: Nanos, id: Id) -> Answer {
        let Some(&booking) = self.book.get(id) else {
            return refused(Refusal::UnknownReservation, None);
        };
        let units = self.units_of(id);
        match booking.state {
            State::Finished(_) if booking.holder == Holder::Waiter => {
                return refused(Refusal::UnknownReservation, None);
            }
            State::Finished(outcome) => return refused(outcome, None),
            State::Queued => {
                let wait = self.wait_for_turn(now, id);
                if wait > 0 {
                    return refused(Refusal::NotReady, Some(wait));
                }
                self.budget.hold(now, units);
            }
            State::Lapsed => {
                let wait = self.budget.chance(now, &self.book.promises(), units);
                let wait = self.hint(units, wait);
                if wait > 0 {
                    return refused(Refusal::NotReady, Some(wait));
                }
                self.budget.hold(now, units);
            }
            State::Held { .. } => {}
        }
        self.book.finish(id, Refusal::AlreadyExecuted);
        self.budget.consume(now, units);
        Answer::Admitted
    }

    /// How long the queued booking `id` should wait before asking again (0: it can be
    /// admitted now beside every other promise): until it could be taken beside the
    /// others, and no later than its slot; past its slot, no later than the budget could
    /// fund it and everything queued ahead of it.
    fn wait_for_turn(&self, now: Nanos, id: Id) -> Nanos {
        let booking = self.book.bookings[id];
        let units = self.units_of(id);
        let early = self
            .budget
            .chance(now, &self.book.promises_without(id), units);
        let early = self.hint(units, early);
        if early == 0 || booking.slot > now {
            return early.min((booking.slot.saturating_sub(now)).max(1));
        }
        early.min(self.wait_past_slot(now, id))
    }

    /// Past its slot: until the budget has the tokens queued up to and including `id`, if
    /// the escrow leaves room for them; else (only escrow spent can make room) until the
    /// first reservation expires, or, with only waiters' turns booked, [`RECHECK`].
    fn wait_past_slot(&self, now: Nanos, id: Id) -> Nanos {
        let tokens = self.book.queued_ahead(id) + self.book.bookings[id].count;
        let units = tokens as Units * self.budget.unit();
        let room = self.budget.capacity() - self.book.held_tokens() as Units * self.budget.unit();
        if units <= room {
            let wait = self.budget.wait(now, units);
            if wait > 0 {
                return wait;
            }
        }
        self.book
            .next_expiry()
            .map_or(self.recheck, |expires| expires.saturating_sub(now).max(1))
    }

    /// Takes a live booking out of the book (held tokens go back); `false` for any other id.
    fn cancel(&mut self, now: Nanos, id: Id) -> Answer {
        if !self.book.get(id).is_some_and(Booking::is_live) {
            return Answer::Cancelled(false);
        }
        if let State::Held { .. } = self.book.finish(id, Refusal::Cancelled) {
            self.budget.release(now, self.units_of(id));
        }
        self.refresh(now);
        Answer::Cancelled(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    #[test]
    fn a_burst_then_slots_one_token_apart() {
        let mut model = Model::new(TokenBucket::new(10, SECOND, 10, 0), SECOND, GRACE);
        let take = Op::Take { count: 10 };
        assert_eq!(model.apply(0, &take), Answer::Admitted);
        let book = Op::Book {
            count: 1,
            max_wait_ns: None,
            waiter: false,
        };
        assert_eq!(
            model.apply(0, &book),
            Answer::Booked {
                id: 0,
                slot: SECOND / 10,
                expires: SECOND / 10 + SECOND
            }
        );
        // The refill until the slot is promised: a take waits until after it.
        assert_eq!(
            model.apply(0, &Op::Take { count: 1 }),
            refused(Refusal::RateLimited, Some(SECOND / 5))
        );
        assert_eq!(
            model.apply(0, &Op::Execute { id: 0 }),
            refused(Refusal::NotReady, Some(SECOND / 10))
        );
        assert_eq!(
            model.apply(SECOND / 10, &Op::Execute { id: 0 }),
            Answer::Admitted
        );
        assert_eq!(
            model.apply(SECOND / 10, &Op::Execute { id: 0 }),
            refused(Refusal::AlreadyExecuted, None)
        );
    }

    #[test]
    fn a_held_reservation_lapses_after_its_grace_and_expires_after_its_ttl() {
        let mut model = Model::new(SlidingWindow::new(2, SECOND), SECOND, GRACE);
        let book = Op::Book {
            count: 2,
            max_wait_ns: None,
            waiter: false,
        };
        model.apply(0, &book);
        // Held through the end of its grace, inclusive; lapsed a nanosecond later.
        assert_eq!(model.apply(GRACE, &Op::Peek), Answer::Peeked { units: 0 });
        let lapsed = GRACE + 1;
        assert_eq!(model.apply(lapsed, &Op::Peek), Answer::Peeked { units: 2 });
        assert_eq!(
            model.apply(lapsed, &Op::Take { count: 2 }),
            Answer::Admitted
        );
        assert_eq!(
            model.apply(lapsed, &Op::Execute { id: 0 }),
            refused(Refusal::NotReady, Some(SECOND + 1))
        );
        assert_eq!(
            model.apply(SECOND, &Op::Execute { id: 0 }),
            refused(Refusal::Expired, None)
        );
    }
}
