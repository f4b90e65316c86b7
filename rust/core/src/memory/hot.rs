//! Hot keys: the few keys of an adaptive token bucket whose demand exceeds a shard's share.
//!
//! A random sample of decisions (one in [`SAMPLE_EVERY`], drawn per thread) feeds a
//! space-saving sketch of [`ENTRIES`] counters: the keys asked most, each counted within the
//! count it inherited when it took its counter (its error). At each look (`rebalance.rs`), the
//! keys whose sampled demand, less that error, is more than one shard's share of all of it (of
//! the shards keys spread over) are published, at most [`HOT`] of them, and the counts halve
//! so that the sketch follows demand as it moves.
//!
//! The policy: a published key is *spread*. Instead of its two candidates, each of its
//! decisions draws a fresh pair among every shard keys spread over (and the fuller of the
//! pair serves, as for any key), so its demand, and the races for its shards, fall on all of
//! them; the shares then follow. Keys spread over fewer than three shards are not spread:
//! there is nowhere else to go. Callers name a sampled key (`RateLimiter::name_key`), so that
//! the report shows names rather than hashes.

use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters in the sketch.
pub(crate) const ENTRIES: usize = 16;
/// Keys spread at once.
pub(crate) const HOT: usize = 4;
/// One decision in this many, drawn at random per thread, is sampled.
pub(crate) const SAMPLE_EVERY: u64 = 16;

thread_local! {
    /// This thread's draws (xorshift64; any nonzero seed).
    static DRAWS: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
}

/// This thread's next draw: a sample that no periodic workload can alias with.
#[inline(always)]
pub(crate) fn draw() -> u64 {
    DRAWS.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

/// A hot key's hash for this decision: a different pair of candidates each draw.
#[inline(always)]
pub(crate) fn spread(hash: u64, draw: u64) -> u64 {
    hash ^ draw
}

/// A key in the report: its name, if a caller gave it, and its share of sampled demand.
#[derive(Debug, Clone, PartialEq)]
pub struct HotKey {
    pub hash: u64,
    pub name: Option<String>,
    pub share: f64,
}

#[derive(Debug, Default)]
struct Entry {
    hash: u64,
    count: u64,
    /// What the count inherited with the counter: the count less this is the key's own.
    error: u64,
    name: Option<String>,
}

#[derive(Debug, Default)]
struct Sketch {
    entries: Vec<Entry>,
    total: u64,
}

#[derive(Debug, Default)]
pub(crate) struct HotKeys {
    sketch: Mutex<Sketch>,
    /// The published hashes (0: none), read by every decision of an adaptive limiter.
    hot: [AtomicU64; HOT],
}

impl HotKeys {
    /// Whether `hash` is published as hot.
    #[inline(always)]
    pub(crate) fn is_hot(&self, hash: u64) -> bool {
        hash != 0 && self.hot.iter().any(|h| h.load(Ordering::Relaxed) == hash)
    }

    /// Counts a sampled decision of `units` for `hash` (skipped if another thread is
    /// counting: it is a sample).
    pub(crate) fn observe(&self, hash: u64, units: u64) {
        let Some(mut sketch) = self.sketch.try_lock() else {
            return;
        };
        sketch.total = sketch.total.saturating_add(units);
        if let Some(entry) = sketch.entries.iter_mut().find(|e| e.hash == hash) {
            entry.count = entry.count.saturating_add(units);
            return;
        }
        if sketch.entries.len() < ENTRIES {
            sketch.entries.push(Entry {
                hash,
                count: units,
                error: 0,
                name: None,
            });
            return;
        }
        // Space-saving: the new key takes the smallest counter, and its count as its error.
        let least = sketch
            .entries
            .iter_mut()
            .min_by_key(|e| e.count)
            .expect("full");
        *least = Entry {
            hash,
            count: least.count.saturating_add(units),
            error: least.count,
            name: None,
        };
    }

    /// Names `hash`, if the sketch counts it and has no name for it yet.
    pub(crate) fn name(&self, hash: u64, name: &str) {
        let mut sketch = self.sketch.lock();
        if let Some(entry) = sketch.entries.iter_mut().find(|e| e.hash == hash) {
            entry.name.get_or_insert_with(|| name.to_owned());
        }
    }

    /// Publishes the keys whose sampled demand exceeds one of `active` shards' share (none
    /// when keys spread over fewer than three shards), and halves the counts.
    pub(crate) fn publish(&self, active: usize) {
        let mut sketch = self.sketch.lock();
        let mut hot: Vec<&Entry> = if active >= 3 {
            let share = sketch.total / active as u64;
            let own = |e: &&Entry| e.count - e.error > share;
            sketch.entries.iter().filter(own).collect()
        } else {
            Vec::new()
        };
        hot.sort_unstable_by_key(|e| std::cmp::Reverse(e.count));
        for (i, slot) in self.hot.iter().enumerate() {
            slot.store(hot.get(i).map_or(0, |e| e.hash), Ordering::Relaxed);
        }
        sketch.total /= 2;
        for entry in sketch.entries.iter_mut() {
            entry.count /= 2;
            entry.error /= 2;
        }
    }

    /// The published keys, hottest first.
    pub(crate) fn report(&self) -> Vec<HotKey> {
        let sketch = self.sketch.lock();
        let total = sketch.total.max(1) as f64;
        let mut keys: Vec<HotKey> = sketch
            .entries
            .iter()
            .filter(|e| self.is_hot(e.hash))
            .map(|e| HotKey {
                hash: e.hash,
                name: e.name.clone(),
                share: e.count as f64 / total,
            })
            .collect();
        keys.sort_unstable_by(|a, b| b.share.total_cmp(&a.share));
        keys
    }

    /// Forgets every key (a reset).
    pub(crate) fn clear(&self) {
        *self.sketch.lock() = Sketch::default();
        for slot in self.hot.iter() {
            slot.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heaviest_keys_are_published_and_named() {
        let hot = HotKeys::default();
        // Key 1 asks half of everything; 200 others share the rest.
        for i in 0..10_000u64 {
            hot.observe(if i % 2 == 0 { 1 } else { 2 + i % 200 }, 1);
        }
        hot.name(1, "big");
        hot.publish(16);
        assert!(hot.is_hot(1));
        assert!(!hot.is_hot(3));
        let report = hot.report();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].name.as_deref(), Some("big"));
        assert!((report[0].share - 0.5).abs() < 0.05, "{report:?}");
        // On two shards there is nowhere to spread it.
        hot.publish(2);
        assert!(!hot.is_hot(1));
        hot.clear();
        assert!(hot.report().is_empty());
    }

    #[test]
    fn a_spread_key_draws_a_new_pair_each_turn() {
        let pairs: std::collections::HashSet<u64> =
            (0..64).map(|_| spread(42, draw()) % 16).collect();
        assert!(pairs.len() > 8);
    }
}
