//! The in-memory limiter: one budget, one gate, one account of admission.
//!
//! While no reservation or waiter is in the book the limiter is *quiet*: a decision is one
//! lock-free take from the budget. The first booking makes it *busy*: from then until the
//! book is empty again, every decision, booking, execution and cancel goes through the
//! account (one lock), which before anything else expires what is due, lapses what is past
//! its grace, and funds bookings whose slot has come, in order. A take there is admitted
//! only if every promise is still met at its slot (`Budget::chance`). So there is one path
//! that decides admission, and the budget's escrow (see `budget.rs`) makes I1 hold over the
//! moments callers may proceed. The rules are `crate::model`'s.

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::balance::Shares;
use crate::clock::{Clock, Nanos, NANOS_PER_SEC};
use crate::memory::book::{Book, Entry, Lookup, State};
use crate::memory::budget::{Budget, Outcome};

use crate::decision::{
    Booking, Decision, Holder, Refusal, Reservation, ReservationCounts, ReservationPolicy,
};
use crate::error::{Error, Result};
use crate::memory::hot::{self, HotKey};
use crate::memory::params::Params;
use crate::memory::rebalance::{Rebalancer, Rebalancing, Since};
use crate::model::RECHECK;
use crate::quota::{Quota, Scope};
use crate::seam::{Backend, Key, ShardViews, Undo};

pub(crate) struct Limiter<B: Budget> {
    clock: Clock,
    tuning: CachePadded<Tuning>,
    budget: B,
    account: Mutex<Account>,
    /// Moves the shards' shares toward demand (an adaptive limiter's token bucket).
    rebalancer: Option<Rebalancer>,
}

/// What every decision reads, on one read-mostly cache line.
#[derive(Debug)]
struct Tuning {
    /// Even while stable; odd while a booking opens the account or a re-rating rewrites the
    /// budget. A quiet decision that saw it change decides again, so nothing is admitted
    /// beside the account or under a half-applied quota.
    version: AtomicU64,
    /// Units one token costs, and units the whole budget holds.
    unit: AtomicU64,
    capacity: AtomicU64,
    /// The book is not empty: decisions go through the account.
    busy: AtomicBool,
    /// Odd while a re-rating or reset rewrites the budget: a take that overlapped one must
    /// stay charged rather than be given back into a state that may already count it.
    retunes: AtomicU64,
    /// When a decision should next look at demand (`u64::MAX`: never; see `rebalance.rs`).
    next_look: AtomicU64,
    /// The budget samples keys for its hot-key sketch (see `hot.rs`).
    sampling: AtomicBool,
}

struct Account {
    quota: Quota,
    params: Params,
    book: Book,
}

/// An admission kept for undoing, with the re-rating it was made under.
pub(crate) struct Taken<R> {
    retunes: u64,
    shard: usize,
    receipt: R,
}

impl<B: Budget> fmt::Debug for Limiter<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("quota", &self.quota())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// A back-off's length in nanoseconds (rounded up), or an error naming `seconds`.
pub(crate) fn back_off_nanos(seconds: f64) -> Result<Nanos> {
    if seconds.is_finite() && seconds >= 0.0 && seconds * NANOS_PER_SEC < u64::MAX as f64 {
        return Ok((seconds * NANOS_PER_SEC).ceil() as Nanos);
    }
    Err(Error::invalid(
        "seconds",
        format!(
            "must be a finite number of seconds >= 0 and < {:e}, got {seconds}",
            u64::MAX as f64 / NANOS_PER_SEC
        ),
    ))
}

fn seconds(nanos: Nanos) -> f64 {
    nanos as f64 / NANOS_PER_SEC
}

impl<B: Budget> Limiter<B> {
    pub(crate) fn new(quota: Quota, clock: Clock, policy: ReservationPolicy) -> Result<Self> {
        let params = Params::new(&quota)?;
        let budget = B::new(&params, clock.now());
        Self::with_budget(quota, params, clock, policy, budget)
    }

    /// A limiter over an existing budget (a key's state when its first booking opens).
    pub(crate) fn with_budget(
        quota: Quota,
        params: Params,
        clock: Clock,
        policy: ReservationPolicy,
        budget: B,
    ) -> Result<Self> {
        let policy = policy.validate()?;
        Ok(Self {
            tuning: CachePadded::new(Tuning {
                version: AtomicU64::new(0),
                unit: AtomicU64::new(params.unit),
                capacity: AtomicU64::new(params.capacity),
                busy: AtomicBool::new(false),
                retunes: AtomicU64::new(0),
                next_look: AtomicU64::new(u64::MAX),
                sampling: AtomicBool::new(false),
            }),
            budget,
            account: Mutex::new(Account {
                quota,
                params,
                book: Book::new(
                    (policy.ttl * NANOS_PER_SEC).ceil() as Nanos,
                    (policy.grace * NANOS_PER_SEC).ceil() as Nanos,
                    policy.max,
                    params.unit,
                ),
            }),
            clock,
            rebalancer: None,
        })
    }

    /// Moves the shards' shares toward demand as `rebalancing` says, where the algorithm
    /// has shares to move and there is more than one shard (otherwise it changes nothing).
    pub(crate) fn rebalancing(mut self, rebalancing: Rebalancing) -> Self {
        if self.account.get_mut().params.shards > 1 && self.budget.rebalanced().is_some() {
            let now = self.clock.now();
            let rebalancer = Rebalancer::new(rebalancing, now);
            *self.tuning.next_look.get_mut() = rebalancer.next_look(now);
            *self.tuning.sampling.get_mut() = true;
            self.rebalancer = Some(rebalancer);
        }
        self
    }

    /// Looks at demand now and moves the shares if it calls for it, or, with `force`,
    /// whenever anything was asked since they last moved; whether they moved.
    pub(crate) fn rebalance(&self, force: bool) -> bool {
        let Some(rebalancer) = &self.rebalancer else {
            return false;
        };
        let now = self.clock.now();
        let Some(mut since) = rebalancer.look(force) else {
            return false;
        };
        self.tuning
            .next_look
            .store(rebalancer.next_look(now), Ordering::Relaxed);
        let Some(current) = self.budget.rebalanced() else {
            return false;
        };
        if let Some(hot) = self.budget.hot_keys() {
            hot.publish(current.1);
        }
        let unit = self.tuning.unit.load(Ordering::Relaxed);
        let demand = self.budget.demand();
        let current = (&current.0, current.1);
        let Some(movement) = rebalancer.decide(&since, now, demand, unit, current, force) else {
            return false;
        };
        let mut account = self.account.lock();
        // As a booking does: quiet takes wait, and one that overlapped gives itself back.
        self.tuning.version.fetch_add(1, Ordering::SeqCst);
        let now = self.clock.now();
        self.refresh(&mut account, now);
        let moved = self.budget.reweigh(now, movement.weights, movement.active);
        self.tuning.version.fetch_add(1, Ordering::SeqCst);
        if moved {
            *since = Since {
                at: now,
                demand: movement.demand,
                served: self.budget.served(),
                gathered: self.budget.gathered(),
                rebalances: since.rebalances + 1,
            };
        }
        moved
    }

    /// The shards keys spread over.
    pub(crate) fn active(&self) -> usize {
        self.budget.active()
    }

    /// The keys spread over every shard in use because their demand exceeds a shard's
    /// share, hottest first.
    pub(crate) fn hot_keys(&self) -> Vec<HotKey> {
        match (&self.rebalancer, self.budget.hot_keys()) {
            (Some(_), Some(hot)) => hot.report(),
            _ => Vec::new(),
        }
    }

    /// Gives the key with `hash` its name in the hot-key sketch (after a sampled decision).
    pub(crate) fn name_key(&self, hash: u64, name: &str) {
        if let Some(hot) = self.budget.hot_keys() {
            hot.name(hash, name);
        }
    }

    /// Times the shares moved toward demand.
    pub(crate) fn rebalances(&self) -> u64 {
        self.rebalancer
            .as_ref()
            .map_or(0, |rebalancer| rebalancer.since().rebalances)
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(crate) fn quota(&self) -> Quota {
        self.account.lock().quota
    }

    pub(crate) fn candidates(&self, hash: u64) -> (usize, usize) {
        self.budget.candidates(hash)
    }

    fn tokens(&self, units: u64) -> f64 {
        units as f64 / self.tuning.unit.load(Ordering::Relaxed) as f64
    }

    fn decision(
        &self,
        now: Nanos,
        shard: usize,
        refusal: Option<(Refusal, Option<Nanos>)>,
    ) -> Decision {
        self.tallied(now, shard, refusal, true)
    }

    /// A decision, with the budget left right after it when `tally` (reading it costs a
    /// look at every shard, which threads on separate shards would otherwise not share).
    #[inline(always)]
    fn tallied(
        &self,
        now: Nanos,
        shard: usize,
        refusal: Option<(Refusal, Option<Nanos>)>,
        tally: bool,
    ) -> Decision {
        Decision {
            allowed: refusal.is_none(),
            reason: refusal.map(|(reason, _)| reason),
            shard,
            retry_after: refusal.and_then(|(_, wait)| wait.map(seconds)),
            at: now,
            remaining_units: tally.then(|| self.budget.available(now)),
            unit: self.tuning.unit.load(Ordering::Relaxed),
            sampled: false,
        }
    }

    /// A decision that keeps what it took, so that it can be undone; with the budget left
    /// after it when `tally`.
    #[inline(always)]
    pub(crate) fn take(
        &self,
        hash: u64,
        count: u64,
        tally: bool,
    ) -> Result<(Decision, Option<Taken<B::Receipt>>)> {
        if count == 0 {
            return Err(Error::invalid_count(&count));
        }
        loop {
            let version = self.tuning.version.load(Ordering::SeqCst);
            if version & 1 == 0 {
                if self.tuning.busy.load(Ordering::SeqCst) {
                    return Ok(self.take_in_account(hash, count));
                }
                if let Some(decided) = self.take_quietly(version, hash, count, tally) {
                    return Ok(decided);
                }
            }
            std::thread::yield_now();
        }
    }

    /// One lock-free decision under `version`; `None` when a booking or a re-rating began
    /// meanwhile, and the caller decides again. A take that raced a booking is given back
    /// (the account may not have seen it); one that raced a re-rating stays charged (the
    /// new state may already count it): never over, at worst a token lost.
    #[inline(always)]
    fn take_quietly(
        &self,
        version: u64,
        hash: u64,
        count: u64,
        tally: bool,
    ) -> Option<(Decision, Option<Taken<B::Receipt>>)> {
        let retunes = self.tuning.retunes.load(Ordering::SeqCst);
        let now = self.clock.now();
        let units = count
            .checked_mul(self.tuning.unit.load(Ordering::Relaxed))
            .filter(|&units| units <= self.tuning.capacity.load(Ordering::Relaxed));
        let outcome = units.map(|units| self.budget.acquire(&self.clock, now, hash, units));
        // Bookings and re-ratings bump the version before they read the budget: a take
        // that still sees the old version is in what they read.
        if self.tuning.version.load(Ordering::SeqCst) != version {
            if let Some(Outcome::Admitted { shard, receipt }) = outcome {
                if retunes & 1 == 0 && self.tuning.retunes.load(Ordering::SeqCst) == retunes {
                    self.budget.give_back(receipt, &self.clock);
                }
                self.budget.count_served(shard, false);
            }
            return None;
        }
        let decided = self.outcome(now, hash, outcome, retunes, tally);
        if self.tuning.sampling.load(Ordering::Relaxed) {
            return Some(self.adapt(decided, hash, count));
        }
        Some(decided)
    }

    /// What an adaptive limiter does after a decision, out of line so that the others pay
    /// one load of a read-mostly line: one in `hot::SAMPLE_EVERY` of each thread's decisions
    /// counts in the hot-key sketch, and a look at demand runs if one is due.
    #[inline(never)]
    fn adapt<T>(&self, mut decided: (Decision, T), hash: u64, count: u64) -> (Decision, T) {
        if hot::draw().is_multiple_of(hot::SAMPLE_EVERY) {
            self.budget.observe(hash, count);
            decided.0.sampled = true;
        }
        if decided.0.at >= self.tuning.next_look.load(Ordering::Relaxed) {
            self.rebalance(false);
        }
        decided
    }

    #[inline(always)]
    fn outcome(
        &self,
        now: Nanos,
        hash: u64,
        outcome: Option<Outcome<B::Receipt>>,
        retunes: u64,
        tally: bool,
    ) -> (Decision, Option<Taken<B::Receipt>>) {
        match outcome {
            Some(Outcome::Admitted { shard, receipt }) => (
                self.tallied(now, shard, None, tally),
                Some(Taken {
                    retunes,
                    shard,
                    receipt,
                }),
            ),
            Some(Outcome::Refused { shard, wait }) => (
                self.tallied(now, shard, Some((Refusal::RateLimited, Some(wait))), tally),
                None,
            ),
            None => (
                self.tallied(
                    now,
                    self.budget.candidates(hash).0,
                    Some((Refusal::ExceedsCapacity, None)),
                    tally,
                ),
                None,
            ),
        }
    }

    /// A decision while the book is not empty: admitted if, after it, every promise is
    /// still met at its slot; otherwise refused with the wait until such a take could be.
    fn take_in_account(&self, hash: u64, count: u64) -> (Decision, Option<Taken<B::Receipt>>) {
        let mut account = self.account.lock();
        let now = self.clock.now();
        self.refresh(&mut account, now);
        let retunes = self.tuning.retunes.load(Ordering::SeqCst);
        let Account { params, book, .. } = &*account;
        let promises = book.promises();
        let outcome = params.units(count).map(|units| {
            match self.budget.chance(now, params, &promises, units) {
                0 => self.budget.acquire(&self.clock, now, hash, units),
                wait => Outcome::Refused {
                    shard: self.budget.candidates(hash).0,
                    wait: self.hint(params, book, units, wait),
                },
            }
        });
        let (mut decision, taken) = self.outcome(now, hash, outcome, retunes, false);
        decision.remaining_units = Some(self.spare(now, &account));
        drop(account);
        if self.tuning.sampling.load(Ordering::Relaxed) {
            return self.adapt((decision, taken), hash, count);
        }
        (decision, taken)
    }

    /// A wait the promise rule gave (`chance`: if everyone executes on time), no sooner
    /// than [`RECHECK`] when held tokens stand in the way: escrow lowers what the budget
    /// refills to, so while a booking past its slot keeps it, the rule's wait may come and
    /// go without room, and asking again at once would only spin.
    fn hint(&self, params: &Params, book: &Book, units: u64, wait: Nanos) -> Nanos {
        let held = book.held().saturating_mul(params.unit);
        if wait > 0 && held > 0 && units > params.capacity.saturating_sub(held) {
            return wait.max(RECHECK);
        }
        wait
    }

    /// Units a take could have now beside every promise.
    fn spare(&self, now: Nanos, account: &Account) -> u64 {
        let reserved = self
            .budget
            .reserved(now, &account.params, &account.book.promises());
        self.budget.available(now).saturating_sub(reserved)
    }

    /// Gives back an admission, unless the limiter was re-rated since (then the new state
    /// may already count it, and it stays charged: never over).
    pub(crate) fn undo(&self, taken: Taken<B::Receipt>) {
        let account = self.account.lock();
        let retunes = self.tuning.retunes.load(Ordering::SeqCst);
        if retunes != taken.retunes || retunes & 1 == 1 {
            return;
        }
        self.budget.give_back(taken.receipt, &self.clock);
        self.budget.count_served(taken.shard, false);
        let mut account = account;
        let now = self.clock.now();
        self.refresh(&mut account, now);
    }

    /// Brings the account up to `now`: bookings past their time to live leave (their
    /// escrow goes back), reservations past their grace lapse, then bookings whose slot
    /// has come are funded in order while the budget holds their tokens. Funding at `now`
    /// rather than at the slot gives the same state: nothing could take them in between.
    fn refresh(&self, account: &mut Account, now: Nanos) {
        let Account { params, book, .. } = account;
        while let Some(seq) = book.expired(now) {
            let entry = book.finish(seq, Refusal::Expired);
            if entry.state == State::Held {
                self.budget
                    .release(now, params, entry.count.saturating_mul(params.unit));
            }
        }
        while let Some(seq) = book.lapsed(now) {
            let entry = book.lapse(seq);
            self.budget
                .release(now, params, entry.count.saturating_mul(params.unit));
        }
        while let Some((seq, entry)) = book.head() {
            let units = entry.count.saturating_mul(params.unit);
            if entry.slot > now || self.budget.available(now) < units {
                break;
            }
            self.budget.hold(now, params, units);
            book.fund(seq, now);
        }
        if book.is_empty() {
            self.tuning.busy.store(false, Ordering::SeqCst);
        }
    }

    /// Books `count` tokens at the first slot after every promise (held at once if that
    /// is now). Refused without booking when `count` exceeds the burst or
    /// the slot is more than `max_wait` seconds away. With `max_reservations` bookings kept,
    /// a caller's reservation is an error and a waiter's turn is refused
    /// `too_many_reservations`, with the wait for the slot it would have had.
    pub(crate) fn book(
        &self,
        hash: u64,
        count: u64,
        max_wait: f64,
        holder: Holder,
    ) -> Result<Booking> {
        if count == 0 {
            return Err(Error::invalid_count(&count));
        }
        let mut account = self.account.lock();
        let now = self.clock.now();
        self.refresh(&mut account, now);
        let shard = self.budget.candidates(hash).0;
        let Some(units) = account.params.units(count) else {
            let refused = self.decision(now, shard, Some((Refusal::ExceedsCapacity, None)));
            return Ok(Booking::Decided(refused));
        };
        if account.book.len() >= account.book.max {
            if holder == Holder::Caller {
                return Err(Error::TooManyReservations {
                    max: account.book.max,
                });
            }
            let slot = self
                .budget
                .slot(now, &account.params, &account.book.promises(), units);
            let refusal = (Refusal::TooManyReservations, Some(slot.saturating_sub(now)));
            return Ok(Booking::Decided(self.decision(now, shard, Some(refusal))));
        }
        let opening = !self.tuning.busy.load(Ordering::SeqCst);
        if opening {
            // Odd while opening: a quiet decision racing this gives its take back.
            self.tuning.version.fetch_add(1, Ordering::SeqCst);
            self.tuning.busy.store(true, Ordering::SeqCst);
        }
        let booked = self.book_in_account(&mut account, now, hash, count, units, max_wait, holder);
        if account.book.is_empty() {
            self.tuning.busy.store(false, Ordering::SeqCst);
        }
        if opening {
            self.tuning.version.fetch_add(1, Ordering::SeqCst);
        }
        Ok(booked)
    }

    #[allow(clippy::too_many_arguments)]
    fn book_in_account(
        &self,
        account: &mut Account,
        now: Nanos,
        hash: u64,
        count: u64,
        units: u64,
        max_wait: f64,
        holder: Holder,
    ) -> Booking {
        let shard = self.budget.candidates(hash).0;
        let Account { params, book, .. } = &mut *account;
        let slot = self.budget.slot(now, params, &book.promises(), units);
        let wait = slot - now;
        if seconds(wait) > max_wait {
            let refused = self.decision(now, shard, Some((Refusal::MaxWaitExceeded, Some(wait))));
            return Booking::Decided(refused);
        }
        let expires = holder.expires(slot, book.ttl);
        // Due now with nobody queued: held at once, as funding at its slot would.
        let now_held = slot <= now && book.head().is_none() && self.budget.available(now) >= units;
        if now_held {
            self.budget.hold(now, params, units);
        }
        let entry = Entry {
            hash,
            count,
            slot,
            expires,
            state: if now_held { State::Held } else { State::Queued },
            holder,
            lapses_at: 0,
        };
        let id = book.push(entry, self.budget.mark(slot));
        Booking::Reserved(Reservation {
            id,
            count,
            shard,
            reserved_at: now,
            execute_at: slot,
            expires_at: expires,
        })
    }

    /// Admits a booking whose tokens the budget holds, spending them now. Refused with
    /// `not_ready` (and the wait) while it is queued, and with `expired`, `cancelled`,
    /// `already_executed` or `unknown_reservation` otherwise.
    pub(crate) fn execute(&self, id: &str) -> Decision {
        let mut account = self.account.lock();
        let now = self.clock.now();
        self.refresh(&mut account, now);
        let (seq, entry) = match account.book.lookup(id) {
            Lookup::Live(seq, entry) => (seq, entry),
            Lookup::Finished(outcome) => return self.decision(now, 0, Some((outcome, None))),
            Lookup::Unknown => {
                return self.decision(now, 0, Some((Refusal::UnknownReservation, None)))
            }
        };
        let shard = self.budget.candidates(entry.hash).0;
        let units = entry.count.saturating_mul(account.params.unit);
        match entry.state {
            State::Queued => {
                // Before its slot it is admitted if it could be taken now beside every
                // other promise (capacity someone gave back), else told when to ask again.
                let wait = self.wait_for_turn(&mut account, now, seq, entry);
                if wait > 0 {
                    return self.decision(now, shard, Some((Refusal::NotReady, Some(wait))));
                }
                let Account { params, book, .. } = &mut *account;
                self.budget.hold(now, params, units);
                book.fund(seq, now);
            }
            State::Lapsed => {
                // Its tokens went back when its grace ended: it takes them anew, as a new
                // request would, or waits as long as a new booking would.
                let Account { params, book, .. } = &mut *account;
                let wait = self.budget.chance(now, params, &book.promises(), units);
                let wait = self.hint(params, book, units, wait);
                if wait > 0 {
                    return self.decision(now, shard, Some((Refusal::NotReady, Some(wait))));
                }
                self.budget.hold(now, params, units);
                book.fund(seq, now);
            }
            State::Held => {}
        }
        account.book.finish(seq, Refusal::AlreadyExecuted);
        let shard = self.budget.consume(now, &account.params, entry.hash, units);
        if account.book.is_empty() {
            self.tuning.busy.store(false, Ordering::SeqCst);
        }
        self.decision(now, shard, None)
    }

    /// How long a queued booking should wait before asking again (0: it can be admitted
    /// now beside every other promise): until it could be taken beside the others, and no
    /// later than its slot; past its slot (someone ahead was late, or a back-off or
    /// re-rating moved the budget), no later than the budget could fund it and everything
    /// queued ahead of it, or, when only escrow being spent can make room, the first
    /// reservation's expiry, or, when only waiters' turns are booked (they never expire,
    /// and their waiters take their tokens as they wake), a millisecond.
    fn wait_for_turn(&self, account: &mut Account, now: Nanos, seq: u64, entry: Entry) -> Nanos {
        let Account { params, book, .. } = account;
        let units = entry.count.saturating_mul(params.unit);
        let early = book.without(seq, |others| self.budget.chance(now, params, others, units));
        let early = self.hint(params, book, units, early);
        if early == 0 || entry.slot > now {
            return early.min(entry.slot.saturating_sub(now).max(1));
        }
        early.min(self.wait_past_slot(params, book, now, seq, entry))
    }

    fn wait_past_slot(
        &self,
        params: &Params,
        book: &Book,
        now: Nanos,
        seq: u64,
        entry: Entry,
    ) -> Nanos {
        let units = book
            .queued_ahead(seq)
            .saturating_add(entry.count)
            .saturating_mul(params.unit);
        // Held tokens lower what the budget can hold: past that, no refill funds the turn.
        let room = params
            .capacity
            .saturating_sub(book.held().saturating_mul(params.unit));
        if units <= room {
            let wait = self.budget.wait(now, params, units);
            if wait > 0 {
                return wait;
            }
        }
        book.next_expiry()
            .filter(|&expires| expires != Nanos::MAX)
            .map_or(RECHECK, |expires| expires.saturating_sub(now).max(1))
    }

    /// Gives a booking's escrow (if held) back to the budget, and forgets it; `true` once,
    /// `false` for an id that is unknown, expired, executed or already cancelled.
    pub(crate) fn cancel(&self, id: &str) -> bool {
        let mut account = self.account.lock();
        let now = self.clock.now();
        self.refresh(&mut account, now);
        let Lookup::Live(seq, _) = account.book.lookup(id) else {
            return false;
        };
        let entry = account.book.finish(seq, Refusal::Cancelled);
        if entry.state == State::Held {
            let units = entry.count.saturating_mul(account.params.unit);
            self.budget.release(now, &account.params, units);
        }
        self.refresh(&mut account, now);
        true
    }

    /// Live bookings (queued or held).
    pub(crate) fn reservation_counts(&self) -> ReservationCounts {
        let mut account = self.account.lock();
        self.refresh(&mut account, self.clock.now());
        ReservationCounts {
            active: account.book.len(),
            created: account.book.created,
            expired: account.book.expired,
        }
    }

    /// Tokens a `try_acquire` could take now (beside every promise).
    pub(crate) fn peek(&self) -> f64 {
        let now = self.clock.now();
        if self.tuning.busy.load(Ordering::SeqCst) {
            let mut account = self.account.lock();
            self.refresh(&mut account, now);
            return self.tokens(self.spare(now, &account));
        }
        self.tokens(self.budget.available(now))
    }

    /// Tokens free now in each shard.
    pub(crate) fn shard_tokens(&self) -> Vec<f64> {
        let now = self.clock.now();
        if self.tuning.busy.load(Ordering::SeqCst) {
            self.refresh(&mut self.account.lock(), now);
        }
        self.budget
            .shard_available(now)
            .into_iter()
            .map(|units| self.tokens(units))
            .collect()
    }

    /// Admissions each shard served since the limiter was made or reset, or the shares
    /// last moved.
    pub(crate) fn served(&self) -> Vec<u64> {
        let served = self.budget.served();
        match &self.rebalancer {
            Some(rebalancer) => {
                let since = rebalancer.since();
                let before = |i| since.served.get(i).copied().unwrap_or(0);
                let served = served.iter().enumerate();
                served.map(|(i, s)| s.wrapping_sub(before(i))).collect()
            }
            None => served,
        }
    }

    /// Of those, admissions gathered from every shard.
    pub(crate) fn gathered(&self) -> u64 {
        let gathered = self.budget.gathered();
        match &self.rebalancer {
            Some(rebalancer) => gathered.wrapping_sub(rebalancer.since().gathered),
            None => gathered,
        }
    }

    pub(crate) fn shares(&self) -> Shares {
        let account = self.account.lock();
        Shares::of(&account.quota, self.budget.parts(&account.params))
    }

    /// Nothing booked and the budget full for a whole period: a fresh limiter decides the same.
    pub(crate) fn is_idle(&self, now: Nanos) -> bool {
        let mut account = self.account.lock();
        self.refresh(&mut account, now);
        // Full for a whole period, as a quiet key must be before it is dropped: full only
        // now may be full because the burst was lowered, and a fresh key made after the
        // burst is raised again would start with more than this one kept.
        let full = |at: Nanos| self.budget.available(at) >= account.params.capacity;
        account.book.is_empty() && full(now) && full(now.saturating_sub(account.params.window))
    }

    /// Changes rate, period and burst at run time. The free tokens carry over (capped at
    /// the new burst), escrow stays held, and so does the sliding window's log. The
    /// algorithm and the shard count cannot change.
    pub(crate) fn set_quota(&self, quota: Quota) -> Result<()> {
        let mut account = self.account.lock();
        let current = account.quota;
        if quota.algorithm != current.algorithm {
            return Err(Error::invalid(
                "algorithm",
                format!(
                    "is fixed for the limiter's life ({:?}), got {:?}",
                    current.algorithm.name(),
                    quota.algorithm.name()
                ),
            ));
        }
        if quota.shards != current.shards {
            return Err(Error::invalid(
                "shards",
                format!(
                    "is fixed for the limiter's life ({}), got {}",
                    current.shards, quota.shards
                ),
            ));
        }
        let params = Params::with_scale(&quota, account.params.scale)?;
        self.retune(&mut account, params, false);
        account.quota = quota;
        let now = self.clock.now();
        self.refresh(&mut account, now);
        Ok(())
    }

    /// Admits nothing for `seconds`, then refills from empty: a token bucket owes that much
    /// refill (a balance of `-seconds × rate` tokens); a sliding window stays full until
    /// then. Bookings keep their place in line and are funded once the budget has their
    /// tokens again; escrow already held stays held.
    pub(crate) fn back_off(&self, seconds: f64) -> Result<()> {
        let length = back_off_nanos(seconds)?;
        let mut account = self.account.lock();
        let now = self.clock.now();
        self.refresh(&mut account, now);
        self.budget.owe_until(now, now.saturating_add(length));
        Ok(())
    }

    /// Refills the budget, clears the per-shard counters and forgets callers'
    /// reservations; waiters keep their turns, in order, on the fresh budget.
    pub(crate) fn reset(&self) {
        // The rebalancer's record before the account, in the order `rebalance` takes them.
        let since = self.rebalancer.as_ref().and_then(|r| r.look(true));
        let mut account = self.account.lock();
        let waiters = account.book.take_waiters();
        let params = account.params;
        self.retune(&mut account, params, true);
        self.budget.clear_served();
        let now = self.clock.now();
        if let Some(hot) = self.budget.hot_keys() {
            hot.clear();
        }
        if let Some(mut since) = since {
            *since = Since {
                at: now,
                demand: self.budget.demand(),
                rebalances: since.rebalances,
                ..Since::default()
            };
        }
        let Account { params, book, .. } = &mut *account;
        for (seq, waiter) in waiters {
            let units = waiter.count.saturating_mul(params.unit);
            let slot = self.budget.slot(now, params, &book.promises(), units);
            let entry = Entry {
                slot,
                expires: waiter.holder.expires(slot, book.ttl),
                state: State::Queued,
                ..waiter
            };
            book.requeue(seq, entry, self.budget.mark(slot));
        }
        self.refresh(&mut account, now);
    }

    /// Applies `params` to the budget, keeping the free credit unless `refill`. Runs
    /// under the account lock, so re-ratings take turns.
    fn retune(&self, account: &mut Account, params: Params, refill: bool) {
        self.tuning.retunes.fetch_add(1, Ordering::SeqCst);
        self.tuning.version.fetch_add(1, Ordering::SeqCst);
        let now = self.clock.now();
        self.budget
            .retune(now, &account.params, &params, account.book.held(), refill);
        account.params = params;
        account.book.set_unit(params.unit);
        self.tuning.unit.store(params.unit, Ordering::SeqCst);
        self.tuning
            .capacity
            .store(params.capacity, Ordering::SeqCst);
        self.tuning.retunes.fetch_add(1, Ordering::SeqCst);
        self.tuning.version.fetch_add(1, Ordering::SeqCst);
    }
}

impl<B: Budget + fmt::Debug + 'static> Backend for Limiter<B> {
    fn clock(&self) -> &Clock {
        Limiter::clock(self)
    }

    fn quota(&self) -> Quota {
        Limiter::quota(self)
    }

    fn scope(&self) -> Scope {
        Scope::Global
    }

    #[inline]
    fn try_acquire(&self, key: Key<'_>, count: u64) -> Result<Decision> {
        Limiter::take(self, key.hash(), count, true).map(|(decision, _)| decision)
    }

    #[inline]
    fn check(&self, key: Key<'_>, count: u64) -> Result<Decision> {
        Limiter::take(self, key.hash(), count, false).map(|(decision, _)| decision)
    }

    fn take(&self, key: Key<'_>, count: u64) -> Result<(Decision, Option<Undo>)> {
        let (decision, taken) = Limiter::take(self, key.hash(), count, true)?;
        Ok((decision, taken.map(|t| Undo(Box::new(t)))))
    }

    fn undo(&self, undo: Undo) -> Result<()> {
        let taken = undo
            .0
            .downcast::<Taken<B::Receipt>>()
            .expect("a take is undone on the limiter that made it");
        Limiter::undo(self, *taken);
        Ok(())
    }

    fn book(&self, key: Key<'_>, count: u64, max_wait: f64, holder: Holder) -> Result<Booking> {
        Limiter::book(self, key.hash(), count, max_wait, holder)
    }

    fn execute_reservation(&self, id: &str) -> Result<Decision> {
        Ok(self.execute(id))
    }

    fn cancel_reservation(&self, id: &str) -> Result<bool> {
        Ok(self.cancel(id))
    }

    fn reservation_counts(&self) -> Result<ReservationCounts> {
        Ok(Limiter::reservation_counts(self))
    }

    fn peek(&self, _key: Key<'_>) -> Result<f64> {
        Ok(Limiter::peek(self))
    }

    fn set_quota(&self, quota: Quota) -> Result<()> {
        Limiter::set_quota(self, quota)
    }

    fn back_off(&self, _key: Key<'_>, seconds: f64) -> Result<()> {
        Limiter::back_off(self, seconds)
    }

    fn reset(&self) -> Result<()> {
        Limiter::reset(self);
        Ok(())
    }

    fn shard_views(&self) -> Option<&dyn ShardViews> {
        Some(self)
    }
}

impl<B: Budget + fmt::Debug + 'static> ShardViews for Limiter<B> {
    fn candidates(&self, hash: u64) -> (usize, usize) {
        Limiter::candidates(self, hash)
    }

    fn shard_tokens(&self) -> Vec<f64> {
        Limiter::shard_tokens(self)
    }

    fn served(&self) -> Vec<u64> {
        Limiter::served(self)
    }

    fn gathered(&self) -> u64 {
        Limiter::gathered(self)
    }

    fn shares(&self) -> Shares {
        Limiter::shares(self)
    }
}
