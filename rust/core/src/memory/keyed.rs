//! Per-key budgets (`scope="key"`): every key its own budget of the same quota.
//!
//! Keys live in a power-of-two number of lock-striped tables, each on its own cache lines.
//! A decision finds its key under the stripe's read lock and takes from the key's *cell*,
//! the algorithm's compact budget (an atomic TAT for the token bucket, a ring of counters
//! behind a small lock for the sliding window); only a new key takes the write lock. A key
//! is its 64-bit hash (Python's string hash from the binding, ahash from Rust), hashed again
//! with the limiter's random seed to pick the stripe and the bucket, so keys chosen by
//! clients cannot pile into one bucket. Two keys whose 64-bit hashes are equal share one
//! budget: that can only ever refuse more, never admit more.
//!
//! Waiting and reservations reuse the in-memory limiter: a key's first booking turns its
//! cell into a one-shard `Limiter` over the same state (the key is *busy*), and from then on
//! that limiter's account decides for the key, so there is still one path per key.
//!
//! Memory is bounded. A key whose state equals a fresh key's (a full budget, nothing
//! booked) is dropped by a sweep of its stripe: before a stripe's table grows, after a
//! stripe has served as many calls as it holds keys, and when `len()` is asked. Each sweep
//! visits one stripe, so its cost is spread over the calls that made it due. At most
//! `max_keys` keys are kept: a new key beyond them is refused with `too_many_keys`, rather
//! than live state being forgotten. A refusal sweeps each stripe for room at most once a
//! period, so a flood of new keys costs a look-up each, not a pass over the table.

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::balance::Shares;
use crate::clock::{Clock, Nanos, NANOS_PER_SEC};
use crate::decision::{Booking, Decision, Holder, Refusal, ReservationCounts, ReservationPolicy};
use crate::error::{Error, Result};
use crate::memory::budget::Budget;
use crate::memory::limiter::{back_off_nanos, Limiter, Taken};
use crate::memory::params::Params;
use crate::quota::{Quota, Scope};
use crate::seam::{Backend, Key, ShardViews, Undo};

/// A key's budget while nothing is booked for it (see the module comment).
pub(crate) trait KeyCell: Send + Sync + Sized + fmt::Debug + 'static {
    /// The budget a key's limiter runs on once the key opens a book.
    type Budget: Budget + fmt::Debug + 'static;
    type Receipt: Copy + Send + 'static;

    /// A full budget.
    fn fresh(params: &Params, now: Nanos) -> Self;
    /// Takes `units` (at most the capacity) now, or says how many nanoseconds until it could.
    fn take(
        &self,
        params: &Params,
        now: Nanos,
        units: u64,
    ) -> std::result::Result<Self::Receipt, Nanos>;
    fn give_back(&self, params: &Params, clock: &Clock, receipt: Self::Receipt);
    fn available(&self, params: &Params, now: Nanos) -> u64;
    /// Full, with nothing taken for at least a period: a fresh key would decide the same, and
    /// a key in use is not dropped and made again at every call.
    fn is_idle(&self, params: &Params, now: Nanos) -> bool;
    /// The same state as a budget for the key's own limiter.
    fn budget(&self, params: &Params, now: Nanos) -> Self::Budget;
    /// Applies `new` params, keeping what the key has used.
    fn retune(&mut self, old: &Params, new: &Params, now: Nanos);
}

/// Keys in a stripe before its first sweep; later sweeps come when the count doubles.
const FIRST_SWEEP: usize = 64;

enum KeyState<C: KeyCell> {
    Quiet(C),
    Busy(Box<Limiter<C::Budget>>),
}

impl<C: KeyCell> KeyState<C> {
    /// The state of a fresh key: it can be dropped and made again without anyone noticing.
    fn is_idle(&self, params: &Params, now: Nanos) -> bool {
        match self {
            KeyState::Quiet(cell) => cell.is_idle(params, now),
            KeyState::Busy(limiter) => limiter.is_idle(now),
        }
    }
}

struct Table<C: KeyCell> {
    entries: HashTable<(u64, KeyState<C>)>,
    /// The per-key quota's sizes (the same in every stripe, changed under its lock).
    params: Params,
    /// Bumped by re-ratings and resets: a take from before them is not given back.
    epoch: u64,
    /// Sweep before the table grows past this many keys.
    sweep_at: usize,
}

struct Stripe<C: KeyCell> {
    table: RwLock<Table<C>>,
    /// Admissions served by this stripe since the limiter was made or reset.
    served: AtomicU64,
    /// Calls since the last sweep, and how many make the next one due.
    calls: AtomicU64,
    due: AtomicU64,
}

/// A take kept for undoing.
enum KeyTaken<C: KeyCell> {
    Quiet {
        key: u64,
        epoch: u64,
        receipt: C::Receipt,
    },
    Busy {
        key: u64,
        taken: Taken<<C::Budget as Budget>::Receipt>,
    },
}

/// Every key's budget, in memory.
pub(crate) struct Keyed<C: KeyCell> {
    clock: Clock,
    /// The quota as the caller gave it (its `shards` is the stripe count); held while re-rating.
    quota: Mutex<Quota>,
    stripes: Box<[CachePadded<Stripe<C>>]>,
    hasher: ahash::RandomState,
    keys: AtomicUsize,
    max_keys: usize,
    /// When each stripe may next be swept for room (for a new key at `max_keys`), and the
    /// earliest of those times, read without the lock.
    room: Mutex<Box<[Nanos]>>,
    room_at: AtomicU64,
    policy: ReservationPolicy,
}

impl<C: KeyCell> fmt::Debug for Keyed<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("quota", &*self.quota.lock())
            .field("keys", &self.keys.load(Ordering::Relaxed))
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

/// One key's quota: the same rate and burst on one shard.
fn key_quota(quota: &Quota) -> Quota {
    Quota {
        shards: 1,
        ..*quota
    }
}

fn seconds(nanos: Nanos) -> f64 {
    nanos as f64 / NANOS_PER_SEC
}

/// A refusal decided here rather than by a key's limiter.
fn refused(now: Nanos, shard: usize, reason: Refusal, wait: Option<Nanos>, unit: u64) -> Decision {
    Decision {
        sampled: false,
        allowed: false,
        reason: Some(reason),
        shard,
        retry_after: wait.map(seconds),
        at: now,
        remaining_units: Some(0),
        unit,
    }
}

impl<C: KeyCell> Keyed<C> {
    /// `quota.shards` stripes (a power of two) of keys, at most `max_keys` of them.
    pub(crate) fn new(
        quota: Quota,
        clock: Clock,
        policy: ReservationPolicy,
        max_keys: usize,
    ) -> Result<Self> {
        debug_assert!(quota.shards.is_power_of_two(), "stripes are a power of two");
        if max_keys == 0 {
            return Err(Error::invalid("max_keys", "must be an int >= 1, got 0"));
        }
        let policy = policy.validate()?;
        let params = Params::new(&key_quota(&quota))?;
        let stripes = (0..quota.shards)
            .map(|_| {
                CachePadded::new(Stripe {
                    table: RwLock::new(Table {
                        entries: HashTable::new(),
                        params,
                        epoch: 0,
                        sweep_at: FIRST_SWEEP,
                    }),
                    served: AtomicU64::new(0),
                    calls: AtomicU64::new(0),
                    due: AtomicU64::new(FIRST_SWEEP as u64),
                })
            })
            .collect();
        Ok(Self {
            clock,
            quota: Mutex::new(quota),
            stripes,
            hasher: ahash::RandomState::new(),
            keys: AtomicUsize::new(0),
            max_keys,
            room: Mutex::new(vec![0; quota.shards].into_boxed_slice()),
            room_at: AtomicU64::new(0),
            policy,
        })
    }

    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// The key's stripe and its hash in the stripe's table.
    #[inline]
    fn locate(&self, key: u64) -> (usize, u64) {
        let hash = self.hasher.hash_one(key);
        // Bits the table does not use (it takes the lowest for the bucket, the top seven
        // for its tags), so keys of one stripe still spread over its buckets.
        let stripe = (hash >> 32) as usize & (self.stripes.len() - 1);
        (stripe, hash)
    }

    fn rehash(&self) -> impl Fn(&(u64, KeyState<C>)) -> u64 + '_ {
        |entry| self.hasher.hash_one(entry.0)
    }

    /// Runs `f` on the key's state under its stripe's read lock, adding a fresh key first;
    /// `None` when the key is new and `max_keys` keys are kept already.
    #[inline]
    fn with_key<R>(
        &self,
        key: u64,
        (index, hash): (usize, u64),
        now: Nanos,
        f: impl FnOnce(&Table<C>, &KeyState<C>) -> R,
    ) -> Option<R> {
        let stripe = &self.stripes[index];
        let table = stripe.table.read();
        if let Some((_, state)) = table.entries.find(hash, |e| e.0 == key) {
            let result = f(&table, state);
            drop(table);
            self.count_call(index, now);
            return Some(result);
        }
        drop(table);
        let table = self.insert(index, key, hash, now)?;
        let (_, state) = table.entries.find(hash, |e| e.0 == key)?;
        Some(f(&table, state))
    }

    /// Adds a fresh key (unless another thread did), returning the stripe read-locked.
    #[cold]
    fn insert(
        &self,
        index: usize,
        key: u64,
        hash: u64,
        now: Nanos,
    ) -> Option<RwLockReadGuard<'_, Table<C>>> {
        let stripe = &self.stripes[index];
        if self.keys.load(Ordering::Relaxed) >= self.max_keys && !self.make_room(now) {
            // Only a key kept already goes on (`with_busy`'s, or another thread's insert).
            let table = stripe.table.read();
            return table
                .entries
                .find(hash, |e| e.0 == key)
                .is_some()
                .then_some(table);
        }
        let mut table = stripe.table.write();
        if table.entries.find(hash, |e| e.0 == key).is_none() {
            if self.keys.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
                self.keys.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            if table.entries.len() >= table.sweep_at {
                self.sweep(index, &mut table, now);
            }
            let cell = C::fresh(&table.params, now);
            table
                .entries
                .insert_unique(hash, (key, KeyState::Quiet(cell)), self.rehash());
        }
        Some(RwLockWriteGuard::downgrade(table))
    }

    /// Counts a call; sweeps the stripe once it has served as many calls as it holds keys.
    #[inline]
    fn count_call(&self, index: usize, now: Nanos) {
        let stripe = &self.stripes[index];
        let calls = stripe.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if calls >= stripe.due.load(Ordering::Relaxed) {
            if let Some(mut table) = stripe.table.try_write() {
                self.sweep(index, &mut table, now);
            }
        }
    }

    /// Drops the stripe's idle keys and gives the table's spare room back.
    fn sweep(&self, index: usize, table: &mut Table<C>, now: Nanos) {
        let before = table.entries.len();
        let params = table.params;
        table
            .entries
            .retain(|(_, state)| !state.is_idle(&params, now));
        let kept = table.entries.len();
        self.keys.fetch_sub(before - kept, Ordering::Relaxed);
        if table.entries.capacity() > 4 * kept.max(FIRST_SWEEP) {
            table.entries.shrink_to(2 * kept, self.rehash());
        }
        table.sweep_at = (2 * kept).max(FIRST_SWEEP);
        let stripe = &self.stripes[index];
        stripe.calls.store(0, Ordering::Relaxed);
        stripe
            .due
            .store(kept.max(FIRST_SWEEP) as u64, Ordering::Relaxed);
    }

    /// Sweeps the stripes due for room while `max_keys` keys are kept, until one makes room,
    /// and says whether one did. A stripe is due a period after its last sweep for room (or
    /// nine times the stripe count times that sweep's length, if longer, so that sweeping
    /// for room takes about a tenth of the time at most); stripes swept by one call are
    /// next due at even steps over the coming period, so that a flood of new keys sweeps
    /// one stripe at a time. Other calls meanwhile refuse at once.
    fn make_room(&self, now: Nanos) -> bool {
        if now < self.room_at.load(Ordering::Relaxed) {
            return false;
        }
        let Some(mut due) = self.room.try_lock() else {
            return false;
        };
        let period = u128::from(self.stripes[0].table.read().params.window);
        let stripes = due.len() as u64;
        let count = due.iter().filter(|&&at| at <= now).count() as u128;
        let mut swept = 0;
        for (index, stripe) in self.stripes.iter().enumerate() {
            if self.keys.load(Ordering::Relaxed) < self.max_keys {
                break;
            }
            if due[index] > now {
                continue;
            }
            let start = self.clock.now();
            self.sweep(index, &mut stripe.table.write(), now);
            let end = self.clock.now();
            swept += 1;
            let step = (period * swept / count) as Nanos;
            let spent = end.saturating_sub(start);
            due[index] = end.saturating_add(step.max(9 * stripes * spent));
        }
        let earliest = due.iter().copied().min();
        self.room_at.store(earliest.unwrap_or(0), Ordering::Relaxed);
        self.keys.load(Ordering::Relaxed) < self.max_keys
    }

    fn sweep_all(&self, now: Nanos) {
        for (index, stripe) in self.stripes.iter().enumerate() {
            self.sweep(index, &mut stripe.table.write(), now);
        }
    }

    /// Keys with state, after dropping the idle ones.
    pub(crate) fn len(&self) -> usize {
        self.sweep_all(self.clock.now());
        self.keys.load(Ordering::Relaxed)
    }

    /// A refusal that no key's budget decided (the key is not kept).
    fn unkept(&self, now: Nanos, shard: usize, reason: Refusal) -> Decision {
        let unit = self.stripes[shard].table.read().params.unit;
        refused(now, shard, reason, None, unit)
    }

    fn take_key(
        &self,
        key: u64,
        count: u64,
        tally: bool,
    ) -> Result<(Decision, Option<KeyTaken<C>>)> {
        if count == 0 {
            return Err(Error::invalid_count(&count));
        }
        let now = self.clock.now();
        let located = self.locate(key);
        let index = located.0;
        let decided = self.with_key(key, located, now, |table, state| match state {
            KeyState::Quiet(cell) => {
                let params = &table.params;
                let Some(units) = params.units(count) else {
                    let decision = refused(now, index, Refusal::ExceedsCapacity, None, params.unit);
                    return Ok((decision, None));
                };
                Ok(match cell.take(params, now, units) {
                    Ok(receipt) => {
                        let decision = Decision {
                            allowed: true,
                            reason: None,
                            shard: index,
                            retry_after: None,
                            at: now,
                            remaining_units: tally.then(|| cell.available(params, now)),
                            unit: params.unit,
                            sampled: false,
                        };
                        let epoch = table.epoch;
                        (
                            decision,
                            Some(KeyTaken::Quiet {
                                key,
                                epoch,
                                receipt,
                            }),
                        )
                    }
                    Err(wait) => {
                        let mut decision =
                            refused(now, index, Refusal::RateLimited, Some(wait), params.unit);
                        decision.remaining_units = tally.then(|| cell.available(params, now));
                        (decision, None)
                    }
                })
            }
            KeyState::Busy(limiter) => {
                let (mut decision, taken) = limiter.take(key, count, tally)?;
                decision.shard = index;
                Ok((decision, taken.map(|taken| KeyTaken::Busy { key, taken })))
            }
        });
        let (decision, taken) = match decided {
            Some(decided) => decided?,
            None => (self.unkept(now, index, Refusal::TooManyKeys), None),
        };
        if decision.allowed {
            self.stripes[index].served.fetch_add(1, Ordering::Relaxed);
        }
        Ok((decision, taken))
    }

    fn undo_key(&self, taken: KeyTaken<C>) {
        let key = match &taken {
            KeyTaken::Quiet { key, .. } | KeyTaken::Busy { key, .. } => *key,
        };
        let (index, hash) = self.locate(key);
        let stripe = &self.stripes[index];
        let table = stripe.table.read();
        let Some((_, state)) = table.entries.find(hash, |e| e.0 == key) else {
            return;
        };
        // A key re-rated, reset, swept or turned busy since keeps the take: never over.
        match (state, taken) {
            (KeyState::Quiet(cell), KeyTaken::Quiet { epoch, receipt, .. })
                if epoch == table.epoch =>
            {
                cell.give_back(&table.params, &self.clock, receipt);
            }
            (KeyState::Busy(limiter), KeyTaken::Busy { taken, .. }) => limiter.undo(taken),
            _ => return,
        }
        stripe.served.fetch_sub(1, Ordering::Relaxed);
    }

    /// Runs `f` on `key`'s own limiter, turning the key busy first (under the stripe's
    /// write lock); `None` when the key cannot be kept (`max_keys`).
    fn with_busy<R>(
        &self,
        key: u64,
        f: impl FnOnce(usize, &Limiter<C::Budget>) -> Result<R>,
    ) -> Result<Option<R>> {
        let now = self.clock.now();
        let (index, hash) = self.locate(key);
        let Some(table) = self.insert(index, key, hash, now) else {
            return Ok(None);
        };
        let busy = matches!(
            table.entries.find(hash, |e| e.0 == key),
            Some((_, KeyState::Busy(_)))
        );
        let table = if busy {
            table
        } else {
            drop(table);
            // The quota before the stripe: a re-rating locks them in that order.
            let quota = key_quota(&self.quota.lock());
            let mut table = self.stripes[index].table.write();
            let params = table.params;
            if let Some((_, state)) = table.entries.find_mut(hash, |e| e.0 == key) {
                if let KeyState::Quiet(cell) = state {
                    let budget = cell.budget(&params, now);
                    let limiter = Limiter::with_budget(
                        quota,
                        params,
                        self.clock.clone(),
                        self.policy,
                        budget,
                    )?;
                    *state = KeyState::Busy(Box::new(limiter));
                }
            }
            RwLockWriteGuard::downgrade(table)
        };
        let Some((_, KeyState::Busy(limiter))) = table.entries.find(hash, |e| e.0 == key) else {
            // Swept between our locks: it was idle, and a fresh key decides the same.
            drop(table);
            return self.with_busy(key, f);
        };
        f(index, limiter).map(Some)
    }

    /// Books for `key` on its own limiter.
    fn book_key(&self, key: u64, count: u64, max_wait: f64, holder: Holder) -> Result<Booking> {
        if count == 0 {
            return Err(Error::invalid_count(&count));
        }
        let booked = self.with_busy(key, |index, limiter| {
            Ok(match limiter.book(key, count, max_wait, holder)? {
                Booking::Reserved(mut reservation) => {
                    reservation.id = format!("{key:x}.{}", reservation.id);
                    reservation.shard = index;
                    Booking::Reserved(reservation)
                }
                Booking::Decided(mut decision) => {
                    decision.shard = index;
                    Booking::Decided(decision)
                }
            })
        })?;
        Ok(booked.unwrap_or_else(|| {
            let index = self.locate(key).0;
            Booking::Decided(self.unkept(self.clock.now(), index, Refusal::TooManyKeys))
        }))
    }

    /// Runs `f` on the limiter of the busy key a reservation id names.
    fn with_booked<R>(
        &self,
        id: &str,
        f: impl FnOnce(usize, &Limiter<C::Budget>, &str) -> R,
    ) -> Option<R> {
        let (key, inner) = id.split_once('.')?;
        let key = u64::from_str_radix(key, 16).ok()?;
        let (index, hash) = self.locate(key);
        let table = self.stripes[index].table.read();
        match table.entries.find(hash, |e| e.0 == key) {
            Some((_, KeyState::Busy(limiter))) => Some(f(index, limiter, inner)),
            _ => None,
        }
    }
}

impl<C: KeyCell> Backend for Keyed<C> {
    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn quota(&self) -> Quota {
        *self.quota.lock()
    }

    fn scope(&self) -> Scope {
        Scope::Key
    }

    #[inline]
    fn try_acquire(&self, key: Key<'_>, count: u64) -> Result<Decision> {
        self.take_key(key.hash(), count, true)
            .map(|(decision, _)| decision)
    }

    #[inline]
    fn check(&self, key: Key<'_>, count: u64) -> Result<Decision> {
        self.take_key(key.hash(), count, false)
            .map(|(decision, _)| decision)
    }

    fn take(&self, key: Key<'_>, count: u64) -> Result<(Decision, Option<Undo>)> {
        let (decision, taken) = self.take_key(key.hash(), count, true)?;
        Ok((decision, taken.map(|taken| Undo(Box::new(taken)))))
    }

    fn undo(&self, undo: Undo) -> Result<()> {
        let taken = undo
            .0
            .downcast::<KeyTaken<C>>()
            .expect("a take is undone on the limiter that made it");
        self.undo_key(*taken);
        Ok(())
    }

    fn book(&self, key: Key<'_>, count: u64, max_wait: f64, holder: Holder) -> Result<Booking> {
        self.book_key(key.hash(), count, max_wait, holder)
    }

    fn execute_reservation(&self, id: &str) -> Result<Decision> {
        let executed = self.with_booked(id, |index, limiter, inner| {
            let mut decision = limiter.execute(inner);
            decision.shard = index;
            if decision.allowed {
                self.stripes[index].served.fetch_add(1, Ordering::Relaxed);
            }
            decision
        });
        Ok(executed
            .unwrap_or_else(|| self.unkept(self.clock.now(), 0, Refusal::UnknownReservation)))
    }

    fn cancel_reservation(&self, id: &str) -> Result<bool> {
        Ok(self
            .with_booked(id, |_, limiter, inner| limiter.cancel(inner))
            .unwrap_or(false))
    }

    /// Summed over the keys kept now: a key dropped when idle takes its counts along.
    fn reservation_counts(&self) -> Result<ReservationCounts> {
        let mut counts = ReservationCounts::default();
        for stripe in self.stripes.iter() {
            for (_, state) in stripe.table.read().entries.iter() {
                if let KeyState::Busy(limiter) = state {
                    counts = counts + limiter.reservation_counts();
                }
            }
        }
        Ok(counts)
    }

    fn peek(&self, key: Key<'_>) -> Result<f64> {
        let hash = key.hash();
        let now = self.clock.now();
        let (index, table_hash) = self.locate(hash);
        let table = self.stripes[index].table.read();
        let params = &table.params;
        Ok(match table.entries.find(table_hash, |e| e.0 == hash) {
            None => params.capacity as f64 / params.unit as f64,
            Some((_, KeyState::Quiet(cell))) => {
                cell.available(params, now) as f64 / params.unit as f64
            }
            Some((_, KeyState::Busy(limiter))) => limiter.peek(),
        })
    }

    fn keys(&self) -> Result<usize> {
        Ok(self.len())
    }

    /// Re-rates every key, one stripe at a time: each key keeps what it has used.
    fn set_quota(&self, quota: Quota) -> Result<()> {
        let mut current = self.quota.lock();
        let quota = Quota {
            shards: quota.shards.next_power_of_two(),
            ..quota
        };
        if quota.algorithm != current.algorithm {
            return Err(Error::invalid(
                "algorithm",
                format!(
                    "is fixed for the limiter's life ({:?})",
                    current.algorithm.name()
                ),
            ));
        }
        if quota.shards != current.shards {
            return Err(Error::invalid(
                "shards",
                format!("is fixed for the limiter's life ({})", current.shards),
            ));
        }
        let old = self.stripes[0].table.read().params;
        let new = Params::with_scale(&key_quota(&quota), old.scale)?;
        let now = self.clock.now();
        for stripe in self.stripes.iter() {
            let mut table = stripe.table.write();
            for (_, state) in table.entries.iter_mut() {
                match state {
                    KeyState::Quiet(cell) => cell.retune(&old, &new, now),
                    KeyState::Busy(limiter) => limiter.set_quota(key_quota(&quota))?,
                }
            }
            table.params = new;
            table.epoch += 1;
        }
        *current = quota;
        Ok(())
    }

    /// Backs off one key: it turns busy (its own limiter owes the refill) and is dropped
    /// again once idle.
    fn back_off(&self, key: Key<'_>, seconds: f64) -> Result<()> {
        back_off_nanos(seconds)?; // refused before the key is made busy for nothing
        self.with_busy(key.hash(), |_, limiter| limiter.back_off(seconds))?
            .ok_or_else(|| {
                Error::invalid(
                    "key",
                    format!("is new and max_keys ({}) are kept already", self.max_keys),
                )
            })
    }

    /// Forgets every quiet key and resets every busy one (its waiters keep their turns).
    fn reset(&self) -> Result<()> {
        for stripe in self.stripes.iter() {
            let mut table = stripe.table.write();
            let before = table.entries.len();
            table.entries.retain(|(_, state)| match state {
                KeyState::Quiet(_) => false,
                KeyState::Busy(limiter) => {
                    limiter.reset();
                    true
                }
            });
            self.keys
                .fetch_sub(before - table.entries.len(), Ordering::Relaxed);
            table.epoch += 1;
            stripe.served.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    fn reset_key(&self, key: Key<'_>) -> Result<()> {
        let hash = key.hash();
        let (index, table_hash) = self.locate(hash);
        let mut table = self.stripes[index].table.write();
        table.epoch += 1;
        if let Ok(entry) = table.entries.find_entry(table_hash, |e| e.0 == hash) {
            match &entry.get().1 {
                KeyState::Busy(limiter) => limiter.reset(),
                KeyState::Quiet(_) => {
                    entry.remove();
                    self.keys.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// The key stripes, measured as shards of equal share.
    fn shard_views(&self) -> Option<&dyn ShardViews> {
        Some(self)
    }
}

impl<C: KeyCell> ShardViews for Keyed<C> {
    fn candidates(&self, hash: u64) -> (usize, usize) {
        let stripe = self.locate(hash).0;
        (stripe, stripe)
    }

    /// Per-key budgets have no shards of a shared budget.
    fn shard_tokens(&self) -> Vec<f64> {
        Vec::new()
    }

    fn served(&self) -> Vec<u64> {
        self.stripes
            .iter()
            .map(|s| s.served.load(Ordering::Relaxed))
            .collect()
    }

    /// Every key decides alone: nothing is gathered.
    fn gathered(&self) -> u64 {
        0
    }

    /// Stripes hold keys, no share of a budget.
    fn shares(&self) -> Shares {
        Shares::default()
    }
}
