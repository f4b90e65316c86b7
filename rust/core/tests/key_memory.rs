//! Memory of per-key budgets (`scope="key"`), counted by the allocator: at most 64 bytes per
//! token-bucket key and 200 per sliding-window key with every overhead, also where the key
//! table has just doubled, and back near the start once idle keys are dropped.

use ratelimit_core::{Algorithm, Clock, ManualClock, Quota, RateLimiter, ReservationPolicy};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::sync::Arc;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed, by anything in this test binary.
fn live() -> isize {
    let stats = ALLOCATOR.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated
}

/// Stripes and keys of each reading: a million keys over 64 stripes, and the most bytes per
/// key, one stripe whose table has just doubled (7/8 of 2^20 buckets full, plus one key).
const READINGS: [(usize, u64); 2] = [(64, 1_000_000), (1, 917_505)];

fn keyed(algorithm: Algorithm, stripes: usize) -> (RateLimiter, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(0.0));
    let quota = Quota::new(10.0, 1.0, None, algorithm, Some(stripes)).unwrap();
    let limiter = RateLimiter::keyed(
        quota,
        Clock::Manual(clock.clone()),
        ReservationPolicy::default(),
        2_000_000,
    )
    .unwrap();
    (limiter, clock)
}

/// Bytes per key with `keys` keys in, and bytes left after they went idle.
fn fill_and_idle(algorithm: Algorithm, stripes: usize, keys: u64) -> (f64, isize) {
    let start = live();
    let (limiter, clock) = keyed(algorithm, stripes);
    for key in 0..keys {
        assert!(limiter.try_acquire_key(key, 1).unwrap().allowed);
    }
    let per_key = (live() - start) as f64 / keys as f64;
    assert_eq!(limiter.keys().unwrap(), keys as usize);
    clock.advance(2_000_000_000);
    assert_eq!(
        limiter.keys().unwrap(),
        0,
        "every key refilled: nothing to keep"
    );
    let left = live() - start;
    drop(limiter);
    (per_key, left)
}

/// One test, so that no other test allocates while it counts.
#[test]
fn keys_cost_bounded_memory_and_idle_keys_give_it_back() {
    for (algorithm, bound) in [
        (Algorithm::TokenBucket, 64.0),
        (Algorithm::SlidingWindow, 200.0),
    ] {
        for (stripes, keys) in READINGS {
            let (per_key, left) = fill_and_idle(algorithm, stripes, keys);
            println!(
                "{algorithm:?}, {keys} keys on {stripes} stripes: {per_key:.1} bytes per key, \
                 {left} bytes left when idle"
            );
            assert!(per_key <= bound, "{per_key} bytes per {algorithm:?} key");
            assert!(
                left < 64 * 1024,
                "{left} bytes kept after every key went idle"
            );
        }
    }

    // Without len(): traffic on a few thousand keys (on every stripe) makes each stripe's
    // sweep due in time.
    let start = live();
    let (limiter, clock) = keyed(Algorithm::TokenBucket, 64);
    for key in 0..100_000 {
        limiter.try_acquire_key(key, 1).unwrap();
    }
    clock.advance(2_000_000_000);
    let full = live() - start;
    for round in 0..200_000u64 {
        limiter
            .try_acquire_key(1_000_000 + round % 4096, 1)
            .unwrap();
    }
    let left = live() - start;
    println!("sweeps on the normal path: {full} bytes with 100,000 keys, {left} after idle");
    assert!(left < full / 4, "{left} bytes of {full} still kept");
}
