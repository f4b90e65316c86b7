//! Token bucket shard as GCRA: the whole state is one atomic "theoretical arrival time".
//!
//! Credit is counted in ticks of 1/32 ns so that a token's cost carries five more bits of
//! precision than whole nanoseconds; u64 ticks last 18 years of limiter uptime. A shard with
//! capacity `C` ticks and TAT `t` has `C - max(t - now, 0)` ticks of credit at `now`, and gains
//! one tick of credit per tick of time until full. Taking `x` ticks moves the TAT to
//! `max(t, now) + x`. A refusal never writes, so a hot refused key does not bounce its line.
//!
//! A full shard cannot hold its refill, but the budget as a whole is only full when every
//! shard is. So before each take the set *settles*: the refill that full shards could not
//! hold since the last take is claimed (their TAT moves up to `now`) and deposited into
//! shards with room; only what no shard has room for is lost, exactly as one unsharded
//! bucket loses refill only when full. Takes settle first, so waste from a time when the
//! whole budget was full is discarded before anything makes room for it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, Nanos};
use crate::shard::{Shard, Slots};

pub(crate) const TICK_SHIFT: u32 = 5;
pub(crate) const TICKS_PER_NANO: u64 = 1 << TICK_SHIFT;

#[inline]
pub(crate) fn ticks(now: Nanos) -> u64 {
    now << TICK_SHIFT
}

#[derive(Debug)]
pub(crate) struct GcraShard {
    tat: AtomicU64,
    capacity: u64,
}

/// A take, recorded so that it can be given back: `taken` ticks, leaving the TAT at `end`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Receipt {
    taken: u64,
    end: u64,
}

impl GcraShard {
    /// A shard of `capacity` ticks whose TAT starts at `tat` (0 = full from the start).
    pub(crate) fn new(capacity: u64, tat: u64) -> Self {
        Self {
            tat: AtomicU64::new(tat),
            capacity,
        }
    }

    #[inline]
    fn credit(&self, tat: u64, now: u64) -> u64 {
        self.capacity.saturating_sub(tat.saturating_sub(now))
    }

    /// One CAS loop for both kinds of take: `want(credit)` says how much to take.
    #[inline]
    fn take(&self, now: Nanos, want: impl Fn(u64) -> u64) -> Option<(u64, Receipt)> {
        let now = ticks(now);
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let taken = want(self.credit(current, now));
            if taken == 0 {
                return None;
            }
            let end = current.max(now) + taken;
            // SeqCst: a limiter being replaced (set_rate, reset) must see every take that
            // raced with its snapshot; on x86 a locked CAS costs the same either way.
            match self
                .tat
                .compare_exchange_weak(current, end, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return Some((taken, Receipt { taken, end })),
                Err(actual) => current = actual,
            }
        }
    }
}

impl GcraShard {
    /// Claims the refill a full shard has wasted since it filled (TAT below `now`).
    fn claim_waste(&self, now: u64) -> u64 {
        let mut current = self.tat.load(Ordering::Relaxed);
        while current < now {
            match self
                .tat
                .compare_exchange_weak(current, now, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return now - current,
                Err(actual) => current = actual,
            }
        }
        0
    }

    /// Adds up to `amount` ticks of credit, never past capacity; returns what it added.
    fn deposit(&self, now: u64, amount: u64) -> u64 {
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            // Room is how far the TAT stands ahead of `now`.
            let added = amount.min(current.saturating_sub(now));
            if added == 0 {
                return 0;
            }
            match self.tat.compare_exchange_weak(
                current,
                current - added,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return added,
                Err(actual) => current = actual,
            }
        }
    }
}

impl Shard for GcraShard {
    type Receipt = Receipt;

    fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline]
    fn available(&self, now: Nanos) -> u64 {
        self.credit(self.tat.load(Ordering::Relaxed), ticks(now))
    }

    #[inline]
    fn try_take(&self, now: Nanos, units: u64) -> Option<Receipt> {
        self.take(now, |credit| if credit >= units { units } else { 0 })
            .map(|(_, receipt)| receipt)
    }

    fn take_up_to(&self, now: Nanos, units: u64) -> Option<(u64, Receipt)> {
        self.take(now, |credit| credit.min(units))
    }

    /// Gives back only what no later take can have built on. A later take at time `s` may
    /// have started from `s` instead of our `end` (the shard had refilled past it), absorbing
    /// part of our credit; giving back `min(taken, end - now)` never lowers the TAT below
    /// what it would be had we never taken, so I1 holds. With a frozen clock it is exact.
    fn give_back(&self, receipt: Receipt, clock: &Clock) {
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let refund = receipt
                .taken
                .min(receipt.end.saturating_sub(ticks(clock.now())));
            if refund == 0 {
                return;
            }
            // Never past capacity: a TAT below `now` would be credit the shard cannot hold.
            let restored = current.saturating_sub(refund).max(ticks(clock.now()));
            if restored >= current {
                return;
            }
            match self.tat.compare_exchange_weak(
                current,
                restored,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Settled, the set refills like one bucket: `N` ticks of credit per tick of time
    /// (one per shard) until the whole budget is full.
    fn wait_for(shards: &Slots<Self>, now: Nanos, units: u64) -> Nanos {
        let short = units.saturating_sub(Self::total_available(shards, now));
        short.div_ceil(shards.len() as u64).div_ceil(TICKS_PER_NANO)
    }

    fn settle(shards: &Slots<Self>, now: Nanos) {
        let now = ticks(now);
        let mut wasted: u64 = shards.iter().map(|s| s.shard.claim_waste(now)).sum();
        for slot in shards {
            if wasted == 0 {
                return;
            }
            wasted -= slot.shard.deposit(now, wasted);
        }
        // Whatever is left found every shard full: the whole budget is full and loses it.
    }

    /// Credit held now, plus the waste a settle would move into shards with room.
    fn total_available(shards: &Slots<Self>, now: Nanos) -> u64 {
        let now = ticks(now);
        let (mut credit, mut waste, mut room) = (0u64, 0u64, 0u64);
        for slot in shards {
            let shard = &slot.shard;
            let tat = shard.tat.load(Ordering::Relaxed);
            credit += shard.credit(tat, now);
            waste += now.saturating_sub(tat);
            room += tat.saturating_sub(now).min(shard.capacity);
        }
        credit + waste.min(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::shard::ShardSet;
    use std::sync::Arc;

    #[test]
    fn credit_refills_one_tick_per_tick_up_to_capacity() {
        let shard = GcraShard::new(320, 0);
        assert_eq!(shard.available(0), 320);
        assert!(shard.try_take(0, 320).is_some());
        assert_eq!(shard.available(0), 0);
        assert!(shard.try_take(0, 1).is_none());
        assert_eq!(shard.available(5), 160);
        assert_eq!(shard.available(1_000), 320);
    }

    #[test]
    fn take_up_to_takes_what_there_is() {
        let shard = GcraShard::new(100, 0);
        assert_eq!(shard.take_up_to(0, 60).map(|t| t.0), Some(60));
        assert_eq!(shard.take_up_to(0, 60).map(|t| t.0), Some(40));
        assert!(shard.take_up_to(0, 60).is_none());
    }

    #[test]
    fn give_back_is_exact_while_time_stands_still() {
        let clock = Clock::Manual(Arc::new(ManualClock::new(0.0)));
        let shard = GcraShard::new(100, 0);
        let receipt = shard.try_take(0, 70).unwrap();
        shard.try_take(0, 10).unwrap();
        shard.give_back(receipt, &clock);
        assert_eq!(shard.available(0), 90);
    }

    #[test]
    fn give_back_keeps_what_time_has_refilled() {
        let manual = Arc::new(ManualClock::new(0.0));
        let clock = Clock::Manual(manual.clone());
        let shard = GcraShard::new(3200, 0);
        let receipt = shard.try_take(0, 3200).unwrap(); // end = 3200 ticks = 100 ns
        manual.advance(60); // 1920 ticks later, the credit from then on is already back
        shard.give_back(receipt, &clock);
        assert_eq!(shard.available(60), 3200);
        // Only the 1280 ticks still ahead of the clock came back: TAT = 3200 - 1280.
        assert_eq!(shard.tat.load(Ordering::Relaxed), 1920);
    }

    #[test]
    fn wait_for_is_the_earliest_time_the_units_can_be_gathered() {
        let set = ShardSet::new([GcraShard::new(320, 0), GcraShard::new(320, 0)]);
        set.shard(0).try_take(0, 320).unwrap();
        set.shard(1).try_take(0, 160).unwrap();
        // 160 available and two ticks of credit per tick: 480 needs 160 ticks = 5 ns.
        assert_eq!(GcraShard::wait_for(set.slots(), 0, 480), 5);
        // 40 more: 20 ticks, rounded up to 1 ns.
        assert_eq!(GcraShard::wait_for(set.slots(), 0, 200), 1);
        // Everything: once shard 1 is full its refill goes to shard 0, so 240 ticks = 8 ns.
        assert_eq!(GcraShard::wait_for(set.slots(), 0, 640), 8);
    }

    #[test]
    fn settling_moves_a_full_shards_refill_to_a_shard_with_room() {
        let set = ShardSet::new([GcraShard::new(320, 0), GcraShard::new(320, 0)]);
        set.shard(0).try_take(0, 320).unwrap();
        // 2 ns = 64 ticks later shard 0 refilled 64 and shard 1, already full, wasted 64.
        assert_eq!(GcraShard::total_available(set.slots(), 2), 448);
        GcraShard::settle(set.slots(), 2);
        assert_eq!(set.shard(0).available(2), 128);
        assert_eq!(set.shard(1).available(2), 320);
        GcraShard::settle(set.slots(), 10);
        assert_eq!(GcraShard::total_available(set.slots(), 10), 640);
    }

    #[test]
    fn refill_wasted_while_the_whole_budget_was_full_is_not_recovered() {
        let set = ShardSet::new([GcraShard::new(320, 0), GcraShard::new(320, 0)]);
        // Both full for 100 ns, then a settle-and-take drains shard 1.
        GcraShard::settle(set.slots(), 100);
        set.shard(1).try_take(100, 320).unwrap();
        assert_eq!(GcraShard::total_available(set.slots(), 100), 320);
        GcraShard::settle(set.slots(), 100);
        assert_eq!(GcraShard::total_available(set.slots(), 100), 320);
    }
}
