//! The reservation book: tokens held now for a slot later, in FIFO order.
//!
//! A reservation that the budget can serve now takes its tokens at once (`Held`). One that
//! cannot gets the next slot: the earliest time at which the budget, after every reservation
//! queued before it, holds its tokens (`Pending`). While any reservation is pending, the
//! limiter serves nobody else first: immediate requests are refused with the wait until
//! the queue has passed, so pending tokens count against the budget at once. A pending
//! reservation takes its tokens at its slot (the book does this lazily, in order, on the
//! next operation that looks), so the shards see every take in time order.
//!
//! Entries sit in a deque in slot order; with one time-to-live per limiter, expiry order is
//! slot order too, so expired entries leave from the front. Ids carry their sequence number
//! and a keyed tag, so a lookup is an index, and an id from another limiter (or a guess)
//! does not verify.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;

use crate::clock::Nanos;

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Waiting for its slot; its tokens are not yet taken from the shards.
    Pending,
    /// Its tokens are taken; ready to execute.
    Held,
    Executed,
    Cancelled,
}

/// Bytes one reservation takes in the book (its deque may hold up to twice as many slots).
pub const RESERVATION_BYTES: usize = std::mem::size_of::<Entry>();

/// One reservation: 48 bytes in the book.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) slot: Nanos,
    pub(crate) expires: Nanos,
    /// Budget units held (what the count cost when reserved).
    pub(crate) units: u64,
    pub(crate) count: u64,
    /// The key's hash: the shards it is served from.
    pub(crate) hash: u64,
    pub(crate) state: State,
    /// Booked by a waiting `acquire`: nobody else knows its id, so it leaves the book as
    /// soon as it is executed or cancelled.
    pub(crate) turn: bool,
}

/// What an id refers to.
#[derive(Debug)]
pub(crate) enum Lookup {
    Found(usize),
    /// Issued here, but already dropped from the book (it expired).
    Gone,
    Unknown,
}

#[derive(Debug)]
pub(crate) struct Book {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    first_seq: u64,
    pending: usize,
    /// No entry before this index is pending: a reservation is only queued behind others
    /// or behind nothing, so the pending ones are always among the newest.
    pending_from: usize,
    tags: RandomState,
    pub(crate) ttl: Nanos,
    pub(crate) max: usize,
}

impl Book {
    pub(crate) fn new(ttl: Nanos, max: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            first_seq: 0,
            pending: 0,
            pending_from: 0,
            tags: RandomState::new(),
            ttl,
            max,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    pub(crate) fn entry(&self, index: usize) -> &Entry {
        &self.entries[index]
    }

    fn pending_entries(&self) -> impl Iterator<Item = (usize, &Entry)> + '_ {
        self.entries
            .range(self.pending_from..)
            .enumerate()
            .map(|(i, e)| (self.pending_from + i, e))
            .filter(|(_, e)| e.state == State::Pending)
    }

    /// Slots and token counts of the pending reservations, in order.
    pub(crate) fn queue(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        self.pending_entries().map(|(_, e)| (e.slot, e.count))
    }

    /// The pending reservations whose slot is at or before `horizon`, oldest first.
    pub(crate) fn due(&self, horizon: Nanos) -> Vec<(usize, Entry)> {
        self.pending_entries()
            .take_while(|(_, e)| e.slot <= horizon)
            .map(|(i, e)| (i, *e))
            .collect()
    }

    /// A pending entry took its `units` at its slot.
    pub(crate) fn hold(&mut self, index: usize, units: u64) {
        self.finish(index, State::Held);
        self.entries[index].units = units;
    }

    /// Cancels an entry. A pending one expires at once: its slot may be later than a newer
    /// entry's, and it must not hold the expiry order up.
    pub(crate) fn cancel(&mut self, index: usize, now: Nanos) {
        if self.entries[index].state == State::Pending {
            self.entries[index].expires = now;
        }
        self.finish(index, State::Cancelled);
    }

    /// Moves an entry on (held, executed, cancelled); keeps the pending count.
    pub(crate) fn finish(&mut self, index: usize, state: State) {
        if self.entries[index].state == State::Pending {
            self.pending -= 1;
            if self.pending == 0 {
                self.pending_from = self.entries.len();
            }
        }
        self.entries[index].state = state;
    }

    /// Adds an entry; returns its id.
    pub(crate) fn push(&mut self, entry: Entry) -> String {
        if self.pending == 0 {
            self.pending_from = self.entries.len();
        }
        if entry.state == State::Pending {
            self.pending += 1;
        }
        let seq = self.first_seq + self.entries.len() as u64;
        self.entries.push_back(entry);
        format!("{seq:x}-{:016x}", self.tag(seq))
    }

    /// Drops entries whose time to live has passed, and finished turns, from the front.
    /// Entries stand in slot order, hence in expiry order: a cancelled pending entry, the
    /// only one whose slot can be later than a newer entry's, expires when cancelled.
    pub(crate) fn purge(&mut self, now: Nanos) {
        let leaves = |e: &Entry| match e.state {
            State::Pending => false,
            State::Held => e.expires <= now,
            State::Executed | State::Cancelled => e.turn || e.expires <= now,
        };
        while self.entries.front().is_some_and(leaves) {
            self.entries.pop_front();
            self.first_seq += 1;
            self.pending_from = self.pending_from.saturating_sub(1);
        }
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
                if seq < self.first_seq {
                    Lookup::Gone
                } else if seq - self.first_seq < self.entries.len() as u64 {
                    Lookup::Found((seq - self.first_seq) as usize)
                } else {
                    Lookup::Unknown
                }
            }
            _ => Lookup::Unknown,
        }
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
            slot,
            expires: slot + 100,
            units: 1,
            count: 1,
            hash: 0,
            state,
            turn: false,
        }
    }

    #[test]
    fn an_entry_is_48_bytes() {
        assert_eq!(RESERVATION_BYTES, 48);
    }

    #[test]
    fn ids_verify_only_in_their_own_book() {
        let mut book = Book::new(100, 10);
        let mut other = Book::new(100, 10);
        let id = book.push(entry(0, State::Held));
        other.push(entry(0, State::Held));
        assert!(matches!(book.lookup(&id), Lookup::Found(0)));
        assert!(matches!(other.lookup(&id), Lookup::Unknown));
        assert!(matches!(book.lookup("0-0000000000000000"), Lookup::Unknown));
        assert!(matches!(book.lookup("not an id"), Lookup::Unknown));
    }

    #[test]
    fn expired_entries_leave_from_the_front_and_their_ids_say_so() {
        let mut book = Book::new(100, 10);
        let first = book.push(entry(0, State::Executed));
        let second = book.push(entry(50, State::Held));
        book.purge(100);
        assert_eq!(book.len(), 1);
        assert!(matches!(book.lookup(&first), Lookup::Gone));
        assert!(matches!(book.lookup(&second), Lookup::Found(0)));
    }

    #[test]
    fn the_queue_is_the_pending_entries_in_order() {
        let mut book = Book::new(100, 10);
        book.push(entry(0, State::Held));
        book.push(entry(10, State::Pending));
        book.push(entry(20, State::Pending));
        assert_eq!(book.pending(), 2);
        assert_eq!(book.queue().collect::<Vec<_>>(), vec![(10, 1), (20, 1)]);
        assert_eq!(book.due(15).len(), 1);
        book.finish(1, State::Cancelled);
        assert_eq!(book.pending(), 1);
        assert_eq!(book.queue().collect::<Vec<_>>(), vec![(20, 1)]);
    }
}
