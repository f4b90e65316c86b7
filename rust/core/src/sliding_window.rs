//! Sliding window shard: an exact log of admission times.
//!
//! A shard of capacity `C` admits at most `C` requests in any closed window of `window`
//! nanoseconds: an admission at `ts` counts until `ts + window` inclusive. The log is kept
//! in non-decreasing order (a late writer stamps `max(now, newest)`, which is conservative),
//! so expiry pops from the front.

use parking_lot::Mutex;
use std::collections::VecDeque;

use crate::clock::{Clock, Nanos};
use crate::shard::{Shard, Slots};

#[derive(Debug)]
pub(crate) struct WindowShard {
    log: Mutex<VecDeque<Nanos>>,
    capacity: u64,
    window: Nanos,
}

/// `count` admissions stamped `stamp`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Receipt {
    count: u64,
    stamp: Nanos,
}

impl WindowShard {
    /// A shard whose log already holds `log` (sorted, at most `capacity` entries).
    pub(crate) fn new(capacity: u64, window: Nanos, log: VecDeque<Nanos>) -> Self {
        debug_assert!(log.len() as u64 <= capacity);
        Self {
            log: Mutex::new(log),
            capacity,
            window,
        }
    }

    /// Drops admissions that no window ending at `now` or later can contain.
    fn expire(&self, log: &mut VecDeque<Nanos>, now: Nanos) {
        while log
            .front()
            .is_some_and(|&ts| ts.saturating_add(self.window) < now)
        {
            log.pop_front();
        }
    }

    /// The admissions still inside the window at `now`, oldest first.
    pub(crate) fn live(&self, now: Nanos) -> Vec<Nanos> {
        let mut log = self.log.lock();
        self.expire(&mut log, now);
        log.iter().copied().collect()
    }

    fn take(&self, now: Nanos, want: impl Fn(u64) -> u64) -> Option<(u64, Receipt)> {
        let mut log = self.log.lock();
        self.expire(&mut log, now);
        let count = want(self.capacity - log.len() as u64);
        if count == 0 {
            return None;
        }
        let stamp = log.back().map_or(now, |&newest| newest.max(now));
        log.extend(std::iter::repeat_n(stamp, count as usize));
        Some((count, Receipt { count, stamp }))
    }
}

impl Shard for WindowShard {
    type Receipt = Receipt;

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn available(&self, now: Nanos) -> u64 {
        let mut log = self.log.lock();
        self.expire(&mut log, now);
        self.capacity - log.len() as u64
    }

    fn try_take(&self, now: Nanos, units: u64) -> Option<Receipt> {
        self.take(now, |free| if free >= units { units } else { 0 })
            .map(|(_, receipt)| receipt)
    }

    fn take_up_to(&self, now: Nanos, units: u64) -> Option<(u64, Receipt)> {
        self.take(now, |free| free.min(units))
    }

    /// Removes `count` entries stamped exactly `stamp` (entries with equal stamps are
    /// interchangeable); any that already expired are gone anyway.
    fn give_back(&self, receipt: Receipt, _clock: &Clock) {
        let mut log = self.log.lock();
        let end = log.partition_point(|&ts| ts <= receipt.stamp);
        let start = log
            .partition_point(|&ts| ts < receipt.stamp)
            .max(end.saturating_sub(receipt.count as usize));
        log.drain(start..end);
    }

    /// Free slots now, plus slots that open as the oldest admissions leave the window: the
    /// `units - free`-th earliest expiry over all shards is when the request fits.
    fn wait_for(shards: &Slots<Self>, now: Nanos, units: u64) -> Nanos {
        let mut free = 0u64;
        let mut openings = Vec::new();
        for slot in shards {
            let shard = &slot.shard;
            let mut log = shard.log.lock();
            shard.expire(&mut log, now);
            free += shard.capacity - log.len() as u64;
            openings.extend(
                log.iter()
                    .take(units as usize)
                    .map(|&ts| ts.saturating_add(shard.window) + 1),
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
        let shard = WindowShard::new(10, SECOND, VecDeque::new());
        shard.try_take(0, 2).unwrap();
        let receipt = shard.try_take(5, 3).unwrap();
        shard.try_take(7, 1).unwrap();
        shard.give_back(receipt, &clock());
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
        let set = ShardSet::new([
            WindowShard::new(2, SECOND, VecDeque::from([10, 20])),
            WindowShard::new(2, SECOND, VecDeque::from([15])),
        ]);
        // One free slot; a second opens when 10 leaves the window, at 10 + 1 s + 1 ns.
        assert_eq!(
            WindowShard::wait_for(set.slots(), 100, 2),
            SECOND + 10 + 1 - 100
        );
        assert_eq!(WindowShard::wait_for(set.slots(), 100, 1), 0);
        assert_eq!(
            WindowShard::wait_for(set.slots(), 100, 4),
            SECOND + 20 + 1 - 100
        );
    }
}
