//! The book of bookings, as plain values: every booking ever made, in booking order, with
//! its state. Finished bookings stay (their ids answer repeats); queries are O(n) loops.

use crate::clock::Nanos;
use crate::decision::{Holder, Refusal};

/// A booking's id: its place in booking order (0 for the first).
pub type Id = usize;

/// Where a booking stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A promise at its slot, holding nothing.
    Queued,
    /// Funded: its tokens are in escrow. A caller's reservation lapses at `lapses`; a
    /// waiter's turn never does (`None`).
    Held { lapses: Option<Nanos> },
    /// A caller's reservation whose grace ended: its tokens went back to the budget.
    Lapsed,
    /// Executed, cancelled or expired: no longer in the book.
    Finished(Refusal),
}

/// One booking: `count` tokens promised at `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booking {
    pub count: u64,
    pub slot: Nanos,
    /// End of a caller's time to live; `Nanos::MAX` for a waiter's turn (never).
    pub expires: Nanos,
    pub holder: Holder,
    pub state: State,
}

impl Booking {
    /// Still in the book: queued, held or lapsed.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, State::Finished(_))
    }

    pub fn is_queued(&self) -> bool {
        self.state == State::Queued
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Book {
    pub bookings: Vec<Booking>,
}

impl Book {
    pub fn get(&self, id: Id) -> Option<&Booking> {
        self.bookings.get(id)
    }

    /// Adds a booking; returns its id.
    pub fn push(&mut self, booking: Booking) -> Id {
        self.bookings.push(booking);
        self.bookings.len() - 1
    }

    pub fn set_state(&mut self, id: Id, state: State) {
        self.bookings[id].state = state;
    }

    /// Ends a live booking with `outcome`; returns the state it was in.
    pub fn finish(&mut self, id: Id, outcome: Refusal) -> State {
        let before = self.bookings[id].state;
        self.bookings[id].state = State::Finished(outcome);
        before
    }

    /// Live bookings whose `when` has come by `now`, in order of `when`, then of booking.
    pub fn due(&self, now: Nanos, when: impl Fn(&Booking) -> Option<Nanos>) -> Vec<Id> {
        let mut due: Vec<(Nanos, Id)> = (0..self.bookings.len())
            .filter(|&id| self.bookings[id].is_live())
            .filter_map(|id| when(&self.bookings[id]).map(|at| (at, id)))
            .filter(|&(at, _)| at <= now)
            .collect();
        due.sort_unstable();
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// The first queued booking.
    pub fn first_queued(&self) -> Option<Id> {
        self.bookings.iter().position(Booking::is_queued)
    }

    /// Tokens in escrow.
    pub fn held_tokens(&self) -> u64 {
        let held = self
            .bookings
            .iter()
            .filter(|b| matches!(b.state, State::Held { .. }));
        held.map(|b| b.count).sum()
    }

    /// Tokens queued by bookings made before `id`.
    pub fn queued_ahead(&self, id: Id) -> u64 {
        let ahead = self.bookings[..id].iter().filter(|b| b.is_queued());
        ahead.map(|b| b.count).sum()
    }

    /// When the first caller's reservation expires, if one is live.
    pub fn next_expiry(&self) -> Option<Nanos> {
        let live = self.bookings.iter().filter(|b| b.is_live());
        live.map(|b| b.expires).filter(|&e| e != Nanos::MAX).min()
    }

    /// Every promise.
    pub fn promises(&self) -> Promises<'_> {
        Promises {
            bookings: &self.bookings,
            except: None,
        }
    }

    /// Every promise but the queued booking `id`'s (may it be admitted beside the others?).
    pub fn promises_without(&self, id: Id) -> Promises<'_> {
        Promises {
            bookings: &self.bookings,
            except: Some(id),
        }
    }
}

/// What the book has promised, as a budget reads it.
#[derive(Debug, Clone, Copy)]
pub struct Promises<'a> {
    bookings: &'a [Booking],
    /// A queued booking left out of the queue.
    except: Option<Id>,
}

impl<'a> Promises<'a> {
    /// Bookings not yet funded, in booking order (which is slot order).
    pub fn queued(&self) -> impl Iterator<Item = &'a Booking> + 'a {
        let except = self.except;
        let bookings = self.bookings.iter().enumerate();
        bookings
            .filter(move |&(id, b)| b.is_queued() && Some(id) != except)
            .map(|(_, b)| b)
    }

    pub fn queued_tokens(&self) -> u64 {
        self.queued().map(|b| b.count).sum()
    }

    /// The last queued promise's slot (0 with none): a new slot is never before it.
    pub fn last_slot(&self) -> Nanos {
        self.queued().last().map_or(0, |b| b.slot)
    }

    /// The slot of the queued booking that holds the `k`-th queued token (1-based); past
    /// them all, the last queued slot.
    pub fn slot_of(&self, k: u64) -> Nanos {
        let mut through = 0;
        for booking in self.queued() {
            through += booking.count;
            if through >= k {
                return booking.slot;
            }
        }
        self.last_slot()
    }
}
