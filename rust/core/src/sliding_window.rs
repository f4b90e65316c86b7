//! Sliding window shard: an exact log of admission times.
//!
//! A shard of capacity `C` admits at most `C` requests in any closed window of `window`
//! nanoseconds: an admission at `ts` counts until `ts + window` inclusive. The log is kept
//! in non-decreasing order (a late writer stamps `max(now, newest)`, which is conservative),
//! so expiry pops from the front.

use parking_lot::Mutex;
use std::collections::VecDeque;

use crate::clock::{Clock, Nanos};
use crate::shard::{Shard, ShardSet, Taken, Undo};

#[derive(Debug)]
pub(crate) struct WindowShard {
    log: Mutex<Log>,
}

/// A shard's admissions, oldest first, with the limits they are judged by (which change
/// only while the limiter is being re-rated).
#[derive(Debug)]
pub(crate) struct Log {
    pub(crate) entries: VecDeque<Nanos>,
    pub(crate) capacity: u64,
    pub(crate) window: Nanos,
}

impl Log {
    /// Removes up to `count` entries stamped exactly `stamp` (entries with equal stamps are
    /// interchangeable); returns how many it removed.
    fn remove_stamped(&mut self, stamp: Nanos, count: usize) -> usize {
        let end = self.entries.partition_point(|&ts| ts <= stamp);
        let start = self
            .entries
            .partition_point(|&ts| ts < stamp)
            .max(end.saturating_sub(count));
        self.entries.drain(start..end);
        end - start
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
        self.capacity.saturating_sub(self.entries.len() as u64)
    }
}

/// `count` admissions stamped `stamp`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Receipt {
    count: u64,
    stamp: Nanos,
}

impl WindowShard {
    /// A shard whose log already holds `entries` (sorted, at most `capacity`).
    pub(crate) fn new(capacity: u64, window: Nanos, entries: VecDeque<Nanos>) -> Self {
        debug_assert!(entries.len() as u64 <= capacity);
        Self {
            log: Mutex::new(Log {
                entries,
                capacity,
                window,
            }),
        }
    }

    /// The log, locked: for re-rating and resetting the limiter.
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, Log> {
        self.log.lock()
    }

    /// The admissions still inside the window at `now`, oldest first.
    #[cfg(test)]
    pub(crate) fn live(&self, now: Nanos) -> Vec<Nanos> {
        let mut log = self.log.lock();
        log.expire(now);
        log.entries.iter().copied().collect()
    }
}

impl Shard for WindowShard {
    type Receipt = Receipt;
    type Shared = ();

    fn undo(taken: Taken<Receipt>) -> Undo {
        Undo::Window(taken)
    }

    fn available(&self, now: Nanos) -> u64 {
        let mut log = self.log.lock();
        log.expire(now);
        log.free()
    }

    fn take(&self, now: Nanos, want: impl Fn(u64) -> u64) -> Option<(u64, Receipt)> {
        let mut log = self.log.lock();
        log.expire(now);
        let count = want(log.free());
        if count == 0 {
            return None;
        }
        let stamp = log.entries.back().map_or(now, |&newest| newest.max(now));
        log.entries
            .extend(std::iter::repeat_n(stamp, count as usize));
        Some((count, Receipt { count, stamp }))
    }

    /// Removes `count` entries stamped exactly `stamp` (entries with equal stamps are
    /// interchangeable); any that already expired are gone anyway.
    fn give_back(set: &ShardSet<Self>, index: usize, receipt: Receipt, _clock: &Clock) {
        let mut log = set.shard(index).log.lock();
        log.remove_stamped(receipt.stamp, receipt.count as usize);
    }

    /// Every admission in the logs and every queued one counts until its window passes; the
    /// slot is the first time, from the end of the queue on, with room for `units` more.
    fn plan(
        set: &ShardSet<Self>,
        now: Nanos,
        queue: &mut dyn Iterator<Item = (Nanos, u64)>,
        units: u64,
    ) -> Nanos {
        let mut stamps: Vec<(Nanos, u64)> = Vec::new();
        let (mut limit, mut window) = (0, 0);
        for slot in set.slots.iter() {
            let mut log = slot.shard.log.lock();
            log.expire(now);
            limit += log.capacity;
            window = log.window;
            stamps.extend(log.entries.iter().map(|&ts| (ts, 1)));
        }
        let mut start = now;
        for (slot, count) in queue {
            start = start.max(slot);
            stamps.push((slot, count));
        }
        stamps.sort_unstable();
        let live = stamps
            .iter()
            .skip_while(|(ts, _)| ts.saturating_add(window) < start);
        let in_window: u64 = live.clone().map(|(_, c)| c).sum();
        let Some(mut excess) = (in_window + units).checked_sub(limit).filter(|&e| e > 0) else {
            return start;
        };
        for &(ts, count) in live {
            if count >= excess {
                return ts.saturating_add(window) + 1;
            }
            excess -= count;
        }
        start
    }

    /// Removes the `units` admissions stamped `at` (what the reservation took).
    fn refund(set: &ShardSet<Self>, _now: Nanos, at: Nanos, units: u64) {
        let mut owed = units as usize;
        for slot in set.slots.iter() {
            if owed == 0 {
                break;
            }
            owed -= slot.shard.log.lock().remove_stamped(at, owed);
        }
    }

    /// Free slots now, plus slots that open as the oldest admissions leave the window: the
    /// `units - free`-th earliest expiry over all shards is when the request fits.
    fn wait_for(set: &ShardSet<Self>, now: Nanos, units: u64) -> Nanos {
        let mut free = 0u64;
        let mut openings = Vec::new();
        for slot in set.slots.iter() {
            let mut log = slot.shard.log.lock();
            log.expire(now);
            free += log.free();
            let window = log.window;
            openings.extend(
                log.entries
                    .iter()
                    .take(units as usize)
                    .map(|&ts| ts.saturating_add(window) + 1),
            );
        }
        let Some(needed) = units.checked_sub(free).filter(|&n| n > 0) else {
            return 0;
        };
        openings.sort_unstable();
        openings
            .get(needed as usize - 1)
            .map_or(0, |&at| at.saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardSet;

    const SECOND: Nanos = 1_000_000_000;

    fn clock() -> Clock {
        Clock::Manual(Default::default())
    }

    #[test]
    fn admits_capacity_per_closed_window() {
        let shard = WindowShard::new(3, SECOND, VecDeque::new());
        for _ in 0..3 {
            assert!(shard.try_take(0, 1).is_some());
        }
        assert!(shard.try_take(0, 1).is_none());
        // Still inside [0, 1 s] at exactly one second.
        assert!(shard.try_take(SECOND, 1).is_none());
        assert!(shard.try_take(SECOND + 1, 3).is_some());
    }

    #[test]
    fn give_back_removes_exactly_its_own_entries() {
        let set = ShardSet::new([WindowShard::new(10, SECOND, VecDeque::new())], ());
        let shard = set.shard(0);
        shard.try_take(0, 2).unwrap();
        let receipt = shard.try_take(5, 3).unwrap();
        shard.try_take(7, 1).unwrap();
        WindowShard::give_back(&set, 0, receipt, &clock());
        assert_eq!(shard.live(7), vec![0, 0, 7]);
    }

    #[test]
    fn late_writers_stamp_no_earlier_than_the_newest_entry() {
        let shard = WindowShard::new(10, SECOND, VecDeque::new());
        shard.try_take(50, 1).unwrap();
        shard.try_take(40, 1).unwrap();
        assert_eq!(shard.live(50), vec![50, 50]);
    }

    #[test]
    fn wait_for_is_the_earliest_expiry_that_makes_room() {
        let set = ShardSet::new(
            [
                WindowShard::new(2, SECOND, VecDeque::from([10, 20])),
                WindowShard::new(2, SECOND, VecDeque::from([15])),
            ],
            (),
        );
        // One free slot; a second opens when 10 leaves the window, at 10 + 1 s + 1 ns.
        assert_eq!(WindowShard::wait_for(&set, 100, 2), SECOND + 10 + 1 - 100);
        assert_eq!(WindowShard::wait_for(&set, 100, 1), 0);
        assert_eq!(WindowShard::wait_for(&set, 100, 4), SECOND + 20 + 1 - 100);
    }
}
