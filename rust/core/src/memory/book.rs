//! The reservation book: live bookings only, each operation O(log n).
//!
//! A booking is *queued* (a promise at its slot, holding nothing; funded at its slot, in
//! booking order), *held* (its tokens are in escrow) or, a caller's reservation not executed
//! within its grace (`reservation_grace`) of its slot, *lapsed* (its tokens went back to the budget; executed later,
//! it takes them anew if the budget has them). It leaves the book the moment it is
//! executed, cancelled or expires; a bounded record of recently finished callers' ids
//! answers repeats, and older ids are unknown. Ids carry their sequence number and a keyed
//! tag, so a guessed id or one from another limiter does not verify.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;

use crate::clock::Nanos;
use crate::decision::{Holder, Refusal};
use crate::memory::budget::Promises;
use crate::memory::schedule::Schedule;

/// Finished callers' ids remembered, so that a repeat says what became of the reservation.
const REMEMBERED: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Queued,
    Held,
    Lapsed,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) hash: u64,
    pub(crate) count: u64,
    pub(crate) slot: Nanos,
    pub(crate) expires: Nanos,
    pub(crate) state: State,
    pub(crate) holder: Holder,
    /// When a held caller's reservation lapses (set by the book when it is held).
    pub(crate) lapses_at: Nanos,
}

pub(crate) enum Lookup {
    Live(u64, Entry),
    Finished(Refusal),
    Unknown,
}

#[derive(Debug)]
pub(crate) struct Book {
    live: HashMap<u64, Entry>,
    /// Queued bookings, in booking order.
    schedule: Schedule,
    expiry: BTreeSet<(Nanos, u64)>,
    /// Held callers' reservations, by when their grace ends.
    lapses: BTreeSet<(Nanos, u64)>,
    held: u64,
    finished: HashMap<u64, Refusal>,
    finished_order: VecDeque<u64>,
    next_seq: u64,
    tags: RandomState,
    pub(crate) ttl: Nanos,
    /// How long a held caller's reservation keeps its tokens past its slot.
    grace: Nanos,
    pub(crate) max: usize,
    /// Callers' reservations made, and expired, since the book was made (a reset makes a
    /// new one).
    pub(crate) created: u64,
    pub(crate) expired: u64,
}

impl Book {
    /// A book for a budget whose token costs `unit` units.
    pub(crate) fn new(ttl: Nanos, grace: Nanos, max: usize, unit: u64) -> Self {
        Self {
            live: HashMap::new(),
            schedule: Schedule::new(unit),
            expiry: BTreeSet::new(),
            lapses: BTreeSet::new(),
            held: 0,
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            next_seq: 0,
            tags: RandomState::new(),
            ttl,
            grace,
            max,
            created: 0,
            expired: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Tokens in escrow.
    pub(crate) fn held(&self) -> u64 {
        self.held
    }

    pub(crate) fn promises(&self) -> Promises<'_> {
        Promises {
            schedule: &self.schedule,
        }
    }

    /// What `f` computes from the promises without the queued booking `seq` (whether it
    /// could be admitted now, beside every other promise).
    pub(crate) fn without<T>(&mut self, seq: u64, f: impl FnOnce(&Promises<'_>) -> T) -> T {
        let parked = self.schedule.park(seq);
        let answer = f(&self.promises());
        self.schedule.unpark(parked);
        answer
    }

    /// The first queued booking.
    pub(crate) fn head(&self) -> Option<(u64, Entry)> {
        let seq = self.schedule.first()?;
        Some((seq, self.live[&seq]))
    }

    /// Tokens queued by bookings ahead of the queued booking `seq`.
    pub(crate) fn queued_ahead(&self, seq: u64) -> u64 {
        self.schedule.tokens_ahead(seq)
    }

    /// The booking whose time to live ends first, if it has ended by `now`.
    pub(crate) fn expired(&self, now: Nanos) -> Option<u64> {
        self.expiry
            .first()
            .filter(|&&(expires, _)| expires <= now)
            .map(|&(_, seq)| seq)
    }

    /// When the first time to live ends.
    pub(crate) fn next_expiry(&self) -> Option<Nanos> {
        self.expiry.first().map(|&(expires, _)| expires)
    }

    /// The held reservation whose grace ends first, if it has ended by `now`.
    pub(crate) fn lapsed(&self, now: Nanos) -> Option<u64> {
        self.lapses
            .first()
            .filter(|&&(ends, _)| ends <= now)
            .map(|&(_, seq)| seq)
    }

    /// A held reservation's grace is over: its tokens go back (the caller releases them).
    pub(crate) fn lapse(&mut self, seq: u64) -> Entry {
        let entry = self.live.get_mut(&seq).expect("a held booking is live");
        debug_assert_eq!(entry.state, State::Held);
        entry.state = State::Lapsed;
        self.held -= entry.count;
        self.lapses.remove(&(entry.lapses_at, seq));
        *entry
    }

    /// A re-rating changed the units a token costs.
    pub(crate) fn set_unit(&mut self, unit: u64) {
        self.schedule.set_unit(unit);
    }

    /// Adds a booking, queued at `mark` (its slot as the budget measures refill) or held;
    /// returns its id.
    pub(crate) fn push(&mut self, entry: Entry, mark: i128) -> String {
        let seq = self.next_seq;
        self.next_seq += 1;
        if entry.holder == Holder::Caller {
            self.created += 1;
        }
        self.insert(seq, entry, mark);
        self.id(seq)
    }

    fn insert(&mut self, seq: u64, mut entry: Entry, mark: i128) {
        match entry.state {
            State::Queued => {
                self.schedule.push(seq, entry.count, mark, entry.slot);
            }
            State::Held => {
                self.held += entry.count;
                let from = entry.slot;
                self.hold_until_grace(seq, &mut entry, from);
            }
            State::Lapsed => {}
        }
        self.expiry.insert((entry.expires, seq));
        self.live.insert(seq, entry);
    }

    /// The budget now holds a booking's tokens: a queued one's at `now`, or a lapsed one's
    /// again (to be executed at once).
    pub(crate) fn fund(&mut self, seq: u64, now: Nanos) {
        let mut entry = self.live[&seq];
        if entry.state == State::Queued {
            self.schedule.remove(seq);
        }
        entry.state = State::Held;
        self.held += entry.count;
        let from = entry.slot.max(now);
        self.hold_until_grace(seq, &mut entry, from);
        self.live.insert(seq, entry);
    }

    /// A caller's reservation held from `from` lapses a grace later; a waiter's turn never
    /// does (its waiter takes the tokens as it wakes).
    fn hold_until_grace(&mut self, seq: u64, entry: &mut Entry, from: Nanos) {
        if entry.holder == Holder::Caller {
            // Held through `from + grace` inclusive: a grace of 0 still allows the slot.
            entry.lapses_at = from.saturating_add(self.grace).saturating_add(1);
            self.lapses.insert((entry.lapses_at, seq));
        }
    }

    /// Takes a booking out of the book; a caller's id is remembered as `outcome`.
    pub(crate) fn finish(&mut self, seq: u64, outcome: Refusal) -> Entry {
        let entry = self.live.remove(&seq).expect("a finished booking was live");
        match entry.state {
            State::Queued => {
                self.schedule.remove(seq);
            }
            State::Held => {
                self.held -= entry.count;
                self.lapses.remove(&(entry.lapses_at, seq));
            }
            State::Lapsed => {}
        }
        self.expiry.remove(&(entry.expires, seq));
        if entry.holder == Holder::Caller {
            if outcome == Refusal::Expired {
                self.expired += 1;
            }
            if self.finished_order.len() == REMEMBERED {
                let oldest = self.finished_order.pop_front().expect("full");
                self.finished.remove(&oldest);
            }
            self.finished.insert(seq, outcome);
            self.finished_order.push_back(seq);
        }
        entry
    }

    /// Empties the book for `reset()`, returning the waiters' turns in order: callers'
    /// reservations are forgotten (their ids become unknown).
    pub(crate) fn take_waiters(&mut self) -> Vec<(u64, Entry)> {
        let mut waiters: Vec<(u64, Entry)> = self
            .live
            .drain()
            .filter(|(_, e)| e.holder == Holder::Waiter)
            .collect();
        waiters.sort_unstable_by_key(|&(seq, _)| seq);
        let fresh = Book::new(self.ttl, self.grace, self.max, self.schedule.unit());
        *self = Book {
            next_seq: self.next_seq,
            tags: std::mem::take(&mut self.tags),
            ..fresh
        };
        waiters
    }

    /// Puts a waiter's turn back under its old id (after `reset()`).
    pub(crate) fn requeue(&mut self, seq: u64, entry: Entry, mark: i128) {
        self.insert(seq, entry, mark);
    }

    pub(crate) fn lookup(&self, id: &str) -> Lookup {
        let parsed = id.split_once('-').and_then(|(seq, tag)| {
            Some((
                u64::from_str_radix(seq, 16).ok()?,
                u64::from_str_radix(tag, 16).ok()?,
            ))
        });
        match parsed {
            Some((seq, tag)) if tag == self.tag(seq) => {
                if let Some(entry) = self.live.get(&seq) {
                    Lookup::Live(seq, *entry)
                } else if let Some(&outcome) = self.finished.get(&seq) {
                    Lookup::Finished(outcome)
                } else {
                    Lookup::Unknown
                }
            }
            _ => Lookup::Unknown,
        }
    }

    fn id(&self, seq: u64) -> String {
        format!("{seq:x}-{:016x}", self.tag(seq))
    }

    fn tag(&self, seq: u64) -> u64 {
        self.tags.hash_one(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: Nanos, state: State) -> Entry {
        Entry {
            hash: 0,
            count: 1,
            slot,
            expires: slot + 100,
            state,
            holder: Holder::Caller,
            lapses_at: 0,
        }
    }

    #[test]
    fn ids_verify_only_in_their_own_book() {
        let mut book = Book::new(100, 50, 10, 1);
        let mut other = Book::new(100, 50, 10, 1);
        let id = book.push(entry(0, State::Held), 0);
        other.push(entry(0, State::Held), 0);
        assert!(matches!(book.lookup(&id), Lookup::Live(0, _)));
        assert!(matches!(other.lookup(&id), Lookup::Unknown));
        assert!(matches!(book.lookup("0-0000000000000000"), Lookup::Unknown));
        assert!(matches!(book.lookup("not an id"), Lookup::Unknown));
    }

    #[test]
    fn a_finished_booking_leaves_at_once_and_its_id_says_why() {
        let mut book = Book::new(100, 50, 10, 1);
        let id = book.push(entry(0, State::Held), 0);
        book.finish(0, Refusal::AlreadyExecuted);
        assert!(book.is_empty());
        assert!(matches!(
            book.lookup(&id),
            Lookup::Finished(Refusal::AlreadyExecuted)
        ));
    }

    #[test]
    fn only_live_queued_bookings_are_promises_and_they_are_funded_in_order() {
        let mut book = Book::new(100, 50, 10, 1);
        book.push(entry(0, State::Held), 0);
        book.push(entry(10, State::Queued), 10);
        book.push(entry(20, State::Queued), 20);
        assert_eq!(book.head().map(|(seq, _)| seq), Some(1));
        assert_eq!((book.promises().queued_units(), book.held()), (2, 1));
        book.finish(1, Refusal::Cancelled);
        // The cancelled one is no promise any more, at once.
        assert_eq!(book.promises().queued_units(), 1);
        assert_eq!(book.promises().schedule.slot_of(1), Some(20));
        assert_eq!(book.promises().tail(), 20);
        book.fund(2, 0);
        assert!(book.head().is_none());
        assert_eq!(book.held(), 2);
    }

    #[test]
    fn expiry_comes_in_time_order() {
        let mut book = Book::new(100, 50, 10, 1);
        book.push(entry(50, State::Queued), 50);
        book.push(entry(10, State::Held), 10);
        assert_eq!(book.expired(109), None);
        assert_eq!(book.expired(110), Some(1));
        assert_eq!(book.next_expiry(), Some(110));
    }
}
