//! What this process has given back is given back for everything it asks next.
//!
//! A task's turn goes back on the I/O thread (a task cannot make the round trip itself
//! when it is being cancelled), and a task cancelled while its booking is on the way cannot
//! give the turn back at all: the turn's id comes with the answer. Either turn is
//! [`Settling::owe`]d until it is back (for the booking, the I/O thread gives the turn back
//! when the answer comes), and meanwhile every later call of this process on the budget
//! waits for it (a plain call blocks, within its timeout; a task's call is held and sent
//! once it is). So a cancelled waiter's turn is gone for the next call, as in memory, and
//! the waiters behind it are told ([`Settling::given_back`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
pub(crate) struct Settling {
    state: Mutex<Debts>,
    settled: Condvar,
    /// Turns and reservations this process has given back, ever.
    given_back: AtomicU64,
}

#[derive(Default)]
struct Debts {
    /// The process they are this one's debts in (a forked child starts with none).
    pid: u32,
    turns: usize,
    /// Tasks' calls made while turns were owed, sent once none is.
    held: Vec<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Settling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Settling({} owed)", self.debts().turns)
    }
}

/// A turn owed back: paid when dropped (given back, or found not to be a turn, or failed).
pub struct Owed {
    settling: Arc<Settling>,
    pid: u32,
}

impl std::fmt::Debug for Owed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owed")
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        let held = {
            let mut owed = self.settling.debts();
            if owed.pid != self.pid {
                return; // the parent's, in a forked child
            }
            owed.turns -= 1;
            if owed.turns > 0 {
                return;
            }
            self.settling.settled.notify_all();
            std::mem::take(&mut owed.held)
        };
        held.into_iter().for_each(|send| send());
    }
}

impl Settling {
    /// This process's debts: in a forked child, none (the turns owed are the parent's, to
    /// be given back by its I/O thread, and the calls held were its tasks').
    fn debts(&self) -> MutexGuard<'_, Debts> {
        let mut debts = self.state.lock();
        let pid = std::process::id();
        if debts.pid != pid {
            std::mem::forget(std::mem::take(&mut debts.held));
            (debts.pid, debts.turns) = (pid, 0);
        }
        debts
    }

    pub(crate) fn owe(self: &Arc<Self>) -> Owed {
        let mut debts = self.debts();
        debts.turns += 1;
        Owed {
            settling: Arc::clone(self),
            pid: debts.pid,
        }
    }

    pub(crate) fn owes(&self) -> bool {
        self.debts().turns > 0
    }

    /// Blocks until nothing is owed, or until `deadline`.
    pub(crate) fn wait(&self, deadline: Instant) {
        let mut owed = self.debts();
        while owed.turns > 0 && !self.settled.wait_until(&mut owed, deadline).timed_out() {}
    }

    /// Runs `send` now if nothing is owed, else once nothing is.
    pub(crate) fn after(&self, send: impl FnOnce() + Send + 'static) {
        let mut owed = self.debts();
        if owed.turns == 0 {
            drop(owed);
            send();
        } else {
            owed.held.push(Box::new(send));
        }
    }

    pub(crate) fn gave_back(&self) {
        self.given_back.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn given_back(&self) -> u64 {
        self.given_back.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn calls_wait_until_every_turn_owed_is_back() {
        let settling = Arc::new(Settling::default());
        let (first, second) = (settling.owe(), settling.owe());
        let sent = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&sent);
        settling.after(move || {
            counter.fetch_add(1, Ordering::AcqRel);
        });
        drop(first);
        assert!(settling.owes());
        assert_eq!(sent.load(Ordering::Acquire), 0);
        let waiter = {
            let settling = Arc::clone(&settling);
            std::thread::spawn(move || settling.wait(Instant::now() + Duration::from_secs(10)))
        };
        drop(second);
        waiter.join().unwrap();
        assert!(!settling.owes());
        assert_eq!(sent.load(Ordering::Acquire), 1);
    }

    #[test]
    fn a_wait_ends_at_its_deadline() {
        let settling = Arc::new(Settling::default());
        let _owed = settling.owe();
        let started = Instant::now();
        settling.wait(started + Duration::from_millis(20));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
