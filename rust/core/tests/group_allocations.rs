//! `try_acquire_all` (a `LimiterGroup`'s decision) allocates nothing per call for in-memory
//! limiters: its takes wait on the stack for the parts after them. One test in this binary,
//! so that no other test allocates while it counts.

use std::alloc::System;
use std::sync::Arc;

use ratelimit_core::{Algorithm, Clock, Key, ManualClock, Quota, RateLimiter};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn a_group_decision_allocates_nothing() {
    let manual = Arc::new(ManualClock::new(0.0));
    let limiter = |algorithm, rate, period, burst| {
        let quota = Quota::new(rate, period, burst, algorithm, Some(1)).unwrap();
        RateLimiter::new(quota, Clock::Manual(manual.clone())).unwrap()
    };
    // The shim's pair: a minute bucket and an hourly window, with room for every call.
    let minute = limiter(Algorithm::TokenBucket, 600_000.0, 60.0, Some(10_000.0));
    let hour = limiter(Algorithm::SlidingWindow, 1_000_000.0, 3600.0, None);
    let both = |count| {
        RateLimiter::try_acquire_all(
            [
                (&minute, Key::hashed(1), count),
                (&hour, Key::hashed(1), count),
            ],
            1.0,
        )
    };
    // The window's log grows to its working size first.
    for _ in 0..2000 {
        assert!(both(1).unwrap().allowed);
    }
    let region = Region::new(ALLOCATOR);
    for _ in 0..1000 {
        assert!(both(1).unwrap().allowed); // admitted by both
    }
    for _ in 0..1000 {
        assert!(!both(20_000).unwrap().allowed); // refused
    }
    let stats = region.change();
    // The log's amortised growth (at most a doubling) is all that may allocate.
    assert!(stats.allocations <= 1, "{stats:?}");
}
