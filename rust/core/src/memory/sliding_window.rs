//! Sliding window: one exact log of admission times.
//!
//! At most `limit` admissions in any closed window of `window` nanoseconds: an admission
//! at `ts` counts until `ts + window` inclusive. The log is one sorted deque under one lock
//! (a late writer stamps `max(now, newest)`, which is conservative), so expiry pops from
//! the front and the time at which the `k`-th oldest admission leaves is an index, never a
//! scan. Shards only spread the served-request statistics: a log split over shards could
//! not answer "when is there room" without merging them.
//!
//! Escrow is a count: held units take room in the window until they are spent (stamped at
//! the moment they are admitted) or released.

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, Nanos};
use crate::memory::budget::{Budget, Outcome, Promises};
use crate::memory::params::{share, Params};
use crate::memory::shard::candidates;

#[derive(Debug)]
pub(crate) struct SlidingWindow {
    log: Mutex<Log>,
    served: Box<[CachePadded<AtomicU64>]>,
}

#[derive(Debug)]
struct Log {
    entries: VecDeque<Nanos>,
    limit: u64,
    window: Nanos,
    /// Units in escrow.
    held: u64,
    /// The end of a back-off (0: none): until then the window stays full.
    owed_until: Nanos,
}

impl Log {
    /// While a back-off is owed, every admission in the log, and one at every free place
    /// (escrow given back, a higher limit), counts until just before it ends: the window is
    /// full until then, and nothing in it leaves earlier.
    fn keep_owing(&mut self, now: Nanos) {
        if now >= self.owed_until {
            return;
        }
        let stamp = self.owed_until.saturating_sub(self.window + 1);
        for ts in self.entries.iter_mut() {
            *ts = (*ts).max(stamp);
        }
        for _ in 0..self.free() {
            self.entries.push_front(stamp);
        }
    }

    /// Drops admissions that no window ending at `now` or later can contain.
    fn expire(&mut self, now: Nanos) {
        while self
            .entries
            .front()
            .is_some_and(|&ts| ts.saturating_add(self.window) < now)
        {
            self.entries.pop_front();
        }
    }

    fn free(&self) -> u64 {
        self.limit
            .saturating_sub(self.held + self.entries.len() as u64)
    }

    /// Units beyond the limit if `units` more were counted after `promised` others.
    fn excess(&self, promised: u64, units: u64) -> u64 {
        (self.entries.len() as u64 + promised + units).saturating_sub(self.limit)
    }

    /// The first instant the `k`-th oldest admission (1-based) no longer counts.
    fn opening(&self, k: u64) -> Option<Nanos> {
        let index = usize::try_from(k).ok()?.checked_sub(1)?;
        self.entries
            .get(index)
            .map(|&ts| ts.saturating_add(self.window) + 1)
    }

    fn stamp(&mut self, now: Nanos, units: u64) -> Nanos {
        let stamp = self.entries.back().map_or(now, |&newest| newest.max(now));
        self.entries
            .extend(std::iter::repeat_n(stamp, units as usize));
        stamp
    }

    /// Nanoseconds from `now` until `units` fit beside the log and the escrow.
    fn wait(&self, now: Nanos, units: u64) -> Nanos {
        let excess = self.excess(self.held, units);
        if excess == 0 {
            return 0;
        }
        // Past the log, only escrow being spent or released makes room: look again after
        // a window.
        self.opening(excess)
            .map_or(self.window, |at| at.saturating_sub(now))
    }
}

/// `count` admissions stamped `stamp`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Receipt {
    count: u64,
    stamp: Nanos,
}

impl SlidingWindow {
    fn served_by(&self, hash: u64) -> usize {
        let shard = candidates(hash, self.served.len()).0;
        self.count_served(shard, true);
        shard
    }
}

impl SlidingWindow {
    /// A window whose log holds `stamps`, oldest first (a key's window when it opens a
    /// book).
    pub(crate) fn with_log(params: &Params, stamps: impl IntoIterator<Item = Nanos>) -> Self {
        let window = Self::new(params, 0);
        window.log.lock().entries.extend(stamps);
        window
    }
}

impl Budget for SlidingWindow {
    type Receipt = Receipt;

    fn new(params: &Params, _now: Nanos) -> Self {
        Self {
            log: Mutex::new(Log {
                entries: VecDeque::new(),
                limit: params.capacity,
                window: params.window,
                held: 0,
                owed_until: 0,
            }),
            served: (0..params.shards)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    fn candidates(&self, hash: u64) -> (usize, usize) {
        candidates(hash, self.served.len())
    }

    fn acquire(&self, _clock: &Clock, now: Nanos, hash: u64, units: u64) -> Outcome<Receipt> {
        let mut log = self.log.lock();
        log.expire(now);
        if log.free() < units {
            let wait = log.wait(now, units);
            return Outcome::Refused {
                shard: self.candidates(hash).0,
                wait,
            };
        }
        let stamp = log.stamp(now, units);
        drop(log);
        Outcome::Admitted {
            shard: self.served_by(hash),
            receipt: Receipt {
                count: units,
                stamp,
            },
        }
    }

    /// Removes `count` entries stamped exactly `stamp` (entries with equal stamps are
    /// interchangeable); any that already expired are gone anyway.
    fn give_back(&self, receipt: Receipt, _clock: &Clock) {
        let mut log = self.log.lock();
        let end = log.entries.partition_point(|&ts| ts <= receipt.stamp);
        let start = log
            .entries
            .partition_point(|&ts| ts < receipt.stamp)
            .max(end.saturating_sub(receipt.count as usize));
        log.entries.drain(start..end);
    }

    fn available(&self, now: Nanos) -> u64 {
        let mut log = self.log.lock();
        log.expire(now);
        log.free()
    }

    fn shard_available(&self, now: Nanos) -> Vec<u64> {
        let free = self.available(now);
        let n = self.served.len();
        (0..n).map(|i| share(free, n, i)).collect()
    }

    fn served(&self) -> Vec<u64> {
        self.served
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// One log: nothing is ever gathered.
    fn gathered(&self) -> u64 {
        0
    }

    fn count_served(&self, shard: usize, served: bool) {
        let counter = &self.served[shard];
        if served {
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn clear_served(&self) {
        for counter in self.served.iter() {
            counter.store(0, Ordering::Relaxed);
        }
    }

    fn wait(&self, now: Nanos, _params: &Params, units: u64) -> Nanos {
        let mut log = self.log.lock();
        log.expire(now);
        log.wait(now, units)
    }

    /// Counted in order: the log, then the held tokens (executed now, if on time), then
    /// every queued promise at its slot; the slot is when the unit that makes room for
    /// `units` leaves the window (an index into the log, or a descent of the schedule).
    fn slot(&self, now: Nanos, params: &Params, promises: &Promises<'_>, units: u64) -> Nanos {
        let mut log = self.log.lock();
        log.expire(now);
        let excess = log.excess(log.held.saturating_add(promises.queued_units()), units);
        let logged = log.entries.len() as u64;
        let at = if excess == 0 {
            now
        } else if excess <= logged {
            log.opening(excess).unwrap_or(now)
        } else {
            let k = excess - logged;
            let stamped = if k <= log.held {
                now
            } else {
                let token = (k - log.held).div_ceil(params.unit);
                promises.schedule.slot_of(token).unwrap_or(promises.tail())
            };
            // An admission is stamped no earlier than the newest in the log (a key's log
            // is stamped at granule ends), and so is a promise when it is executed.
            let newest = log.entries.back().copied().unwrap_or(0);
            stamped.max(now).max(newest).saturating_add(log.window) + 1
        };
        // Nothing is admitted before a back-off ends, whatever is given back meanwhile.
        at.max(now).max(promises.tail()).max(log.owed_until)
    }

    /// The window needs no marks: it keeps room for every promise (see `reserved`).
    fn mark(&self, _at: Nanos) -> i128 {
        0
    }

    /// Room now for every token promised and not yet held: a take that would fit only
    /// because a promise's slot is more than a window away is refused (the window's slack).
    fn reserved(&self, _now: Nanos, _params: &Params, promises: &Promises<'_>) -> u64 {
        promises.queued_units()
    }

    fn chance(&self, now: Nanos, params: &Params, promises: &Promises<'_>, units: u64) -> Nanos {
        let reserved = self.reserved(now, params, promises);
        if self.available(now) >= units.saturating_add(reserved) {
            return 0;
        }
        self.slot(now, params, promises, units).saturating_sub(now)
    }

    fn hold(&self, _now: Nanos, _params: &Params, units: u64) {
        self.log.lock().held += units;
    }

    fn release(&self, now: Nanos, _params: &Params, units: u64) {
        let mut log = self.log.lock();
        log.held = log.held.saturating_sub(units);
        log.keep_owing(now);
    }

    fn consume(&self, now: Nanos, _params: &Params, hash: u64, units: u64) -> usize {
        let mut log = self.log.lock();
        log.held = log.held.saturating_sub(units);
        log.stamp(now, units);
        log.keep_owing(now);
        drop(log);
        self.served_by(hash)
    }

    /// The window is full until `until` (see [`Log::keep_owing`]), whatever is given back
    /// or re-rated meanwhile.
    fn owe_until(&self, now: Nanos, until: Nanos) {
        let mut log = self.log.lock();
        log.expire(now);
        log.owed_until = log.owed_until.max(until);
        log.keep_owing(now);
    }

    /// The log stays: a lower limit refuses until the window has room.
    /// What the new window counts is what the old one counts at the re-rating (the same rule
    /// as a key's window): entries it had let go are gone, whether or not a call happened to
    /// drop them from the log before.
    fn retune(&self, now: Nanos, _old: &Params, new: &Params, held: u64, refill: bool) {
        let mut log = self.log.lock();
        log.expire(now);
        log.limit = new.capacity;
        log.window = new.window;
        log.held = held;
        if refill {
            // A reset forgives a back-off.
            log.entries.clear();
            log.owed_until = 0;
        }
        log.keep_owing(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Algorithm, Quota};

    const SECOND: Nanos = 1_000_000_000;

    fn window(limit: f64) -> (SlidingWindow, Params, Clock) {
        let quota = Quota::new(limit, 1.0, None, Algorithm::SlidingWindow, Some(1)).unwrap();
        let params = Params::new(&quota).unwrap();
        (
            SlidingWindow::new(&params, 0),
            params,
            Clock::Manual(Default::default()),
        )
    }

    fn admitted(outcome: Outcome<Receipt>) -> Option<Receipt> {
        match outcome {
            Outcome::Admitted { receipt, .. } => Some(receipt),
            Outcome::Refused { .. } => None,
        }
    }

    #[test]
    fn admits_the_limit_per_closed_window() {
        let (w, _, clock) = window(3.0);
        for _ in 0..3 {
            assert!(admitted(w.acquire(&clock, 0, 1, 1)).is_some());
        }
        assert!(admitted(w.acquire(&clock, 0, 1, 1)).is_none());
        // Still inside [0, 1 s] at exactly one second.
        assert!(admitted(w.acquire(&clock, SECOND, 1, 1)).is_none());
        assert!(admitted(w.acquire(&clock, SECOND + 1, 1, 3)).is_some());
    }

    #[test]
    fn give_back_removes_exactly_its_own_entries() {
        let (w, _, clock) = window(10.0);
        w.acquire(&clock, 0, 1, 2);
        let receipt = admitted(w.acquire(&clock, 5, 1, 3)).unwrap();
        w.acquire(&clock, 7, 1, 1);
        w.give_back(receipt, &clock);
        assert_eq!(Vec::from(w.log.lock().entries.clone()), vec![0, 0, 7]);
    }

    #[test]
    fn the_wait_is_the_expiry_that_makes_room() {
        let (w, params, clock) = window(3.0);
        w.acquire(&clock, 10, 1, 1);
        w.acquire(&clock, 20, 1, 1);
        assert_eq!(w.wait(100, &params, 1), 0);
        assert_eq!(w.wait(100, &params, 2), SECOND + 10 + 1 - 100);
        assert_eq!(w.wait(100, &params, 3), SECOND + 20 + 1 - 100);
    }

    #[test]
    fn escrow_takes_room_until_spent_and_a_spent_unit_counts_from_then() {
        let (w, params, clock) = window(2.0);
        w.hold(0, &params, 1);
        w.acquire(&clock, 0, 1, 1);
        assert_eq!(w.available(0), 0);
        w.consume(SECOND / 2, &params, 1, 1);
        assert_eq!(w.available(SECOND + 1), 1);
        assert_eq!(w.available(SECOND / 2 + SECOND + 1), 2);
    }

    #[test]
    fn retuning_keeps_the_log() {
        let (w, params, clock) = window(10.0);
        w.acquire(&clock, 0, 1, 10);
        let lower = Params {
            capacity: 5,
            ..params
        };
        w.retune(0, &params, &lower, 0, false);
        w.retune(0, &lower, &params, 0, false);
        assert_eq!(w.available(0), 0);
    }
}
