//! The shard set: one budget split over N cache-line-padded shards.
//!
//! Sharding is a concurrency device, never a way to lose capacity (SPEC I2): a request is
//! served by the fuller of its key's two candidate shards (load-aware power-of-two choices,
//! I5); when neither holds enough, it is gathered from both, then from every shard, so one
//! key can always use the whole rate and the whole burst. A refusal only reads (but for an
//! adaptive limiter's count of what was asked). A request served by its candidates touches
//! only their cache lines, so threads on different shards do not meet.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::clock::{Clock, Nanos};
use crate::memory::budget::Outcome;
use crate::memory::hot::{self, HotKeys};

/// One shard's bucket. Capacity and amounts are in the algorithm's own units (clock ticks
/// of credit for the token bucket), and so is `now` (its `Time`); waits are nanoseconds.
pub(crate) trait Shard: Send + Sync + Sized {
    /// What a take records so that it can be given back exactly.
    type Receipt: Copy;
    /// State the whole set shares, besides its shards.
    type Shared: Send + Sync + std::fmt::Debug;
    /// A clock reading in the algorithm's own time.
    type Time: Copy;

    fn available(&self, now: Self::Time) -> u64;
    /// Takes what `want` says, given what is available now; `None` when that is nothing.
    fn take(&self, now: Self::Time, want: impl Fn(u64) -> u64) -> Option<(u64, Self::Receipt)>;
    /// Takes all of `units` or nothing.
    #[inline]
    fn try_take(&self, now: Self::Time, units: u64) -> Option<Self::Receipt> {
        self.take(now, |available| if available >= units { units } else { 0 })
            .map(|(_, receipt)| receipt)
    }
    /// Takes as much of `units` as is available now; `None` when it took nothing.
    fn take_up_to(&self, now: Self::Time, units: u64) -> Option<(u64, Self::Receipt)> {
        self.take(now, |available| available.min(units))
    }
    /// Returns a take that turned out not to be needed.
    fn give_back(set: &ShardSet<Self>, index: usize, receipt: Self::Receipt, clock: &Clock);
    /// Nanoseconds from `now` until `units` can be gathered over the whole set
    /// (`units` never exceeds its total capacity).
    fn wait_for(set: &ShardSet<Self>, now: Self::Time, units: u64) -> Nanos;
    /// Brings the shards up to date before a take, so that together they hold exactly
    /// what one unsharded budget would.
    fn settle(_set: &ShardSet<Self>, _now: Self::Time) {}
    /// A take without settling first, from a shard that is not full, while nothing left
    /// unsettled can matter yet; `None` when it must settle first.
    fn take_unsettled(
        _set: &ShardSet<Self>,
        _index: usize,
        _now: Self::Time,
        _units: u64,
    ) -> Option<Self::Receipt> {
        None
    }
    /// Units the whole set could hand out at `now`, counting what a settle would move.
    fn total_available(set: &ShardSet<Self>, now: Self::Time) -> u64 {
        set.slots.iter().map(|s| s.shard.available(now)).sum()
    }
}

/// A shard with its served-requests counter.
#[derive(Debug)]
pub(crate) struct Slot<S> {
    pub(crate) shard: S,
    served: AtomicU64,
    /// Gathered admissions (the slow path) whose first take was from this shard: written
    /// only by a gather, on the line it has just written; only the sum over shards means
    /// anything.
    gathered: AtomicU64,
    /// Units asked of this shard as a key's fuller candidate, admitted or not: its demand,
    /// counted only while the set measures it (`ShardSet::measure_demand`).
    asked: AtomicU64,
}

/// What an admission took, so that it can be given back if it must be undone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Taken<R> {
    One(usize, R),
    /// Taken from several shards; `slow` when not only from the key's two candidates.
    Gathered {
        receipts: Vec<(usize, R)>,
        slow: bool,
    },
}

/// Gathering retries when other threads drain shards between our read and our take.
const GATHER_ATTEMPTS: usize = 16;

#[derive(Debug)]
pub(crate) struct ShardSet<S: Shard> {
    pub(crate) slots: Box<[CachePadded<Slot<S>>]>,
    pub(crate) shared: S::Shared,
    /// Count what is asked of each shard (for rebalancing; a refusal then writes a line).
    measuring: AtomicBool,
    /// Keys are spread over the first `active` shards (rebalancing may run on fewer than
    /// it has, see `rebalance.rs`); the others serve only gathers.
    active: AtomicUsize,
    /// Only the first `span` shards have a share of the refill: the others hold nothing,
    /// waste nothing and owe nothing, and whatever scans the set skips them.
    span: AtomicUsize,
    /// The keys whose demand exceeds a shard's share, spread over every shard in use.
    pub(crate) hot: HotKeys,
}

impl<S: Shard> ShardSet<S> {
    pub(crate) fn new(shards: impl IntoIterator<Item = S>, shared: S::Shared) -> Self {
        let slots: Box<[_]> = shards
            .into_iter()
            .map(|shard| {
                CachePadded::new(Slot {
                    shard,
                    served: AtomicU64::new(0),
                    gathered: AtomicU64::new(0),
                    asked: AtomicU64::new(0),
                })
            })
            .collect();
        assert!(!slots.is_empty(), "a shard set needs at least one shard");
        let (active, span) = (AtomicUsize::new(slots.len()), AtomicUsize::new(slots.len()));
        Self {
            slots,
            shared,
            measuring: AtomicBool::new(false),
            active,
            span,
            hot: HotKeys::default(),
        }
    }

    /// Spreads keys over the first `active` shards, the first `span` having a share of the
    /// refill; only while no take can start.
    pub(crate) fn set_active(&self, active: usize, span: usize) {
        self.active.store(active, Ordering::SeqCst);
        self.span.store(span, Ordering::SeqCst);
    }

    /// The shards with a share of the refill (the others hold nothing).
    #[inline]
    pub(crate) fn live(&self) -> &[CachePadded<Slot<S>>] {
        &self.slots[..self.span.load(Ordering::Relaxed)]
    }

    /// The shards keys spread over.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// From now on, counts the units asked of each shard.
    pub(crate) fn measure_demand(&self) {
        self.measuring.store(true, Ordering::Relaxed);
    }

    /// Units asked of each shard since the set was made (wrapping).
    pub(crate) fn asked(&self) -> Vec<u64> {
        self.slots
            .iter()
            .map(|s| s.asked.load(Ordering::Relaxed))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn shard(&self, index: usize) -> &S {
        &self.slots[index].shard
    }

    pub(crate) fn available(&self, now: S::Time) -> u64 {
        S::total_available(self, now)
    }

    pub(crate) fn served(&self) -> Vec<u64> {
        self.slots
            .iter()
            .map(|s| s.served.load(Ordering::Relaxed))
            .collect()
    }

    /// Admissions served by gathering, out of all that `served` counts.
    pub(crate) fn gathered(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.gathered.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    pub(crate) fn clear_served(&self) {
        for slot in self.slots.iter() {
            slot.served.store(0, Ordering::Relaxed);
            slot.gathered.store(0, Ordering::Relaxed);
        }
    }

    /// The key's two candidate shards (among the active ones).
    #[inline]
    pub(crate) fn candidates(&self, hash: u64) -> (usize, usize) {
        candidates(hash, self.active.load(Ordering::Relaxed))
    }

    /// Takes `units` for the key with `hash`, or refuses without writing anything.
    /// The caller has checked `units` against the total capacity.
    #[inline(always)]
    pub(crate) fn acquire(
        &self,
        clock: &Clock,
        now: S::Time,
        hash: u64,
        units: u64,
    ) -> Outcome<Taken<S::Receipt>> {
        if self.span.load(Ordering::Relaxed) == 1 {
            self.count_asked(0, units);
            return match self.slots[0].shard.try_take(now, units) {
                Some(receipt) => self.admitted(0, Taken::One(0, receipt)),
                None => Outcome::Refused {
                    shard: 0,
                    wait: S::wait_for(self, now, units),
                },
            };
        }
        let measuring = self.measuring.load(Ordering::Relaxed);
        let hash = if measuring && self.hot.is_hot(hash) {
            hot::spread(hash, hot::draw())
        } else {
            hash
        };
        let (a, b) = self.candidates(hash);
        let (first, second) =
            if self.slots[a].shard.available(now) >= self.slots[b].shard.available(now) {
                (a, b)
            } else {
                (b, a)
            };
        self.count_asked(first, units);
        // The usual case, whatever the skew: O(1), touching only the candidates' lines.
        if let Some(receipt) = S::take_unsettled(self, first, now, units) {
            return self.admitted(first, Taken::One(first, receipt));
        }
        S::settle(self, now);
        for index in [first, second] {
            if let Some(receipt) = self.slots[index].shard.try_take(now, units) {
                return self.admitted(index, Taken::One(index, receipt));
            }
        }
        self.gather(clock, now, (first, second), units)
    }

    /// Counts `units` asked of shard `index`, while the set measures demand.
    #[inline(always)]
    fn count_asked(&self, index: usize, units: u64) {
        if self.measuring.load(Ordering::Relaxed) {
            self.slots[index].asked.fetch_add(units, Ordering::Relaxed);
        }
    }

    /// Serves a request no single candidate can: takes what the fuller candidate has,
    /// then the other, then every other shard in turn (the slow path), and gives
    /// everything back if other threads got there first.
    #[cold]
    fn gather(
        &self,
        clock: &Clock,
        now: S::Time,
        (first, second): (usize, usize),
        units: u64,
    ) -> Outcome<Taken<S::Receipt>> {
        let n = self.live().len();
        let others = (1..n)
            .map(|offset| (first + offset) % n)
            .filter(|&index| index != second);
        let order = || [first, second].into_iter().chain(others.clone());
        let mut receipts = Vec::new();
        for _ in 0..GATHER_ATTEMPTS {
            if self.available(now) < units {
                break;
            }
            let mut got = 0;
            for index in order() {
                if let Some((taken, receipt)) = self.slots[index].shard.take_up_to(now, units - got)
                {
                    got += taken;
                    receipts.push((index, receipt));
                    if got == units {
                        let slow = receipts.iter().any(|&(i, _)| i != first && i != second);
                        if slow {
                            let counter = &self.slots[receipts[0].0].gathered;
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        return self.admitted(first, Taken::Gathered { receipts, slow });
                    }
                }
            }
            self.return_receipts(std::mem::take(&mut receipts), clock);
        }
        Outcome::Refused {
            shard: first,
            wait: S::wait_for(self, now, units),
        }
    }

    /// Undoes an admission (a decision that must not stand); a gathered one is no longer
    /// counted as gathered.
    pub(crate) fn give_back(&self, taken: Taken<S::Receipt>, clock: &Clock) {
        match taken {
            Taken::One(index, receipt) => S::give_back(self, index, receipt, clock),
            Taken::Gathered { receipts, slow } => {
                if slow {
                    self.slots[receipts[0].0]
                        .gathered
                        .fetch_sub(1, Ordering::Relaxed);
                }
                self.return_receipts(receipts, clock);
            }
        }
    }

    /// Gives back what a gather took (its lost race, or its admission undone).
    fn return_receipts(&self, receipts: Vec<(usize, S::Receipt)>, clock: &Clock) {
        for (index, receipt) in receipts {
            S::give_back(self, index, receipt, clock);
        }
    }

    /// Counts an admission as served, or, for one being undone, no longer served.
    pub(crate) fn count_served(&self, shard: usize, served: bool) {
        let counter = &self.slots[shard].served;
        if served {
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[inline]
    fn admitted(&self, shard: usize, receipt: Taken<S::Receipt>) -> Outcome<Taken<S::Receipt>> {
        self.count_served(shard, true);
        Outcome::Admitted { shard, receipt }
    }
}

/// A key's two candidate shards out of `n`, from independent halves of its hash.
#[inline]
pub(crate) fn candidates(hash: u64, n: usize) -> (usize, usize) {
    let n = n as u64;
    let a = reduce(hash, n);
    let b = reduce(hash.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15, n);
    if a == b && n > 1 {
        (a as usize, ((a + 1) % n) as usize)
    } else {
        (a as usize, b as usize)
    }
}

/// Maps a 64-bit hash onto `0..n` without a division (Lemire's multiply-shift).
#[inline]
fn reduce(hash: u64, n: u64) -> u64 {
    ((hash as u128 * n as u128) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::gcra::{GcraShard, Settlement};
    use crate::memory::params::{Scale, Ticks};

    fn set(n: usize) -> ShardSet<GcraShard> {
        ShardSet::new(
            (0..n).map(|_| GcraShard::new(100, 0)),
            Settlement::new(0, Scale::per_nano(32)),
        )
    }

    #[test]
    fn candidates_are_two_distinct_shards_in_range() {
        for n in [2, 3, 16, 1000] {
            let s = set(n);
            for hash in (0..10_000u64).map(|i| i.wrapping_mul(0x2545_F491_4F6C_DD1D)) {
                let (a, b) = s.candidates(hash);
                assert!(a < n && b < n && a != b);
            }
        }
        assert_eq!(set(1).candidates(42), (0, 0));
    }

    #[test]
    fn the_fuller_candidate_serves() {
        let clock = Clock::Manual(Default::default());
        let s = set(2);
        let hash = 7;
        let (a, b) = s.candidates(hash);
        s.shard(a).try_take(Ticks::at(0), 60).unwrap();
        // b has 100 ticks, a has 40: the request goes to b even though a could serve it.
        assert!(matches!(
            s.acquire(&clock, Ticks::at(0), hash, 30),
            Outcome::Admitted { shard, .. } if shard == b
        ));
        assert_eq!(s.shard(a).available(Ticks::at(0)), 40);
        assert_eq!(s.shard(b).available(Ticks::at(0)), 70);
    }

    #[test]
    fn a_request_larger_than_any_shard_is_gathered() {
        let clock = Clock::Manual(Default::default());
        let s = set(16);
        assert!(matches!(
            s.acquire(&clock, Ticks::at(0), 1, 1_550),
            Outcome::Admitted { .. }
        ));
        assert_eq!(s.available(Ticks::at(0)), 50);
        assert_eq!(s.gathered(), 1);
        // Refused without writing anything.
        let before: Vec<u64> = (0..16)
            .map(|i| s.shard(i).available(Ticks::at(0)))
            .collect();
        assert!(matches!(
            s.acquire(&clock, Ticks::at(0), 1, 60),
            Outcome::Refused { .. }
        ));
        let after: Vec<u64> = (0..16)
            .map(|i| s.shard(i).available(Ticks::at(0)))
            .collect();
        assert_eq!(before, after);
        assert_eq!(s.gathered(), 1);
    }
}
