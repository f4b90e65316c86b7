//! A key's sliding window in `scope="key"`, in the same memory at every rate.
//!
//! The exact log keeps one timestamp per admission, which per key would grow with the rate.
//! Here the window of `W` ns is cut into granules of `g = ceil(W / (G - 1))` ns and a ring of
//! `G` counters holds the admissions of the last `G` granules. An admission in granule `k`
//! counts until `(k + 1) * g + W`: never shorter than the exact log counts it, so at most
//! `floor(rate)` admissions fall in any window of `W` (I1), and at most one granule (1/30
//! of the period) longer, which is all the capacity it can cost. A key's window is 136
//! bytes behind a pointer, its lock included, whatever its rate.

use parking_lot::Mutex;

use crate::clock::{Clock, Nanos};
use crate::memory::keyed::KeyCell;
use crate::memory::params::Params;
use crate::memory::sliding_window::SlidingWindow;

/// Counters in the ring: as many as fit in 136 bytes with the ring's newest granule and
/// its lock.
const GRANULES: u64 = 31;

#[derive(Debug)]
pub(crate) struct WindowCell(Box<Mutex<Ring>>);

/// Packed to 4-byte alignment, so that the lock's byte takes 4 bytes beside it, not 8.
#[derive(Debug)]
#[repr(C, packed(4))]
struct Ring {
    /// The newest granule counted; the ring holds it and the `GRANULES - 1` before it.
    newest: u64,
    counts: [u32; GRANULES as usize],
}

/// `count` admissions in `granule`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Receipt {
    granule: u64,
    count: u64,
}

/// The granule length for a window of `window` ns: `G - 1` granules cover it, so every
/// granule still counted is in the ring.
fn granule_len(window: Nanos) -> Nanos {
    window.div_ceil(GRANULES - 1).max(1)
}

impl Ring {
    fn count(&mut self, granule: u64) -> &mut u32 {
        &mut self.counts[(granule % GRANULES) as usize]
    }

    /// Moves the ring forward to `granule` (never back), clearing the granules it passes.
    fn advance(&mut self, granule: u64) {
        if granule <= self.newest {
            return;
        }
        for k in self.newest + 1..=granule.min(self.newest + GRANULES) {
            *self.count(k) = 0;
        }
        self.newest = granule;
    }

    /// The granules that still count at `now`, oldest first, with their admissions.
    fn counted(&self, params: &Params, now: Nanos) -> impl Iterator<Item = (u64, u64)> + '_ {
        let (g, window) = (granule_len(params.window), params.window);
        (self.newest.saturating_sub(GRANULES - 1)..=self.newest)
            .filter(move |&k| (k + 1) * g + window > now)
            .map(|k| (k, u64::from(self.counts[(k % GRANULES) as usize])))
    }

    fn used(&self, params: &Params, now: Nanos) -> u64 {
        self.counted(params, now).map(|(_, count)| count).sum()
    }

    /// Adds `count` admissions to `granule`, or to the oldest granule the ring still holds.
    fn add(&mut self, granule: u64, count: u64) {
        let granule = granule.max(self.newest.saturating_sub(GRANULES - 1));
        self.advance(granule);
        let slot = self.count(granule);
        *slot = u32::try_from(u64::from(*slot) + count).unwrap_or(u32::MAX);
    }
}

impl KeyCell for WindowCell {
    type Budget = SlidingWindow;
    type Receipt = Receipt;

    fn fresh(params: &Params, now: Nanos) -> Self {
        Self(Box::new(Mutex::new(Ring {
            newest: now / granule_len(params.window),
            counts: [0; GRANULES as usize],
        })))
    }

    fn take(&self, params: &Params, now: Nanos, units: u64) -> Result<Receipt, Nanos> {
        let mut ring = self.0.lock();
        // A caller that read the clock before the last holder did counts in the newer
        // granule: later is never over.
        ring.advance(now / granule_len(params.window));
        let used = ring.used(params, now);
        if used + units <= params.capacity {
            let granule = ring.newest;
            ring.add(granule, units);
            return Ok(Receipt {
                granule,
                count: units,
            });
        }
        // Room comes as the oldest granules leave.
        let g = granule_len(params.window);
        let mut left = 0;
        for (k, count) in ring.counted(params, now) {
            left += count;
            if used - left + units <= params.capacity {
                return Err((k + 1) * g + params.window - now);
            }
        }
        Err(g)
    }

    fn give_back(&self, _params: &Params, _clock: &Clock, receipt: Receipt) {
        let mut ring = self.0.lock();
        if ring.newest - receipt.granule < GRANULES {
            let slot = ring.count(receipt.granule);
            *slot = slot.saturating_sub(u32::try_from(receipt.count).unwrap_or(u32::MAX));
        }
    }

    fn available(&self, params: &Params, now: Nanos) -> u64 {
        params
            .capacity
            .saturating_sub(self.0.lock().used(params, now))
    }

    /// Nothing counted: the last admission left the window a period after it came.
    fn is_idle(&self, params: &Params, now: Nanos) -> bool {
        self.0.lock().used(params, now) == 0
    }

    /// The exact log of the same admissions, each stamped so that it leaves when its
    /// granule does.
    fn budget(&self, params: &Params, now: Nanos) -> SlidingWindow {
        let g = granule_len(params.window);
        let ring = self.0.lock();
        let stamps = ring
            .counted(params, now)
            .flat_map(|(k, count)| std::iter::repeat_n((k + 1) * g - 1, count as usize));
        SlidingWindow::with_log(params, stamps)
    }

    /// The admissions stay, re-counted in the new granules (as the global log keeps its
    /// stamps across a re-rating).
    fn retune(&mut self, old: &Params, new: &Params, now: Nanos) {
        let (g_old, g_new) = (granule_len(old.window), granule_len(new.window));
        let ring = self.0.get_mut();
        let kept: Vec<(u64, u64)> = ring.counted(old, now).collect();
        *ring = Ring {
            newest: now / g_new,
            counts: [0; GRANULES as usize],
        };
        for (k, count) in kept {
            ring.add(((k + 1) * g_old - 1) / g_new, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Algorithm, Quota};

    const SECOND: Nanos = 1_000_000_000;

    fn params(limit: f64) -> Params {
        let quota = Quota::new(limit, 1.0, None, Algorithm::SlidingWindow, Some(1)).unwrap();
        Params::new(&quota).unwrap()
    }

    #[test]
    fn an_admission_counts_until_its_granule_leaves_the_window() {
        let p = params(1.0);
        let g = granule_len(p.window);
        let cell = WindowCell::fresh(&p, 0);
        let t = g / 2;
        cell.take(&p, t, 1).unwrap();
        // The exact log frees the slot at t + W + 1; the ring at the granule's end + W.
        for now in [t + SECOND, g + SECOND - 1] {
            let wait = cell.take(&p, now, 1).unwrap_err();
            assert_eq!(now + wait, g + SECOND, "at {now}");
        }
        assert!(cell.take(&p, g + SECOND, 1).is_ok());
    }

    #[test]
    fn the_limit_holds_in_every_window_and_the_ring_stays_small() {
        let p = params(5.0);
        let cell = WindowCell::fresh(&p, 0);
        let mut admitted = Vec::new();
        let mut now = 0;
        while now < 5 * SECOND {
            if cell.take(&p, now, 1).is_ok() {
                admitted.push(now);
            }
            now += 7_000_000;
        }
        for (i, &start) in admitted.iter().enumerate() {
            let inside = admitted[i..]
                .iter()
                .take_while(|&&t| t - start <= SECOND)
                .count();
            assert!(inside <= 5, "{inside} in the window from {start}");
        }
        // A slot comes back at most one granule (1/30 of the period) late.
        assert!(admitted.len() >= 5 * 5 - 1, "{admitted:?}");
        assert_eq!(std::mem::size_of::<Mutex<Ring>>(), 136);
    }

    #[test]
    fn a_give_back_frees_the_slot() {
        let p = params(1.0);
        let cell = WindowCell::fresh(&p, 0);
        let receipt = cell.take(&p, 0, 1).unwrap();
        assert_eq!(cell.available(&p, 0), 0);
        cell.give_back(&p, &Clock::default(), receipt);
        assert_eq!(cell.available(&p, 0), 1);
    }

    #[test]
    fn the_exact_log_of_a_key_keeps_its_admissions() {
        let p = params(2.0);
        let cell = WindowCell::fresh(&p, 0);
        cell.take(&p, 0, 2).unwrap();
        let window = cell.budget(&p, 0);
        use crate::memory::budget::Budget;
        assert_eq!(window.available(SECOND), 0);
        assert_eq!(window.available(granule_len(p.window) + SECOND), 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            failure_persistence: None,
            ..Default::default()
        })]

        /// I1 by brute force over random arrivals at nanosecond resolution, with give-backs.
        #[test]
        fn never_more_than_the_limit_in_any_window(
            limit in 1u64..=6,
            arrivals in proptest::collection::vec((0u64..80_000_000, 1u64..=2, proptest::bool::weighted(0.1)), 1..300),
        ) {
            let p = params(limit as f64);
            let cell = WindowCell::fresh(&p, 0);
            let clock = Clock::default();
            let mut admitted: Vec<(Nanos, u64)> = Vec::new();
            let mut now = 0;
            for (advance, count, undo) in arrivals {
                now += advance;
                if count > limit {
                    continue;
                }
                if let Ok(receipt) = cell.take(&p, now, count) {
                    if undo {
                        cell.give_back(&p, &clock, receipt);
                    } else {
                        admitted.push((now, count));
                    }
                }
            }
            for (i, &(start, _)) in admitted.iter().enumerate() {
                let inside: u64 = admitted[i..]
                    .iter()
                    .take_while(|&&(t, _)| t - start <= SECOND)
                    .map(|&(_, c)| c)
                    .sum();
                proptest::prop_assert!(inside <= limit, "{} in the window from {}", inside, start);
            }
        }
    }
}
