//! The sliding window: a log of admission times, at most `limit` in any closed window of
//! `window_ns` (an admission at `t` counts until `t + window_ns` inclusive), and its promise
//! rule (DESIGN: "Sliding window", and the window's lines in "The admission model:
//! promises"). A token is one unit.

use super::{Budget, Promises, Units};
use crate::clock::Nanos;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindow {
    limit: u64,
    window_ns: Nanos,
    /// Admission times, oldest first.
    log: Vec<Nanos>,
    /// Tokens in escrow: they take room in the window until spent or given back.
    held: u64,
    /// The end of a back-off (0: none): until then the window is full.
    owed_until: Nanos,
}

impl SlidingWindow {
    pub fn new(limit: u64, window_ns: Nanos) -> Self {
        assert!(limit > 0 && window_ns > 0);
        Self {
            limit,
            window_ns,
            log: Vec::new(),
            held: 0,
            owed_until: 0,
        }
    }

    /// The admissions a window ending at `now` (or later) counts, oldest first.
    fn counted(&self, now: Nanos) -> &[Nanos] {
        let gone = self.log.partition_point(|&t| t + self.window_ns < now);
        &self.log[gone..]
    }

    /// Forgets admissions that no window ending at `now` or later counts.
    fn expire(&mut self, now: Nanos) {
        let gone = self.log.len() - self.counted(now).len();
        self.log.drain(..gone);
    }

    /// The first instant at which the admission at `t` no longer counts.
    fn leaves(&self, t: Nanos) -> Nanos {
        t + self.window_ns + 1
    }

    fn free_after_expiry(&self) -> u64 {
        self.limit.saturating_sub(self.held + self.log.len() as u64)
    }

    /// Stamps `count` admissions at `now` (never before the newest: the log stays sorted).
    fn stamp(&mut self, now: Nanos, count: u64) {
        let at = self.log.last().map_or(now, |&newest| newest.max(now));
        self.log.extend(std::iter::repeat_n(at, count as usize));
    }

    /// While a back-off is owed, every admission, and one at every free place, counts
    /// until just before it ends: the window is full until then, whatever is given back.
    fn keep_owing(&mut self, now: Nanos) {
        if now >= self.owed_until {
            return;
        }
        let until = self.owed_until.saturating_sub(self.window_ns + 1);
        let free = self.free_after_expiry() as usize;
        let raised = self.log.iter().map(|&t| t.max(until));
        self.log = std::iter::repeat_n(until, free).chain(raised).collect();
    }
}

impl Budget for SlidingWindow {
    fn unit(&self) -> Units {
        1
    }

    fn capacity(&self) -> Units {
        self.limit as Units
    }

    fn free(&self, now: Nanos) -> Units {
        let used = self.held + self.counted(now).len() as u64;
        self.limit.saturating_sub(used) as Units
    }

    fn take(&mut self, now: Nanos, units: Units) {
        self.expire(now);
        self.stamp(now, units as u64);
    }

    fn hold(&mut self, now: Nanos, units: Units) {
        self.expire(now);
        self.held += units as u64;
    }

    fn release(&mut self, now: Nanos, units: Units) {
        self.expire(now);
        self.held -= units as u64;
        self.keep_owing(now);
    }

    /// Spent escrow is an admission now.
    fn consume(&mut self, now: Nanos, units: Units) {
        self.expire(now);
        self.held -= units as u64;
        self.stamp(now, units as u64);
        self.keep_owing(now);
    }

    fn owe_until(&mut self, now: Nanos, until: Nanos) {
        self.expire(now);
        self.owed_until = self.owed_until.max(until);
        self.keep_owing(now);
    }

    /// When the admission that makes room for `units` beside the log and the escrow leaves
    /// the window; past the log, a window from now (only escrow spent or given back frees
    /// room).
    fn wait(&self, now: Nanos, units: Units) -> Nanos {
        let counted = self.counted(now);
        let used = counted.len() as u64 + self.held;
        let excess = (used + units as u64).saturating_sub(self.limit);
        if excess == 0 {
            return 0;
        }
        match counted.get(excess as usize - 1) {
            Some(&t) => self.leaves(t).saturating_sub(now),
            None => self.window_ns,
        }
    }

    /// Counted in order: the log, then the held tokens (spent now, if on time), then every
    /// queued promise at its slot, each stamped no earlier than the newest in the log; the
    /// slot is when the one that makes room for `units` leaves the window, never before
    /// the last queued promise's, nor before a back-off ends.
    fn slot(&self, now: Nanos, promises: &Promises<'_>, units: Units) -> Nanos {
        let counted = self.counted(now);
        let logged = counted.len() as u64;
        let promised = self.held + promises.queued_tokens();
        let excess = (logged + promised + units as u64).saturating_sub(self.limit);
        let at = if excess == 0 {
            now
        } else if excess <= logged {
            self.leaves(counted[excess as usize - 1])
        } else {
            let k = excess - logged;
            let stamped = if k <= self.held {
                now
            } else {
                promises.slot_of(k - self.held)
            };
            let newest = self.log.last().copied().unwrap_or(0);
            self.leaves(stamped.max(now).max(newest))
        };
        at.max(now).max(promises.last_slot()).max(self.owed_until)
    }

    /// Room now for every token queued.
    fn reserved(&self, _now: Nanos, promises: &Promises<'_>) -> Units {
        promises.queued_tokens() as Units
    }

    /// Now if there is room beside every queued token; else the slot a booking would get.
    fn chance(&self, now: Nanos, promises: &Promises<'_>, units: Units) -> Nanos {
        if self.free(now) >= units + self.reserved(now, promises) {
            return 0;
        }
        self.slot(now, promises, units) - now
    }

    fn moments(&self) -> Vec<Nanos> {
        let leaving = self.log.iter().map(|&t| self.leaves(t));
        leaving.chain([self.owed_until]).collect()
    }
}
