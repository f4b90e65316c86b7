//! Token bucket shard as GCRA: the whole state is one atomic "theoretical arrival time".
//!
//! Credit is counted in ticks of the limiter's clock scale (`params.rs`): up to 32 per
//! nanosecond, chosen so that a token costs whole ticks and so does a nanosecond wherever a
//! small whole number of ticks per nanosecond can do it (then nothing is rounded), and
//! otherwise so that the rate is exact to one part in a million (rounded down); u64 ticks
//! last at least 18 years of limiter uptime. A shard with capacity `C` ticks and TAT `t` has
//! `C - max(t - now, 0)` ticks of credit at `now`, and gains one tick of credit per tick of
//! its own time until full (a shard's time runs at its share of the refill, `Pace`: the
//! set's time, until an adaptive limiter moves the shares). Taking `x` ticks moves the TAT to `max(t, now) + x`, with `now` rounded
//! down for the credit and up for the TAT (`Ticks`). A refusal never writes, so a hot
//! refused key does not bounce its line.
//!
//! A full shard cannot hold its refill, but the budget as a whole is only full when every
//! shard is. So before each take the set *settles*: the refill that full shards could not
//! hold since the last settlement is claimed (by moving the set's `settled` time up to now)
//! and deposited into shards with room; only what no shard has room for is lost, exactly as
//! one unsharded bucket loses refill only when full. Takes settle first, so waste from a
//! time when the whole budget was full is discarded before anything makes room for it.
//!
//! Escrow (see `budget.rs`) is capacity: holding `u` ticks lowers the capacities of shards
//! with credit by `u` in all (their TATs stay, so the credit falls by `u` and cannot refill
//! back); releasing raises capacities back towards their shares; consuming raises them and
//! takes as much at once, so the spent tokens refill like any other take.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, Nanos};
use crate::memory::budget::{Budget, Outcome, Promises};
use crate::memory::hot::HotKeys;
use crate::memory::keyed::KeyCell;
use crate::memory::params::{Params, Scale, Ticks};
use crate::memory::rebalance::Demand;
use crate::memory::shard::{Shard, ShardSet, Taken};
use crate::memory::weights::{Weights, EVEN};
use crate::model::LOOK_AHEAD;
use parking_lot::Mutex;

#[derive(Debug)]
pub(crate) struct GcraShard {
    /// In the shard's own time (`Pace`), as is everything below that reads `now`.
    tat: AtomicU64,
    /// Changes only while the limiter is being re-rated or rebalanced (see `limiter.rs`).
    capacity: AtomicU64,
    pace: Pace,
    /// Takes that lost a race for the TAT and tried again: how contended the shard is.
    collisions: AtomicU64,
    /// Capacity a draining shard lent the others and still owes them: its capacity is 0,
    /// its use turned debt, and what it repays goes back to them (see `TokenBucket::reweigh`).
    lent: AtomicU64,
}

/// How fast a shard refills: its time runs at `weight / EVEN` of the set's,
/// `local(t) = base + ((t - epoch) * weight + carry) / EVEN`, so that a shard of weight `w`
/// gains `w / EVEN` ticks of credit per tick. Every weight is [`EVEN`] (the shard's time is
/// the set's) until rebalancing moves them, and then they still add up to `n * EVEN`: the
/// set refills `n` ticks per tick, less at most `n - 1` in fractions of a tick not yet
/// whole in some shard (`Settlement::lag`). A change of weight rebases the map at that
/// instant, carrying the fraction, so no shard's time jumps. Written only while no take
/// can start (the limiter's version is odd); a take that read it half-written decides again.
#[derive(Debug)]
struct Pace {
    base: AtomicU64,
    epoch: AtomicU64,
    /// `weight << 16 | carry`, the carry being the fraction of a tick (in 1/EVEN).
    weight: AtomicU64,
}

/// The packed weight of a shard whose time is the set's.
const SAME: u64 = EVEN << 16;

impl Pace {
    fn same() -> Self {
        Self {
            base: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            weight: AtomicU64::new(SAME),
        }
    }

    /// The map as it stands (one read of each field).
    #[inline(always)]
    fn map(&self) -> Map {
        Map {
            base: self.base.load(Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Relaxed),
            packed: self.weight.load(Ordering::Relaxed),
        }
    }

    /// The set's tick `t` in this shard's time, rounded down.
    #[inline(always)]
    fn local(&self, t: u64) -> u64 {
        self.map().local(t)
    }

    /// The set's tick `t` in this shard's time, rounded up.
    fn local_up(&self, t: u64) -> u64 {
        self.map().local_up(t)
    }

    /// A reading of the set's time in this shard's: down for credit, up for a restart.
    #[inline(always)]
    fn read(&self, now: Ticks) -> Ticks {
        let map = self.map();
        Ticks {
            now: map.local(now.now),
            start: map.local_up(now.start),
        }
    }

    /// The first tick of the set's time at which this shard's time reaches `local`.
    fn global(&self, local: u64) -> u64 {
        let base = self.base.load(Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::Relaxed);
        let packed = self.weight.load(Ordering::Relaxed);
        let (weight, carry) = ((packed >> 16) as u128, (packed & (EVEN - 1)) as u128);
        let ahead = ((local.saturating_sub(base) as u128) << 16).saturating_sub(carry);
        if ahead == 0 {
            return epoch;
        }
        if weight == 0 {
            return u64::MAX; // its time stands still
        }
        let since = ahead.div_ceil(weight);
        epoch.saturating_add(since.min(u64::MAX as u128) as u64)
    }

    /// From the set's tick `t` on, runs at `weight`, without a jump at `t`.
    fn rebase(&self, t: u64, weight: u64) {
        let (base, scaled) = self.map().exact(t);
        let whole = (scaled >> 16).min(u64::MAX as u128) as u64;
        self.base
            .store(base.saturating_add(whole), Ordering::SeqCst);
        self.epoch
            .store(t.max(self.epoch.load(Ordering::Relaxed)), Ordering::SeqCst);
        let carry = (scaled & u128::from(EVEN - 1)) as u64;
        self.weight.store(weight << 16 | carry, Ordering::SeqCst);
    }

    /// Runs at `weight` from the set's tick `t`, the shard's time reading `t` there (a
    /// re-rating sets every shard anew); at an even weight, the set's time throughout.
    fn restart(&self, t: u64, weight: u64) {
        let t = if weight == EVEN { 0 } else { t };
        self.base.store(t, Ordering::SeqCst);
        self.epoch.store(t, Ordering::SeqCst);
        self.weight.store(weight << 16, Ordering::SeqCst);
    }
}

/// A shard's `Pace` read at once.
#[derive(Clone, Copy)]
struct Map {
    base: u64,
    epoch: u64,
    packed: u64,
}

impl Map {
    /// The set's tick `t` in the shard's time, as a multiple of 1/EVEN of a tick past `base`.
    #[inline(always)]
    fn exact(self, t: u64) -> (u64, u128) {
        let since = t.saturating_sub(self.epoch) as u128;
        let scaled = since * (self.packed >> 16) as u128 + (self.packed & (EVEN - 1)) as u128;
        (self.base, scaled)
    }

    #[inline(always)]
    fn local(self, t: u64) -> u64 {
        if self.packed == SAME {
            return self.base.saturating_add(t.saturating_sub(self.epoch));
        }
        let (base, scaled) = self.exact(t);
        base.saturating_add((scaled >> 16).min(u64::MAX as u128) as u64)
    }

    #[inline(always)]
    fn local_up(self, t: u64) -> u64 {
        if self.packed == SAME {
            return self.local(t);
        }
        let (base, scaled) = self.exact(t);
        base.saturating_add(scaled.div_ceil(EVEN as u128).min(u64::MAX as u128) as u64)
    }
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
            capacity: AtomicU64::new(capacity),
            pace: Pace::same(),
            collisions: AtomicU64::new(0),
            lent: AtomicU64::new(0),
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    pub(crate) fn tat(&self) -> u64 {
        self.tat.load(Ordering::Relaxed)
    }

    /// Re-sizes the shard and sets its state, its time starting at the set's tick `now`;
    /// only for a limiter being re-rated or reset.
    fn reconfigure(&self, capacity: u64, tat: u64, now: u64, weight: u64) {
        self.pace.restart(now, weight);
        self.capacity.store(capacity, Ordering::SeqCst);
        self.tat.store(tat, Ordering::SeqCst);
    }

    /// The set's tick `now` in this shard's time.
    #[inline(always)]
    fn local(&self, now: u64) -> u64 {
        self.pace.local(now)
    }

    /// Re-sizes the shard, TAT unchanged: its credit moves by the same amount (escrow).
    fn set_capacity(&self, capacity: u64) {
        self.capacity.store(capacity, Ordering::SeqCst);
    }

    /// Takes `taken` ticks whatever the credit (escrow being spent: its capacity was just
    /// raised by as much).
    fn force_take(&self, now: Ticks, taken: u64) {
        let now = self.pace.read(now);
        let _ = self
            .tat
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |tat| {
                Some(tat.max(now.start) + taken)
            });
    }

    #[inline]
    fn credit(&self, tat: u64, now: u64) -> u64 {
        credit(self.capacity(), tat, now)
    }

    /// Empty until `until` (ticks), refilling from there: the TAT moves to at least
    /// `until + capacity`. Composes with racing takes, which only raise it too.
    fn owe_until(&self, until: u64) {
        let until = self.local(until);
        self.tat
            .fetch_max(until.saturating_add(self.headroom()), Ordering::SeqCst);
    }

    /// After the capacity rose by `added` (escrow given back): a shard that still owed refill
    /// keeps owing the same, so a back-off admits nothing until it ends and then refills
    /// from empty, the larger capacity included.
    fn keep_owing(&self, now: u64, added: u64) {
        let now = self.pace.local_up(now);
        if self.tat() > now.saturating_add(self.capacity() - added) {
            self.tat.fetch_add(added, Ordering::SeqCst);
        }
    }

    /// Refill owed at `now` before the shard has any credit again, beyond what a draining
    /// shard owes for what it lent. Measured from the shard's time rounded up: a shard that
    /// restarted from there (see `Ticks`) owes nothing.
    fn owed(&self, now: u64) -> u64 {
        self.tat()
            .saturating_sub(self.pace.local_up(now).saturating_add(self.headroom()))
    }

    /// How far the TAT may stand ahead of the shard's time without a back-off: its
    /// capacity, or, draining, what it lent.
    fn headroom(&self) -> u64 {
        self.capacity() + self.lent.load(Ordering::SeqCst)
    }

    /// What a draining shard has repaid of what it lent and not yet given back.
    fn repaid(&self, now: u64) -> u64 {
        let lent = self.lent.load(Ordering::SeqCst);
        lent.saturating_sub(self.tat().saturating_sub(self.local(now)))
    }

    /// The set's first tick at which this shard is full (a draining shard: at once, so
    /// that settles run and give its repayments back).
    fn full_from(&self) -> u64 {
        if self.lent.load(Ordering::Relaxed) > 0 {
            return 0;
        }
        self.pace.global(self.tat())
    }

    /// The set's tick at which a back-off this shard owes ends (its credit starts to
    /// refill from empty); at or before `now` when it owes nothing.
    fn owed_until(&self) -> u64 {
        self.pace.global(self.tat().saturating_sub(self.headroom()))
    }
}

impl GcraShard {
    /// Refill the set owes after a back-off, before it has credit again.
    fn owed_by(set: &ShardSet<Self>, now: u64) -> u64 {
        set.live().iter().map(|s| s.shard.owed(now)).sum()
    }

    /// Gives back what draining shards repaid, as capacity (and so credit) of a shard
    /// keys spread over: raising a capacity is safe beside racing takes.
    fn repay(set: &ShardSet<Self>, now: u64) {
        for (i, slot) in set.live().iter().enumerate() {
            let shard = &slot.shard;
            let lent = shard.lent.load(Ordering::SeqCst);
            let repaid = shard.repaid(now);
            if repaid == 0 {
                continue;
            }
            // Claimed once, by whoever lowers what is lent.
            if shard
                .lent
                .compare_exchange(lent, lent - repaid, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                let heir = &set.slots[i % set.active()].shard;
                heir.capacity.fetch_add(repaid, Ordering::SeqCst);
                set.shared.unsettle();
            }
        }
    }

    /// Ticks of credit the set lacks for `units`, counting refill owed after a back-off.
    fn short(set: &ShardSet<Self>, now: Ticks, units: u64) -> u64 {
        let owed = Self::owed_by(set, now.now);
        units
            .saturating_add(owed)
            .saturating_sub(<Self as Shard>::total_available(set, now))
    }

    /// The refill this shard has wasted since it filled (its TAT is below `now`), not
    /// counting what was settled before `settled`.
    #[inline]
    fn waste(&self, now: u64, settled: u64) -> u64 {
        self.local(now)
            .saturating_sub(self.tat().max(self.local(settled)))
    }

    /// Adds up to `amount` ticks of credit, never past capacity; returns what it added.
    fn deposit(&self, now: u64, amount: u64, horizon: &AtomicU64) -> u64 {
        let now = self.local(now);
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
                Ok(_) => {
                    horizon.fetch_min(self.pace.global(current - added), Ordering::SeqCst);
                    return added;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

/// What a token-bucket shard set shares: when refill was last settled, the earliest time
/// any shard can be full (before it there is nothing to settle), the earliest time the
/// budget as a whole can be full (before it a take need not settle), and the clock's scale.
#[derive(Debug)]
pub(crate) struct Settlement {
    settled: CachePadded<AtomicU64>,
    horizon: CachePadded<AtomicU64>,
    /// Refill is lost only while the budget as a whole is full: its credit plus the refill
    /// full shards have wasted and nobody has settled yet reaches the shards' capacities.
    /// That sum grows one tick per shard per tick and takes only lower it, so before this
    /// tick, computed by the last settle, it cannot be full, and settling later moves the
    /// same refill: a take from a shard that is not full may skip the settle and touch
    /// only its own shards. 0 (settle at once) after whatever else raises credit or lowers
    /// capacity.
    full_at: CachePadded<AtomicU64>,
    /// Ticks of refill that may still be fractions in the shards (`Pace`): 0 while the
    /// weights are even, `n - 1` otherwise; waits and slots count it as not yet there.
    lag: AtomicU64,
    scale: Scale,
}

impl Settlement {
    /// For shards that are all full at tick `now` (or, with a later horizon, all short).
    pub(crate) fn new(now: u64, scale: Scale) -> Self {
        Self {
            settled: CachePadded::new(AtomicU64::new(now)),
            horizon: CachePadded::new(AtomicU64::new(now)),
            full_at: CachePadded::new(AtomicU64::new(0)),
            lag: AtomicU64::new(0),
            scale,
        }
    }

    /// After every shard was set anew (re-rating, rebalancing): nothing older than `now`
    /// to settle.
    fn restart(&self, now: u64, horizon: u64) {
        self.settled.store(now, Ordering::SeqCst);
        self.horizon.store(horizon, Ordering::SeqCst);
        self.unsettle();
    }

    /// Until `restart`, no settle can claim refill: the shards' times are being changed.
    fn suspend(&self) {
        self.settled.store(u64::MAX, Ordering::SeqCst);
    }

    fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Credit rose or capacity fell other than by refill and takes: the next take settles.
    fn unsettle(&self) {
        self.full_at.store(0, Ordering::SeqCst);
    }
}

/// Credit of `capacity` ticks under TAT `tat` at `now`.
#[inline]
fn credit(capacity: u64, tat: u64, now: u64) -> u64 {
    capacity.saturating_sub(tat.saturating_sub(now))
}

/// One CAS loop for every kind of take, a shard's or a key's: `want(credit)` says how much
/// to take from the TAT `tat` of a bucket of `capacity` ticks. A bucket that was full
/// restarts from `now.start` (see [`Ticks`]). Each lost race counts in `collisions`.
#[inline]
fn take_from(
    tat: &AtomicU64,
    capacity: u64,
    now: Ticks,
    want: impl Fn(u64) -> u64,
    collisions: Option<&AtomicU64>,
) -> Option<(u64, Receipt)> {
    let mut current = tat.load(Ordering::Relaxed);
    loop {
        let taken = want(credit(capacity, current, now.now));
        if taken == 0 {
            return None;
        }
        let end = current.max(now.start) + taken;
        // SeqCst: a limiter being re-rated or booking must see every take that raced
        // with it; on x86 a locked CAS costs the same either way.
        match tat.compare_exchange_weak(current, end, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return Some((taken, Receipt { taken, end })),
            Err(actual) => {
                if let Some(collisions) = collisions {
                    collisions.fetch_add(1, Ordering::Relaxed);
                }
                current = actual;
            }
        }
    }
}

/// Gives back only what no later take can have built on. A later take at time `s` may
/// have started from `s` instead of our `end` (the shard had refilled past it), absorbing
/// part of our credit; giving back `min(taken, end - now)` never lowers the TAT below
/// what it would be had we never taken, so I1 holds. With a frozen clock it is exact.
/// Returns the TAT it restored, if it gave anything back.
fn refund(tat: &AtomicU64, receipt: Receipt, now: impl Fn() -> u64) -> Option<u64> {
    let mut current = tat.load(Ordering::Relaxed);
    loop {
        let now = now();
        let refund = receipt.taken.min(receipt.end.saturating_sub(now));
        if refund == 0 {
            return None;
        }
        // Never past capacity: a TAT below `now` would be credit the bucket cannot hold.
        let restored = current.saturating_sub(refund).max(now);
        if restored >= current {
            return None;
        }
        match tat.compare_exchange_weak(current, restored, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return Some(restored),
            Err(actual) => current = actual,
        }
    }
}

impl Shard for GcraShard {
    type Receipt = Receipt;
    type Shared = Settlement;
    type Time = Ticks;

    #[inline]
    fn available(&self, now: Ticks) -> u64 {
        self.credit(self.tat.load(Ordering::Relaxed), self.local(now.now))
    }

    #[inline]
    fn take(&self, now: Ticks, want: impl Fn(u64) -> u64) -> Option<(u64, Receipt)> {
        let collisions = Some(&self.collisions);
        take_from(
            &self.tat,
            self.capacity(),
            self.pace.read(now),
            want,
            collisions,
        )
    }

    fn give_back(set: &ShardSet<Self>, index: usize, receipt: Receipt, clock: &Clock) {
        let (scale, shard) = (set.shared.scale, set.shard(index));
        let now = || shard.local(scale.ticks(clock.now()));
        if let Some(restored) = refund(&shard.tat, receipt, now) {
            let restored = shard.pace.global(restored);
            set.shared.horizon.fetch_min(restored, Ordering::SeqCst);
            set.shared.unsettle();
        }
    }

    /// Settled, the set refills like one bucket: `N` ticks of credit per tick of time
    /// (the shards' weights add up to `N`) until the whole budget is full, less what is
    /// still a fraction of a tick in some shard.
    fn wait_for(set: &ShardSet<Self>, now: Ticks, units: u64) -> Nanos {
        let short = match Self::short(set, now, units) {
            0 => 0,
            short => short.saturating_add(set.shared.lag()),
        };
        set.shared.scale.nanos(short.div_ceil(set.len() as u64))
    }

    /// The horizon is the earliest TAT of any shard: before it no shard is full, nothing is
    /// wasted, and a take needs to look at its own shards only. Takes only raise TATs; the
    /// deposits and give-backs that lower one lower the horizon with it.
    fn settle(set: &ShardSet<Self>, now: Ticks) {
        let now = now.now;
        let Settlement {
            settled,
            horizon,
            full_at,
            ..
        } = &set.shared;
        let seen_full_at = full_at.load(Ordering::SeqCst);
        let seen_horizon = horizon.load(Ordering::SeqCst);
        if now < seen_horizon {
            return;
        }
        let shards = || set.live().iter().map(|s| &s.shard);
        loop {
            let since = settled.load(Ordering::SeqCst);
            if since >= now {
                break;
            }
            let wasted: u64 = shards().map(|s| s.waste(now, since)).sum();
            // Claim the interval: whoever moves `settled` deposits its waste, once.
            if settled
                .compare_exchange(since, now, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let mut wasted = wasted;
            for shard in shards() {
                if wasted == 0 {
                    break;
                }
                wasted -= shard.deposit(now, wasted, horizon);
            }
            // Whatever is left found every shard full: the whole budget is full and loses it.
            let (credit, capacity) = shards().fold((0u64, 0u64), |(credit, capacity), s| {
                (
                    credit + s.credit(s.tat(), s.local(now)),
                    capacity + s.capacity(),
                )
            });
            let until_full = (capacity - credit) / set.len() as u64;
            // Unless something unsettled it meanwhile.
            let _ = full_at.compare_exchange(
                seen_full_at,
                now.saturating_add(until_full),
                Ordering::SeqCst,
                Ordering::Relaxed,
            );
            break;
        }
        Self::repay(set, now);
        let earliest = shards().map(GcraShard::full_from).min().unwrap_or(now);
        // Only if nothing lowered the horizon meanwhile; a lower one stays valid.
        let _ =
            horizon.compare_exchange(seen_horizon, earliest, Ordering::SeqCst, Ordering::Relaxed);
    }

    /// Skipping the settle is exact when the budget as a whole cannot be full yet (see
    /// `Settlement::full_at`) and the shard is not full: a full shard's refill since it
    /// filled would vanish under the take, so it settles first.
    #[inline]
    fn take_unsettled(
        set: &ShardSet<Self>,
        index: usize,
        now: Ticks,
        units: u64,
    ) -> Option<Receipt> {
        if now.now >= set.shared.full_at.load(Ordering::SeqCst) {
            return None;
        }
        let shard = set.shard(index);
        let capacity = shard.capacity();
        let want = |credit| {
            if credit >= units && credit < capacity {
                units
            } else {
                0
            }
        };
        let collisions = Some(&shard.collisions);
        take_from(&shard.tat, capacity, shard.pace.read(now), want, collisions)
            .map(|(_, receipt)| receipt)
    }

    /// Credit held now, plus the waste a settle would move into shards with room.
    #[inline]
    fn total_available(set: &ShardSet<Self>, now: Ticks) -> u64 {
        let now = now.now;
        let shards = set.live().iter().map(|s| &s.shard);
        if now < set.shared.horizon.load(Ordering::Relaxed) {
            // No shard is full, so none has wasted anything: the credits are the answer.
            return shards.map(|s| s.credit(s.tat(), s.local(now))).sum();
        }
        let settled = set.shared.settled.load(Ordering::SeqCst);
        let (mut credit, mut waste, mut room) = (0u64, 0u64, 0u64);
        for slot in set.live() {
            let shard = &slot.shard;
            let map = shard.pace.map();
            let (tat, local, capacity) = (shard.tat(), map.local(now), shard.capacity());
            let ahead = tat.saturating_sub(local);
            credit += capacity.saturating_sub(ahead);
            waste += local.saturating_sub(tat.max(map.local(settled)));
            // A draining shard's repayments count as credit, and its debt as room.
            match shard.lent.load(Ordering::Relaxed) {
                0 => room += ahead.min(capacity),
                lent => {
                    credit += lent.saturating_sub(ahead);
                    room += ahead.min(lent);
                }
            }
        }
        credit + waste.min(room)
    }
}

/// The token bucket: GCRA shards that refill like one bucket.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    set: ShardSet<GcraShard>,
    /// Escrow no shard's capacity could hold (after `set_rate` lowered the burst below
    /// it); paid back first. Touched only while the limiter's account is locked.
    overheld: AtomicU64,
    /// Each shard's share of the refill and the burst; changed while no take can start.
    weights: Mutex<Weights>,
}

impl TokenBucket {
    /// `now` on the limiter's clock in ticks: the shards' time.
    #[inline(always)]
    fn ticks(&self, now: Nanos) -> Ticks {
        self.set.shared.scale.read(now)
    }

    /// Pays `units` of escrow back at `now` (in ticks): what no capacity held first, then shard by shard up to
    /// each shard's share of the burst, telling `restored` what each shard got back.
    fn restore(
        &self,
        now: Ticks,
        params: &Params,
        units: u64,
        mut restored: impl FnMut(&GcraShard, u64),
    ) {
        // Refill wasted while the budget was full must not flow into the room made now.
        GcraShard::settle(&self.set, now);
        let overheld = self.overheld.load(Ordering::Relaxed);
        let paid = overheld.min(units);
        self.overheld.store(overheld - paid, Ordering::Relaxed);
        let mut rest = units - paid;
        let shares = self.burst_shares(params);
        for (slot, share) in self.set.slots.iter().zip(shares) {
            if rest == 0 {
                break;
            }
            let shard = &slot.shard;
            let capacity = shard.capacity();
            let added = share.saturating_sub(capacity).min(rest);
            if added > 0 {
                shard.set_capacity(capacity + added);
                restored(shard, added);
                rest -= added;
            }
        }
        debug_assert_eq!(rest, 0, "escrow is never more than the shards gave up");
        self.set.shared.unsettle();
    }
}

impl TokenBucket {
    /// When the settled budget would be full again, as a mark, counting escrow as spent
    /// and refill owed to a back-off as still to come.
    fn backlog(&self, now: Nanos, params: &Params) -> i128 {
        let ticks = self.ticks(now);
        let free = GcraShard::total_available(&self.set, ticks) as i128;
        let owed = GcraShard::owed_by(&self.set, ticks.now);
        self.mark(now) + params.capacity as i128 - free + owed as i128
    }

    /// The mark at which the budget, at `start` now, has refilled to `needed`: that, and
    /// what may still be fractions of a tick in the shards (`Settlement::lag`), if it has
    /// anything to refill.
    fn refilled(&self, start: i128, needed: i128) -> i128 {
        if needed <= start {
            return start;
        }
        needed + self.set.shared.lag() as i128
    }

    /// The first nanosecond at which the budget has refilled to `mark`.
    fn at_mark(&self, mark: i128) -> Nanos {
        let n = self.set.len() as i128;
        let ticks = (mark.max(0) + n - 1) / n;
        self.set
            .shared
            .scale
            .nanos(ticks.min(u64::MAX as i128) as u64)
    }

    /// Each shard's part of the capacity `params` give, less what draining shards lent:
    /// the live shards' shares of the burst.
    fn burst_shares(&self, params: &Params) -> Vec<u64> {
        let lent: Vec<u64> = self
            .shards()
            .map(|s| s.lent.load(Ordering::SeqCst))
            .collect();
        let weights = self.weights.lock();
        let live = |i: usize| lent[i] == 0 && weights.get(i) > 0;
        weights.split_among(params.capacity - lent.iter().sum::<u64>(), live)
    }

    fn shards(&self) -> impl Iterator<Item = &GcraShard> {
        self.set.slots.iter().map(|s| &s.shard)
    }

    /// The set's first tick at which some shard is full.
    fn earliest_full(&self) -> u64 {
        self.shards().map(GcraShard::full_from).min().unwrap_or(0)
    }

    /// A one-shard bucket whose TAT is `tat` ticks (a key's bucket when it opens a book).
    pub(crate) fn starting_at(params: &Params, tat: u64, now: Nanos) -> Self {
        let now = params.scale.ticks(now);
        Self {
            set: ShardSet::new(
                [GcraShard::new(params.capacity, tat)],
                Settlement::new(now, params.scale),
            ),
            overheld: AtomicU64::new(0),
            weights: Mutex::new(Weights::even(1)),
        }
    }
}

impl Budget for TokenBucket {
    type Receipt = Taken<Receipt>;

    fn new(params: &Params, now: Nanos) -> Self {
        let n = params.shards;
        let start = params.scale.ticks(now);
        Self {
            // Every shard starts full: its TAT is now.
            set: ShardSet::new(
                Weights::even(n)
                    .split(params.capacity)
                    .into_iter()
                    .map(|capacity| GcraShard::new(capacity, start)),
                Settlement::new(start, params.scale),
            ),
            overheld: AtomicU64::new(0),
            weights: Mutex::new(Weights::even(n)),
        }
    }

    #[inline]
    fn candidates(&self, hash: u64) -> (usize, usize) {
        self.set.candidates(hash)
    }

    #[inline(always)]
    fn acquire(&self, clock: &Clock, now: Nanos, hash: u64, units: u64) -> Outcome<Self::Receipt> {
        self.set.acquire(clock, self.ticks(now), hash, units)
    }

    fn give_back(&self, receipt: Self::Receipt, clock: &Clock) {
        self.set.give_back(receipt, clock);
    }

    #[inline]
    fn available(&self, now: Nanos) -> u64 {
        GcraShard::total_available(&self.set, self.ticks(now))
    }

    fn shard_available(&self, now: Nanos) -> Vec<u64> {
        let now = self.ticks(now);
        self.set
            .slots
            .iter()
            .map(|s| s.shard.available(now))
            .collect()
    }

    fn served(&self) -> Vec<u64> {
        self.set.served()
    }

    fn gathered(&self) -> u64 {
        self.set.gathered()
    }

    fn count_served(&self, shard: usize, served: bool) {
        self.set.count_served(shard, served);
    }

    fn clear_served(&self) {
        self.set.clear_served();
    }

    fn wait(&self, now: Nanos, _params: &Params, units: u64) -> Nanos {
        GcraShard::wait_for(&self.set, self.ticks(now), units)
    }

    /// After every promise (each no earlier than its slot, as the schedule's reach says),
    /// when the budget has `units` again.
    fn slot(&self, now: Nanos, params: &Params, promises: &Promises<'_>, units: u64) -> Nanos {
        let all = promises.schedule.all();
        let after = (self.backlog(now, params) + all.units).max(all.reach + all.units);
        let at = self.refilled(
            self.mark(now),
            after + units as i128 - params.capacity as i128,
        );
        self.at_mark(at).max(now).max(promises.tail())
    }

    /// Settled, the set refills like one bucket, `N` units per tick (the shards' weights add
    /// up to `N`).
    fn mark(&self, at: Nanos) -> i128 {
        self.set.len() as i128 * self.ticks(at).now as i128
    }

    /// Promise `k` is met if the budget, counting escrow as spent, is full again by
    /// `mark_k + capacity` after everything promised up to `k`: the credit now must cover
    /// `mark(now) - slack`.
    fn reserved(&self, now: Nanos, _params: &Params, promises: &Promises<'_>) -> u64 {
        let short = self.mark(now) - promises.schedule.all().slack;
        if short <= 0 {
            return 0;
        }
        (short + self.set.shared.lag() as i128).min(u64::MAX as i128) as u64
    }

    /// Tries the take in each gap of the schedule, in order: now, then after each promise
    /// (the budget following it as GCRA: `end = max(end, mark) + units`), the first that
    /// keeps every promise after it. Past [`LOOK_AHEAD`] promises it answers after the last.
    fn chance(&self, now: Nanos, params: &Params, promises: &Promises<'_>, units: u64) -> Nanos {
        let schedule = promises.schedule;
        let (cap, units) = (params.capacity as i128, units as i128);
        let (start, lag) = (self.mark(now), self.set.shared.lag() as i128);
        let mut end = self.backlog(now, params);
        let mut before = None;
        let mut promised = schedule.iter();
        for _ in 0..=LOOK_AHEAD {
            let next = promised.next();
            let at = self.refilled(start, end + units - cap);
            if next.is_none_or(|p| at < p.mark) {
                let rest = before.map_or_else(|| schedule.all(), |seq| schedule.after(seq));
                if end.max(at) + units + lag <= cap + rest.slack {
                    return self.at_mark(at).max(now) - now;
                }
            }
            let Some(p) = next else { break };
            end = end.max(p.mark) + p.units;
            before = Some(p.seq);
        }
        self.slot(now, params, promises, units as u64) - now
    }

    fn hold(&self, now: Nanos, _params: &Params, units: u64) {
        let now = self.ticks(now);
        GcraShard::settle(&self.set, now);
        let mut rest = units;
        for slot in self.set.slots.iter() {
            let shard = &slot.shard;
            let lowered = shard.available(now).min(rest);
            shard.set_capacity(shard.capacity() - lowered);
            rest -= lowered;
        }
        // Only a take racing the first booking (and given back) can have left credit
        // short: lower capacity below the debt, so that the give-back cannot free it.
        for slot in self.set.slots.iter() {
            let shard = &slot.shard;
            let lowered = shard.capacity().min(rest);
            shard.set_capacity(shard.capacity() - lowered);
            rest -= lowered;
        }
        self.overheld.fetch_add(rest, Ordering::Relaxed);
        self.set.shared.unsettle();
    }

    fn release(&self, now: Nanos, params: &Params, units: u64) {
        let now = self.ticks(now);
        self.restore(now, params, units, |shard, added| {
            shard.keep_owing(now.now, added)
        });
    }

    fn consume(&self, now: Nanos, params: &Params, hash: u64, units: u64) -> usize {
        let now = self.ticks(now);
        self.restore(now, params, units, |shard, added| {
            shard.force_take(now, added)
        });
        let shard = self.set.candidates(hash).0;
        self.set.count_served(shard, true);
        shard
    }

    fn owe_until(&self, now: Nanos, until: Nanos) {
        // Waste up to now moves first, so that none of it lands after the back-off.
        GcraShard::settle(&self.set, self.ticks(now));
        let until = self.ticks(until).now;
        for slot in self.set.slots.iter() {
            slot.shard.owe_until(until);
        }
        self.set.shared.unsettle();
    }

    /// Shares the new capacity, less the escrow, among the shards, and the credit (scaled
    /// to the new token cost, capped) the same way.
    fn retune(&self, now: Nanos, old: &Params, new: &Params, held: u64, refill: bool) {
        let held = held.saturating_mul(new.unit);
        let capacity = new.capacity.saturating_sub(held);
        self.overheld
            .store(held.saturating_sub(new.capacity), Ordering::Relaxed);
        let credit = if refill {
            capacity
        } else {
            let scaled = self.available(now) as u128 * new.unit as u128 / old.unit as u128;
            scaled.min(capacity as u128) as u64
        };
        // A back-off still owed outlives a re-rating (a reset forgives it).
        let owed = if refill {
            0
        } else {
            let ticks = self.ticks(now).now;
            let until = self.shards().map(GcraShard::owed_until).max();
            old.scale.nanos(until.unwrap_or(0).saturating_sub(ticks))
        };
        // Debts of draining shards are forgiven: every shard is set anew from the credit.
        for shard in self.shards() {
            shard.lent.store(0, Ordering::SeqCst);
        }
        let mut weights = self.weights.lock();
        if refill {
            // A reset forgets where demand was (and keeps the shards keys spread over).
            *weights = Weights::even_over(self.set.len(), self.set.active());
            let lag = if weights.is_even() {
                0
            } else {
                self.set.len() as u64 - 1
            };
            self.set.shared.lag.store(lag, Ordering::SeqCst);
        }
        self.set.set_active(self.set.active(), weights.span());
        let ticks = new.scale.ticks(now);
        let capacities = weights.split(capacity);
        let credits = weights.split_within(credit, &capacities);
        for (i, slot) in self.set.slots.iter().enumerate() {
            let (capacity, credit) = (capacities[i], credits[i]);
            slot.shard
                .reconfigure(capacity, ticks + (capacity - credit), ticks, weights.get(i));
        }
        drop(weights);
        if owed > 0 {
            self.owe_until(now, now.saturating_add(owed));
        }
        self.set.shared.restart(ticks, self.earliest_full());
    }

    fn parts(&self, params: &Params) -> (Vec<u64>, Vec<u64>) {
        let weights = self.weights.lock().clone();
        let n = weights.len();
        (
            (0..n).map(|i| weights.get(i)).collect(),
            self.burst_shares(params),
        )
    }

    fn rebalanced(&self) -> Option<(Weights, usize)> {
        self.set.measure_demand();
        Some((self.weights.lock().clone(), self.set.active()))
    }

    fn active(&self) -> usize {
        self.set.active()
    }

    fn demand(&self) -> Demand {
        let collisions = self.set.slots.iter().map(|s| &s.shard.collisions);
        Demand {
            asked: self.set.asked(),
            collisions: collisions
                .map(|c| c.load(Ordering::Relaxed))
                .fold(0, u64::wrapping_add),
        }
    }

    /// Moves the shards' shares of the refill and the burst toward `weights` at `now`,
    /// keys then spreading over the first `active` shards, keeping every unit and never
    /// writing a TAT: a take that raced this and gives itself back leaves the state exact.
    ///
    /// Each shard's time is rebased to its new weight without a jump, and capacity moves
    /// from shards with credit to shards whose share grew, never below what a shard has
    /// used. A shard that `weights` leaves without a share hands its credit over at once,
    /// but what it has used is refill still owed, and only its own time can repay it: it
    /// *drains*, with no capacity (nothing to take) and its weight, its use turned debt,
    /// and lends the others that much capacity. Each later call gives back, as capacity
    /// and credit, what it has repaid since (its refill, and any take given back to it),
    /// and once it owes nothing its weight goes to the others too. Returns whether the
    /// shares moved: not during a back-off. Runs while no take can start.
    fn reweigh(&self, now: Nanos, weights: Weights, active: usize) -> bool {
        let ticks = self.ticks(now);
        GcraShard::settle(&self.set, ticks);
        let shards: Vec<&GcraShard> = self.set.slots.iter().map(|s| &s.shard).collect();
        if GcraShard::owed_by(&self.set, ticks.now) > 0 {
            return false;
        }
        self.set.shared.suspend();
        let mut lent: Vec<u64> = shards
            .iter()
            .map(|s| s.lent.load(Ordering::SeqCst))
            .collect();
        let used: Vec<u64> = shards
            .iter()
            .map(|s| s.tat().saturating_sub(s.local(ticks.now)))
            .collect();
        let mut capacity: u64 = shards.iter().map(|s| s.capacity()).sum();
        // Repaid debts come back, and a draining shard given a share again takes its
        // debt back as use within its capacity; a shard left without a share starts
        // draining with its use as debt (or, owing nothing, simply stops).
        let mut draining = vec![false; shards.len()];
        for i in 0..shards.len() {
            if weights.get(i) > 0 {
                capacity += std::mem::take(&mut lent[i]);
            } else {
                let owed = if lent[i] > 0 {
                    let owed = used[i].min(lent[i]);
                    capacity += lent[i] - owed;
                    owed
                } else {
                    let owed = used[i].min(shards[i].capacity());
                    capacity -= owed;
                    owed
                };
                lent[i] = owed;
                draining[i] = owed > 0;
            }
        }
        let weights = weights.keeping(&self.weights.lock(), &draining);
        // The split by weight among the live shards, then each raised to what it has
        // used, paid for by the room the others have beyond theirs, in order.
        let live = |i: usize| !draining[i] && weights.get(i) > 0;
        let split: Vec<u64> = weights.split_among(capacity, live);
        let mut capacities = split.clone();
        let mut excess = 0;
        for (i, c) in capacities.iter_mut().enumerate().filter(|&(i, _)| live(i)) {
            excess += used[i].saturating_sub(*c);
            *c = (*c).max(used[i]);
        }
        for (i, c) in capacities.iter_mut().enumerate().filter(|&(i, _)| live(i)) {
            let cut = (*c - used[i]).min(excess);
            *c -= cut;
            excess -= cut;
        }
        // Only shards that restarted from the next whole tick of their time (see `Ticks`)
        // can have used more than their capacity, by under a tick each, and so more than
        // all there is: what nobody had room to pay for stays their debt, never capacity.
        for (i, c) in capacities.iter_mut().enumerate().filter(|&(i, _)| live(i)) {
            let back = c.saturating_sub(split[i]).min(excess);
            *c -= back;
            excess -= back;
        }
        for (i, shard) in shards.iter().enumerate() {
            shard.pace.rebase(ticks.now, weights.get(i));
            shard.capacity.store(capacities[i], Ordering::SeqCst);
            shard.lent.store(lent[i], Ordering::SeqCst);
        }
        let lag = if weights.is_even() {
            0
        } else {
            shards.len() as u64 - 1
        };
        self.set.shared.lag.store(lag, Ordering::SeqCst);
        self.set.set_active(active, weights.span());
        // Escrow given back later refills shards toward their new shares of the burst.
        *self.weights.lock() = weights;
        self.set.shared.restart(ticks.now, self.earliest_full());
        true
    }

    fn hot_keys(&self) -> Option<&HotKeys> {
        Some(&self.set.hot)
    }
}

/// A key's token bucket in `scope="key"`: its TAT alone, 8 bytes; the capacity is the
/// quota's, the same for every key.
#[derive(Debug)]
pub(crate) struct TokenCell(AtomicU64);

impl KeyCell for TokenCell {
    type Budget = TokenBucket;
    type Receipt = Receipt;

    fn fresh(params: &Params, now: Nanos) -> Self {
        Self(AtomicU64::new(params.scale.ticks(now)))
    }

    #[inline]
    fn take(&self, params: &Params, now: Nanos, units: u64) -> std::result::Result<Receipt, Nanos> {
        let now = params.scale.read(now);
        let all_or_nothing = |credit| if credit >= units { units } else { 0 };
        match take_from(&self.0, params.capacity, now, all_or_nothing, None) {
            Some((_, receipt)) => Ok(receipt),
            None => {
                let short = units.saturating_sub(self.credit(params, now.now));
                Err(params.scale.nanos(short))
            }
        }
    }

    fn give_back(&self, params: &Params, clock: &Clock, receipt: Receipt) {
        refund(&self.0, receipt, || params.scale.ticks(clock.now()));
    }

    #[inline]
    fn available(&self, params: &Params, now: Nanos) -> u64 {
        self.credit(params, params.scale.ticks(now))
    }

    /// The TAT is when the bucket became full again.
    fn is_idle(&self, params: &Params, now: Nanos) -> bool {
        let tat = self.0.load(Ordering::Relaxed);
        params.scale.ticks(now) >= tat.saturating_add(params.scale.ticks(params.window))
    }

    fn budget(&self, params: &Params, now: Nanos) -> TokenBucket {
        TokenBucket::starting_at(params, self.0.load(Ordering::SeqCst), now)
    }

    /// The free credit carries over, scaled to the new token cost and capped.
    fn retune(&mut self, old: &Params, new: &Params, now: Nanos) {
        let scaled = self.available(old, now) as u128 * new.unit as u128 / old.unit as u128;
        let credit = scaled.min(new.capacity as u128) as u64;
        *self.0.get_mut() = new.scale.ticks(now) + (new.capacity - credit);
    }
}

impl TokenCell {
    #[inline]
    fn credit(&self, params: &Params, now_ticks: u64) -> u64 {
        credit(params.capacity, self.0.load(Ordering::Relaxed), now_ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::memory::shard::ShardSet;
    use std::sync::Arc;

    #[test]
    fn credit_refills_one_tick_per_tick_up_to_capacity() {
        let shard = GcraShard::new(320, 0);
        assert_eq!(shard.available(Ticks::at(0)), 320);
        assert!(shard.try_take(Ticks::at(0), 320).is_some());
        assert_eq!(shard.available(Ticks::at(0)), 0);
        assert!(shard.try_take(Ticks::at(0), 1).is_none());
        // Times are in ticks: the shards' own clock.
        assert_eq!(shard.available(Ticks::at(160)), 160);
        assert_eq!(shard.available(Ticks::at(32_000)), 320);
    }

    #[test]
    fn a_full_bucket_read_between_two_ticks_restarts_from_the_later_one() {
        let shard = GcraShard::new(320, 0);
        let between = Ticks { now: 10, start: 11 };
        assert_eq!(shard.available(between), 320);
        assert!(shard.try_take(between, 32).is_some());
        // The part of a tick before 11 is not credited; a bucket with credit is unaffected.
        assert_eq!(shard.tat(), 43);
        assert!(shard.try_take(between, 32).is_some());
        assert_eq!(shard.tat(), 75);
    }

    #[test]
    fn take_up_to_takes_what_there_is() {
        let shard = GcraShard::new(100, 0);
        assert_eq!(shard.take_up_to(Ticks::at(0), 60).map(|t| t.0), Some(60));
        assert_eq!(shard.take_up_to(Ticks::at(0), 60).map(|t| t.0), Some(40));
        assert!(shard.take_up_to(Ticks::at(0), 60).is_none());
    }

    #[test]
    fn give_back_is_exact_while_time_stands_still() {
        let clock = Clock::Manual(Arc::new(ManualClock::new(0.0)));
        let set = ShardSet::new(
            [GcraShard::new(100, 0)],
            Settlement::new(0, Scale::per_nano(32)),
        );
        let receipt = set.shard(0).try_take(Ticks::at(0), 70).unwrap();
        set.shard(0).try_take(Ticks::at(0), 10).unwrap();
        GcraShard::give_back(&set, 0, receipt, &clock);
        assert_eq!(set.shard(0).available(Ticks::at(0)), 90);
    }

    #[test]
    fn give_back_keeps_what_time_has_refilled() {
        let manual = Arc::new(ManualClock::new(0.0));
        let clock = Clock::Manual(manual.clone());
        let set = ShardSet::new(
            [GcraShard::new(3200, 0)],
            Settlement::new(0, Scale::per_nano(32)),
        );
        let shard = set.shard(0);
        let receipt = shard.try_take(Ticks::at(0), 3200).unwrap(); // end = 3200 ticks = 100 ns
        manual.advance(60); // 1920 ticks later, the credit from then on is already back
        GcraShard::give_back(&set, 0, receipt, &clock);
        assert_eq!(shard.available(Ticks::at(1920)), 3200);
        // Only the 1280 ticks still ahead of the clock came back: TAT = 3200 - 1280.
        assert_eq!(shard.tat.load(Ordering::Relaxed), 1920);
    }

    #[test]
    fn wait_for_is_the_earliest_time_the_units_can_be_gathered() {
        let set = ShardSet::new(
            [GcraShard::new(320, 0), GcraShard::new(320, 0)],
            Settlement::new(0, Scale::per_nano(32)),
        );
        set.shard(0).try_take(Ticks::at(0), 320).unwrap();
        set.shard(1).try_take(Ticks::at(0), 160).unwrap();
        // 160 available and two ticks of credit per tick: 480 needs 160 ticks = 5 ns.
        assert_eq!(GcraShard::wait_for(&set, Ticks::at(0), 480), 5);
        // 40 more: 20 ticks, rounded up to 1 ns.
        assert_eq!(GcraShard::wait_for(&set, Ticks::at(0), 200), 1);
        // Everything: once shard 1 is full its refill goes to shard 0, so 240 ticks = 8 ns.
        assert_eq!(GcraShard::wait_for(&set, Ticks::at(0), 640), 8);
    }

    #[test]
    fn settling_moves_a_full_shards_refill_to_a_shard_with_room() {
        let set = ShardSet::new(
            [GcraShard::new(320, 0), GcraShard::new(320, 0)],
            Settlement::new(0, Scale::per_nano(32)),
        );
        set.shard(0).try_take(Ticks::at(0), 320).unwrap();
        // 64 ticks later shard 0 refilled 64 and shard 1, already full, wasted 64.
        assert_eq!(GcraShard::total_available(&set, Ticks::at(64)), 448);
        GcraShard::settle(&set, Ticks::at(64));
        assert_eq!(set.shard(0).available(Ticks::at(64)), 128);
        assert_eq!(set.shard(1).available(Ticks::at(64)), 320);
        GcraShard::settle(&set, Ticks::at(320));
        assert_eq!(GcraShard::total_available(&set, Ticks::at(320)), 640);
    }

    #[test]
    fn refill_wasted_while_the_whole_budget_was_full_is_not_recovered() {
        let set = ShardSet::new(
            [GcraShard::new(320, 0), GcraShard::new(320, 0)],
            Settlement::new(0, Scale::per_nano(32)),
        );
        // Both full for 100 ns, then a settle-and-take drains shard 1.
        GcraShard::settle(&set, Ticks::at(100));
        set.shard(1).try_take(Ticks::at(100), 320).unwrap();
        assert_eq!(GcraShard::total_available(&set, Ticks::at(100)), 320);
        GcraShard::settle(&set, Ticks::at(100));
        assert_eq!(GcraShard::total_available(&set, Ticks::at(100)), 320);
    }

    mod rebalancing {
        use super::*;
        use crate::quota::{Algorithm, Quota};

        const MS: Nanos = 1_000_000;

        /// 1,000 tokens a second, a burst of 100, on 4 shards, at t = 0.
        fn bucket() -> (TokenBucket, Params, Clock) {
            let quota =
                Quota::new(1000.0, 1.0, Some(100.0), Algorithm::TokenBucket, Some(4)).unwrap();
            let params = Params::new(&quota).unwrap();
            let bucket = TokenBucket::new(&params, 0);
            bucket.rebalanced();
            (
                bucket,
                params,
                Clock::Manual(Arc::new(ManualClock::new(0.0))),
            )
        }

        fn take(bucket: &TokenBucket, params: &Params, now: Nanos, hash: u64, tokens: u64) {
            let clock = Clock::Manual(Arc::new(ManualClock::new(0.0)));
            let outcome = bucket.acquire(&clock, now, hash, tokens * params.unit);
            assert!(matches!(outcome, Outcome::Admitted { .. }), "{outcome:?}");
        }

        fn capacities(bucket: &TokenBucket) -> u64 {
            bucket
                .shards()
                .map(|s| s.capacity() + s.lent.load(Ordering::SeqCst))
                .sum()
        }

        #[test]
        fn moving_the_shares_keeps_every_unit_and_refills_at_the_weights() {
            let (bucket, params, _) = bucket();
            take(&bucket, &params, 0, 7, 60);
            let before = bucket.available(0);
            assert!(bucket.reweigh(0, Weights::toward(&[5, 1, 1, 1], 4), 4));
            assert_eq!(bucket.available(0), before);
            assert_eq!(capacities(&bucket), params.capacity);
            // 10 ms later: 10 tokens refilled in all, however the weights split it.
            assert_eq!(bucket.available(10 * MS), before + 10 * params.unit);
            // Shard 0 refills at its weight: 5/8 of 4 shards' worth.
            let shard = &bucket.set.slots[0].shard;
            let (weight, local) = (
                shard.pace.weight.load(Ordering::SeqCst) >> 16,
                shard.local(0),
            );
            assert_eq!(weight, Weights::toward(&[5, 1, 1, 1], 4).get(0));
            let ticks = params.scale.ticks(10 * MS);
            assert_eq!(
                shard.local(ticks) - local,
                (ticks as u128 * weight as u128 / EVEN as u128) as u64
            );
        }

        #[test]
        fn a_shard_left_without_a_share_drains_and_gives_back_what_it_repays() {
            let (bucket, params, _) = bucket();
            // Every shard used: 25 tokens each, the budget empty.
            for hash in 0..1000 {
                let clock = Clock::Manual(Arc::new(ManualClock::new(0.0)));
                bucket.acquire(&clock, 0, hash, params.unit);
            }
            assert_eq!(bucket.available(0), 0);
            // Keys now spread over shard 0 alone; the others drain.
            assert!(bucket.reweigh(0, Weights::even_over(4, 1), 1));
            assert_eq!(bucket.set.active(), 1);
            assert_eq!(capacities(&bucket), params.capacity);
            assert_eq!(bucket.available(0), 0);
            // 40 ms: 40 tokens refilled in all, part of them repaid by the draining shards,
            // and all of them can be taken through shard 0's keys.
            let now = 40 * MS;
            assert_eq!(bucket.available(now), 40 * params.unit);
            for _ in 0..40 {
                take(&bucket, &params, now, 1, 1);
            }
            assert_eq!(bucket.available(now), 0);
            // Once they have repaid everything, a later move hands their weight over.
            let later = 200 * MS;
            assert_eq!(bucket.available(later), 100 * params.unit);
            GcraShard::settle(&bucket.set, bucket.ticks(later));
            assert!(bucket.shards().all(|s| s.lent.load(Ordering::SeqCst) == 0));
            assert!(bucket.reweigh(later, Weights::even_over(4, 1), 1));
            assert_eq!(bucket.weights.lock().clone(), Weights::even_over(4, 1));
            assert_eq!(bucket.set.slots[0].shard.capacity(), params.capacity);
            assert_eq!(bucket.available(later), 100 * params.unit);
        }

        #[test]
        fn shards_drained_between_two_ticks_of_their_time_move_exactly() {
            let (bucket, params, _) = bucket();
            assert!(bucket.reweigh(0, Weights::toward(&[7, 3, 2, 1], 4), 4));
            // 1 ms and 1 ns later the shards' times stand between two ticks; every shard,
            // full, restarts from the next whole tick of its time as it is drained.
            let now = MS + 1;
            let clock = Clock::Manual(Arc::new(ManualClock::new(0.0)));
            for hash in 0..4000 {
                bucket.acquire(&clock, now, hash, params.unit / 4);
            }
            for hash in 0..100 {
                match bucket.available(now) {
                    0 => break,
                    left => {
                        bucket.acquire(&clock, now, hash, left);
                    }
                }
            }
            assert_eq!(bucket.available(now), 0);
            assert!(bucket.reweigh(now, Weights::toward(&[1, 1, 1, 5], 4), 4));
            assert_eq!(bucket.available(now), 0);
            assert_eq!(capacities(&bucket), params.capacity);
            // A second later the budget is full again: exactly full.
            assert_eq!(bucket.available(now + 1_000 * MS), params.capacity);
        }

        #[test]
        fn a_hot_key_is_served_by_every_shard_in_use() {
            let (bucket, params, clock) = bucket();
            let (hot, cold) = (7, 8);
            for _ in 0..100 {
                bucket.observe(hot, 1);
            }
            bucket.set.hot.publish(4);
            let served = |hash| {
                let before = bucket.served();
                for _ in 0..40 {
                    bucket.acquire(&clock, 0, hash, params.unit);
                }
                let after = bucket.served();
                before.iter().zip(&after).filter(|(b, a)| a > b).count()
            };
            assert_eq!(served(cold), 2, "a key is served by its two candidates");
            assert_eq!(served(hot), 4, "a hot key draws its pair among all four");
        }

        #[test]
        fn a_take_given_back_after_its_shard_drained_comes_back_whole() {
            let (bucket, params, clock) = bucket();
            let receipt = match bucket.acquire(&clock, 0, 3, 20 * params.unit) {
                Outcome::Admitted { receipt, .. } => receipt,
                refused => panic!("{refused:?}"),
            };
            assert!(bucket.reweigh(0, Weights::even_over(4, 1), 1));
            assert_eq!(bucket.available(0), 80 * params.unit);
            bucket.give_back(receipt, &clock);
            assert_eq!(bucket.available(0), 100 * params.unit);
            assert_eq!(capacities(&bucket), params.capacity);
        }
    }
}
