//! The token bucket as GCRA, and its promise rule (DESIGN: "Token bucket as GCRA", and in
//! "The admission model: promises", "Slots" and "A take now is admitted ...").
//!
//! Time is measured as refill: the *mark* of an instant `t` is `rate * t`, the units the
//! budget refills by then (a token costs `period_ns` units). The state is GCRA's
//! theoretical arrival time `tat`, as a mark, and the escrow: the free credit at `now` is
//! the burst less the escrow less `tat - mark(now)`, never below 0.

use super::{Budget, Promises, Units};
use crate::clock::Nanos;

/// Promises a refused take looks past for a gap before it says "after the last one".
pub const LOOK_AHEAD: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    /// `rate` tokens per `period_ns`, at most `burst` at once.
    rate: u64,
    period_ns: u64,
    burst: u64,
    /// The mark at which the free credit is whole again (the burst less the escrow).
    tat: Units,
    /// Units in escrow: held for bookings, neither free nor refilling.
    held: Units,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: u64, period_ns: u64, burst: u64, now: Nanos) -> Self {
        assert!(rate > 0 && period_ns > 0 && burst > 0);
        let mut bucket = Self {
            rate,
            period_ns,
            burst,
            tat: 0,
            held: 0,
        };
        bucket.tat = bucket.mark(now);
        bucket
    }

    pub fn mark(&self, at: Nanos) -> Units {
        self.rate as Units * at as Units
    }

    /// The first nanosecond by which the budget has refilled to `mark`.
    pub fn at_mark(&self, mark: Units) -> Nanos {
        let nanos = (mark.max(0) as u128).div_ceil(u128::from(self.rate));
        nanos.min(u128::from(Nanos::MAX)) as Nanos
    }

    /// What the free credit can hold: the burst less the escrow.
    fn room(&self) -> Units {
        self.capacity() - self.held
    }

    /// Refill owed after a back-off before any credit is free again.
    fn owed(&self, now: Nanos) -> Units {
        (self.tat - self.mark(now) - self.room()).max(0)
    }

    /// GCRA's `end` before any promise: when the budget, counting escrow as spent, is full
    /// again.
    fn end(&self, now: Nanos) -> Units {
        self.tat.max(self.mark(now)) + self.held
    }

    fn units(&self, count: u64) -> Units {
        count as Units * self.period_ns as Units
    }

    /// Whether every promise in `rest` is still met after the budget reached `end`:
    /// `end + units promised up to k <= mark_k + capacity` for each of them.
    fn keeps(&self, end: Units, rest: &[(Units, Units)]) -> bool {
        let mut through = 0;
        rest.iter().all(|&(mark, units)| {
            through += units;
            end + through <= mark + self.capacity()
        })
    }

    /// The queued promises as (mark, units), in order.
    fn schedule(&self, promises: &Promises<'_>) -> Vec<(Units, Units)> {
        let queued = promises.queued();
        queued
            .map(|b| (self.mark(b.slot), self.units(b.count)))
            .collect()
    }
}

impl Budget for TokenBucket {
    fn unit(&self) -> Units {
        self.period_ns as Units
    }

    fn capacity(&self) -> Units {
        self.units(self.burst)
    }

    fn free(&self, now: Nanos) -> Units {
        (self.room() - (self.tat - self.mark(now)).max(0)).max(0)
    }

    fn take(&mut self, now: Nanos, units: Units) {
        self.tat = self.tat.max(self.mark(now)) + units;
    }

    fn hold(&mut self, _now: Nanos, units: Units) {
        self.held += units;
    }

    /// A back-off still owed keeps owing as much: the credit given back is owed too.
    fn release(&mut self, now: Nanos, units: Units) {
        if self.owed(now) > 0 {
            self.tat += units;
        }
        self.held -= units;
    }

    /// Spent escrow refills like any take.
    fn consume(&mut self, now: Nanos, units: Units) {
        self.held -= units;
        self.take(now, units);
    }

    fn owe_until(&mut self, _now: Nanos, until: Nanos) {
        self.tat = self.tat.max(self.mark(until) + self.room());
    }

    fn wait(&self, now: Nanos, units: Units) -> Nanos {
        let short = (units + self.owed(now) - self.free(now)).max(0);
        self.at_mark(short)
    }

    /// GCRA over the promises: each moves `end` to `max(end, mark) + units`; the slot is
    /// `max(now, last slot, end + units - capacity)`.
    fn slot(&self, now: Nanos, promises: &Promises<'_>, units: Units) -> Nanos {
        let mut end = self.end(now);
        for (mark, promised) in self.schedule(promises) {
            end = end.max(mark) + promised;
        }
        let at = self.mark(now).max(end + units - self.capacity());
        self.at_mark(at).max(now).max(promises.last_slot())
    }

    /// Promise `k` is met if the credit now covers everything promised up to `k` less the
    /// refill until its slot.
    fn reserved(&self, now: Nanos, promises: &Promises<'_>) -> Units {
        let mut through = 0;
        let mut reserved = 0;
        for (mark, units) in self.schedule(promises) {
            through += units;
            reserved = reserved.max(through - (mark - self.mark(now)));
        }
        reserved
    }

    /// The first gap in the schedule where the take fits without making a later promise
    /// late: now, then after each promise (looking [`LOOK_AHEAD`] promises ahead); else
    /// the slot a booking would get.
    fn chance(&self, now: Nanos, promises: &Promises<'_>, units: Units) -> Nanos {
        let schedule = self.schedule(promises);
        let mut end = self.end(now);
        for gap in 0..=LOOK_AHEAD {
            let next = schedule.get(gap);
            let at = self.mark(now).max(end + units - self.capacity());
            let before_next = next.is_none_or(|&(mark, _)| at < mark);
            if before_next && self.keeps(end.max(at) + units, &schedule[gap..]) {
                return self.at_mark(at).max(now) - now;
            }
            let Some(&(mark, promised)) = next else { break };
            end = end.max(mark) + promised;
        }
        self.slot(now, promises, units) - now
    }

    fn moments(&self) -> Vec<Nanos> {
        vec![self.at_mark(self.tat), self.at_mark(self.tat - self.room())]
    }
}
