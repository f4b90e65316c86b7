//! Deterministic checks of SPEC §3 (I1–I3, I7) against the public API, driven by a
//! `ManualClock` so that nothing sleeps and every number is exact.

use ratelimit_core::{Algorithm, Clock, Decision, ManualClock, Quota, RateLimiter, Refusal};
use std::collections::HashSet;
use std::sync::Arc;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const SHARDS: [usize; 3] = [1, 4, 16];
const ALGORITHMS: [Algorithm; 2] = [Algorithm::TokenBucket, Algorithm::SlidingWindow];

/// A limiter on a frozen manual clock at zero. The sliding window takes no burst.
fn new_limiter(
    algorithm: Algorithm,
    rate: f64,
    period: f64,
    burst: Option<f64>,
    shards: usize,
) -> (RateLimiter, Arc<ManualClock>) {
    let burst = match algorithm {
        Algorithm::TokenBucket => burst,
        Algorithm::SlidingWindow => None,
    };
    let quota = Quota::new(rate, period, burst, algorithm, Some(shards)).unwrap();
    let manual = Arc::new(ManualClock::new(0.0));
    let limiter = RateLimiter::new(quota, Clock::Manual(manual.clone())).unwrap();
    (limiter, manual)
}

/// The SPEC I3 limiter: 100 per second, burst 100.
fn per_second_100(algorithm: Algorithm, shards: usize) -> (RateLimiter, Arc<ManualClock>) {
    new_limiter(algorithm, 100.0, 1.0, Some(100.0), shards)
}

fn acquire(limiter: &RateLimiter, key: &str, count: u64) -> Decision {
    limiter.try_acquire(key, count).unwrap()
}

/// Calls with count 1 on `key` until the first refusal; returns how many were admitted.
fn drain(limiter: &RateLimiter, key: &str) -> u64 {
    let mut admitted = 0;
    while acquire(limiter, key, 1).allowed {
        admitted += 1;
        assert!(admitted <= 1_000_000, "drain never ended");
    }
    admitted
}

fn secs_to_nanos_ceil(seconds: f64) -> u64 {
    (seconds * 1e9).ceil() as u64
}

fn label(algorithm: Algorithm, shards: usize) -> String {
    format!("{} shards={shards}", algorithm.name())
}

// ---------------------------------------------------------------------------------------
// I3: exact numbers
// ---------------------------------------------------------------------------------------

#[test]
fn i3_thousand_calls_with_a_frozen_clock_admit_exactly_the_burst() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            for keys in [1usize, 10, 1000] {
                let (limiter, _manual) = per_second_100(algorithm, shards);
                let admitted = (0..1000)
                    .filter(|i| acquire(&limiter, &format!("key-{}", i % keys), 1).allowed)
                    .count();
                assert_eq!(admitted, 100, "{} keys={keys}", label(algorithm, shards));
                assert_eq!(limiter.peek(), 0.0, "{}", label(algorithm, shards));
            }
        }
    }
}

#[test]
fn i3_two_seconds_of_hammering_admit_300_token_bucket_and_200_sliding_window() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            let (limiter, manual) = per_second_100(algorithm, shards);
            let mut admitted = 0u64;
            let mut admitted_by_1s = 0u64;
            let mut call = 0u64;
            // Calls at t = 0, 1 ms, ..., 2000 ms inclusive, three per step.
            for step in 0..=2000u64 {
                if step > 0 {
                    manual.advance(MS);
                }
                assert_eq!(manual.now(), step * MS);
                for _ in 0..3 {
                    call += 1;
                    if acquire(&limiter, &format!("k{}", call % 7), 1).allowed {
                        admitted += 1;
                    }
                }
                if step == 1000 {
                    admitted_by_1s = admitted;
                }
            }
            let (expected_by_1s, expected) = match algorithm {
                // The full burst at 0, then one token every 10 ms: 100 more by 1 s, 200 by 2 s.
                Algorithm::TokenBucket => (200, 300),
                // 100 at 0 that stay in the closed window [0, 1 s]; the next 100 at 1.001 s.
                Algorithm::SlidingWindow => (100, 200),
            };
            assert_eq!(
                admitted_by_1s,
                expected_by_1s,
                "{} by 1 s",
                label(algorithm, shards)
            );
            assert_eq!(admitted, expected, "{}", label(algorithm, shards));
        }
    }
}

// ---------------------------------------------------------------------------------------
// I2: one key gets the whole burst at any shard count
// ---------------------------------------------------------------------------------------

#[test]
fn i2_a_single_key_gets_the_whole_burst_at_16_shards() {
    for algorithm in ALGORITHMS {
        let (limiter, _manual) = new_limiter(algorithm, 20.0, 1.0, Some(20.0), 16);
        // No shard holds 5 tokens (16 shards share 20), yet 4 requests of 5 are served.
        assert!(limiter.shard_tokens().iter().all(|&t| t < 5.0));
        let admitted = (0..50)
            .filter(|_| acquire(&limiter, "hot", 5).allowed)
            .count();
        assert_eq!(admitted, 4, "{}", algorithm.name());
        assert_eq!(limiter.peek(), 0.0, "{}", algorithm.name());
        let refused = acquire(&limiter, "hot", 5);
        assert_eq!(refused.reason, Some(Refusal::RateLimited));
    }
}

#[test]
fn i2_five_tokens_spread_over_shards_serve_a_request_of_five() {
    for algorithm in ALGORITHMS {
        let (limiter, _manual) = new_limiter(algorithm, 20.0, 1.0, Some(20.0), 16);
        for i in 0..15 {
            assert!(acquire(&limiter, &format!("spread-{i}"), 1).allowed);
        }
        assert_eq!(limiter.peek(), 5.0, "{}", algorithm.name());
        let shards = limiter.shard_tokens();
        let holding = shards.iter().filter(|&&t| t > 0.0).count();
        assert!(
            holding >= 2 && shards.iter().all(|&t| t < 5.0),
            "{}: the five tokens should be spread: {shards:?}",
            algorithm.name()
        );
        let decision = acquire(&limiter, "hot", 5);
        assert!(decision.allowed, "{}: {decision:?}", algorithm.name());
        assert_eq!(limiter.peek(), 0.0);
        assert!(!acquire(&limiter, "hot", 1).allowed);
    }
}

#[test]
fn i2_a_fresh_limiter_admits_count_equal_to_burst_at_once() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS.into_iter().chain([7, 32]) {
            let (limiter, _manual) = per_second_100(algorithm, shards);
            let decision = acquire(&limiter, "all", 100);
            assert!(
                decision.allowed,
                "{}: {decision:?}",
                label(algorithm, shards)
            );
            assert_eq!(decision.remaining, 0.0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// I7: impossible and invalid counts
// ---------------------------------------------------------------------------------------

#[test]
fn i7_count_above_burst_is_refused_at_once_as_exceeds_capacity() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            let (limiter, manual) = per_second_100(algorithm, shards);
            for count in [101, 1000, u64::MAX / 2, u64::MAX] {
                let decision = acquire(&limiter, "k", count);
                assert!(!decision.allowed);
                assert_eq!(
                    decision.reason,
                    Some(Refusal::ExceedsCapacity),
                    "{} count={count}",
                    label(algorithm, shards)
                );
                assert_eq!(decision.reason.unwrap().code(), "exceeds_capacity");
                assert_eq!(decision.retry_after, None);
                assert_eq!(decision.remaining, 100.0);
            }
            // Still never, however long one waits, and nothing was taken.
            manual.advance(3600 * SEC);
            assert_eq!(
                acquire(&limiter, "k", 101).reason,
                Some(Refusal::ExceedsCapacity)
            );
            assert_eq!(limiter.peek(), 100.0);
        }
    }
    // A fractional burst: 2.5 tokens hold two requests of 1, never one of 3.
    let (limiter, _manual) = new_limiter(Algorithm::TokenBucket, 1.0, 1.0, Some(2.5), 4);
    assert_eq!(
        acquire(&limiter, "k", 3).reason,
        Some(Refusal::ExceedsCapacity)
    );
    assert!(acquire(&limiter, "k", 2).allowed);
}

#[test]
fn i7_count_zero_is_an_error_naming_count() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            let (limiter, _manual) = per_second_100(algorithm, shards);
            let err = limiter.try_acquire("k", 0).unwrap_err();
            assert_eq!(err.argument(), "count");
            assert!(err.to_string().contains("count"), "{err}");
            let err = limiter.try_acquire_hashed(42, 0).unwrap_err();
            assert_eq!(err.argument(), "count");
            assert_eq!(limiter.peek(), 100.0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// retry_after is the true earliest admission
// ---------------------------------------------------------------------------------------

/// Checks that a refused `count` on `key` is refused 1 ms (and 1 ns) before `retry_after`
/// and admitted exactly at it, and that `retry_after` is within 1 ms of `expected_ns`.
fn check_retry_after(
    limiter: &RateLimiter,
    manual: &ManualClock,
    key: &str,
    count: u64,
    expected_ns: u64,
    what: &str,
) {
    let refused = acquire(limiter, key, count);
    assert!(!refused.allowed, "{what}: should be refused");
    assert_eq!(refused.reason, Some(Refusal::RateLimited), "{what}");
    let retry_after = refused
        .retry_after
        .expect("a rate-limited refusal says when");
    let wait = secs_to_nanos_ceil(retry_after);
    assert!(
        wait.abs_diff(expected_ns) <= MS,
        "{what}: retry_after {retry_after} s, true earliest admission {} s",
        expected_ns as f64 / 1e9
    );
    assert!(
        wait > MS,
        "{what}: test needs a wait over 1 ms, got {wait} ns"
    );
    let start = manual.now();
    manual.advance(wait - MS);
    let early = acquire(limiter, key, count);
    assert!(!early.allowed, "{what}: admitted 1 ms before retry_after");
    // Later refusals point at the same instant.
    let again = secs_to_nanos_ceil(early.retry_after.unwrap());
    assert!(
        (manual.now() + again).abs_diff(start + wait) <= 1,
        "{what}: retry_after moved from {wait} to {} ns",
        manual.now() - start + again
    );
    // Exact to the nanosecond: still refused 1 ns before.
    manual.advance(MS - 1);
    assert!(
        !acquire(limiter, key, count).allowed,
        "{what}: admitted 1 ns before retry_after"
    );
    manual.advance(1);
    assert_eq!(manual.now(), start + wait);
    let decision = acquire(limiter, key, count);
    assert!(
        decision.allowed,
        "{what}: refused at retry_after: {decision:?}"
    );
}

#[test]
fn retry_after_is_exact_after_a_frozen_drain() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            for count in [1u64, 3] {
                let what = format!("{} count={count} frozen", label(algorithm, shards));
                let (limiter, manual) = per_second_100(algorithm, shards);
                assert_eq!(drain(&limiter, "k"), 100, "{what}");
                let expected = match algorithm {
                    // Every shard is empty and refills in parallel: one token per 10 ms.
                    Algorithm::TokenBucket => count * 10 * MS,
                    // Everything was admitted at 0 and leaves the closed window after 1 s.
                    Algorithm::SlidingWindow => SEC + 1,
                };
                check_retry_after(&limiter, &manual, "k", count, expected, &what);
            }
        }
    }
}

/// The sliding window's true earliest admission of `count` at `now`, from the admission
/// times: the first instant at which at most `limit - count` of them are still in the
/// closed window `[t - window, t]`.
fn window_earliest(admissions: &[u64], window: u64, limit: u64, count: u64, now: u64) -> u64 {
    let live_at = |t: u64| admissions.iter().filter(|&&s| s + window >= t).count() as u64;
    std::iter::once(now)
        .chain(admissions.iter().map(|&s| s + window + 1))
        .filter(|&t| t >= now && live_at(t) + count <= limit)
        .min()
        .unwrap()
}

#[test]
fn retry_after_is_exact_after_a_drain_spread_over_time() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            for count in [1u64, 3] {
                let what = format!("{} count={count} spread", label(algorithm, shards));
                let (limiter, manual) = per_second_100(algorithm, shards);
                // One request of `count` every 7 ms (from rotating keys) until the first refusal.
                let mut admissions = Vec::new();
                let mut call = 0;
                loop {
                    call += 1;
                    let decision = acquire(&limiter, &format!("k{}", call % 5), count);
                    if !decision.allowed {
                        break;
                    }
                    admissions.extend(std::iter::repeat_n(manual.now(), count as usize));
                    manual.advance(7 * MS);
                }
                let now = manual.now();
                let expected = match algorithm {
                    // Fewer than 3 tokens are left, far below any shard's capacity (6.25), so
                    // every shard refills: the whole budget gains one token per 10 ms.
                    Algorithm::TokenBucket => {
                        let missing = count as f64 - limiter.peek();
                        assert!(missing > 0.0);
                        (missing * 10.0 * MS as f64).ceil() as u64
                    }
                    Algorithm::SlidingWindow => {
                        window_earliest(&admissions, SEC, 100, count, now) - now
                    }
                };
                check_retry_after(&limiter, &manual, "k0", count, expected, &what);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A refusal changes nothing
// ---------------------------------------------------------------------------------------

#[test]
fn a_refusal_does_not_change_state() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            let what = label(algorithm, shards);
            let (limiter, manual) = per_second_100(algorithm, shards);
            // Leave an uneven state at a time that is not on a token boundary.
            for i in 0..97 {
                manual.advance(123_457);
                acquire(&limiter, &format!("k{}", i % 13), 1);
            }
            drain(&limiter, "k0");
            manual.advance(3 * MS + 17);
            let peek = limiter.peek();
            let shard_tokens = limiter.shard_tokens();
            let served = limiter.served();
            assert!(peek < 5.0, "{what}: {peek}");
            for (key, count) in [("k0", 5), ("k1", 5), ("other", 50), ("k0", 101)] {
                for _ in 0..3 {
                    let decision = acquire(&limiter, key, count);
                    assert!(!decision.allowed, "{what}: count {count} admitted");
                    assert_eq!(limiter.peek(), peek, "{what}: count {count}");
                    assert_eq!(
                        limiter.shard_tokens(),
                        shard_tokens,
                        "{what}: count {count}"
                    );
                    assert_eq!(limiter.served(), served, "{what}: count {count}");
                    assert_eq!(decision.remaining, peek, "{what}: count {count}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Periods other than a minute
// ---------------------------------------------------------------------------------------

#[test]
fn ten_per_hour_admits_ten_then_waits_360_seconds() {
    let (limiter, manual) = new_limiter(Algorithm::TokenBucket, 10.0, 3600.0, None, 1);
    assert_eq!(limiter.quota().burst, 10.0);
    assert_eq!(drain(&limiter, "k"), 10);
    let refused = acquire(&limiter, "k", 1);
    let retry_after = refused.retry_after.unwrap();
    assert!((retry_after - 360.0).abs() < 1e-3, "{retry_after}");
    manual.advance(359 * SEC);
    assert!(!acquire(&limiter, "k", 1).allowed);
    manual.advance(SEC);
    assert!(acquire(&limiter, "k", 1).allowed);
    assert!(!acquire(&limiter, "k", 1).allowed);

    // The sliding window at 10 per hour: the eleventh waits for the whole hour.
    let (limiter, manual) = limiter_sw(10.0, 3600.0, 4);
    assert_eq!(drain(&limiter, "k"), 10);
    let retry_after = acquire(&limiter, "k", 1).retry_after.unwrap();
    assert!((retry_after - 3600.0).abs() < 1e-3, "{retry_after}");
    manual.advance(3600 * SEC);
    assert!(!acquire(&limiter, "k", 1).allowed);
    manual.advance(1);
    assert!(acquire(&limiter, "k", 1).allowed);
}

fn limiter_sw(rate: f64, period: f64, shards: usize) -> (RateLimiter, Arc<ManualClock>) {
    new_limiter(Algorithm::SlidingWindow, rate, period, None, shards)
}

#[test]
fn half_second_period_runs_at_twice_the_rate() {
    for shards in SHARDS {
        // 10 per 0.5 s = 20 per second, burst 10.
        let (limiter, manual) = new_limiter(Algorithm::TokenBucket, 10.0, 0.5, None, shards);
        assert_eq!(drain(&limiter, "k"), 10);
        let retry_after = acquire(&limiter, "k", 1).retry_after.unwrap();
        assert!((retry_after - 0.05).abs() < 1e-6, "{retry_after}");
        let mut admitted = 0;
        for _ in 0..1000 {
            manual.advance(MS);
            while acquire(&limiter, "k", 1).allowed {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 20, "shards={shards}");

        let (limiter, manual) = limiter_sw(10.0, 0.5, shards);
        let mut admitted = 0;
        for _ in 0..=1000 {
            while acquire(&limiter, "k", 1).allowed {
                admitted += 1;
            }
            manual.advance(MS);
        }
        // Windows at 0, 501 ms, and 1002 ms is past the run.
        assert_eq!(admitted, 20, "shards={shards}");
    }
}

#[test]
fn a_day_long_period_works() {
    for shards in SHARDS {
        let (limiter, manual) = new_limiter(Algorithm::TokenBucket, 1000.0, 86400.0, None, shards);
        assert_eq!(drain(&limiter, "k"), 1000, "shards={shards}");
        let retry_after = acquire(&limiter, "k", 1).retry_after.unwrap();
        assert!((retry_after - 86.4).abs() < 1e-3, "{retry_after}");
        manual.advance(86400 * SEC);
        assert_eq!(limiter.peek(), 1000.0);

        let (limiter, manual) = limiter_sw(1000.0, 86400.0, shards);
        assert_eq!(drain(&limiter, "k"), 1000, "shards={shards}");
        manual.advance(86400 * SEC);
        assert!(!acquire(&limiter, "k", 1).allowed);
        manual.advance(1);
        assert_eq!(drain(&limiter, "k"), 1000, "shards={shards}");
    }
}

/// Found by this suite: the token bucket computes its capacity as `floor(burst * unit)`
/// in f64. Once `burst * unit` passes 2^53 the product can round *down*, so the budget
/// holds a few ticks less than `burst` tokens: a request of exactly `burst` is refused as
/// `exceeds_capacity` (can never succeed) and a single key drains only `burst - 1`.
/// 7 per day at 4 shards: unit = ceil(4 * 86400e9 * 32 / 7) = 1579885714285715 ticks,
/// 7 * unit = 11059200000000005 > 2^53, which f64 rounds to ...004.
#[test]
#[ignore = "bug: token-bucket capacity floor(burst * unit) in f64 loses ticks above 2^53 \
            (rate=7, period=86400, shards=4: count=7 is refused as exceeds_capacity)"]
fn count_equal_to_burst_is_admitted_with_a_day_long_period() {
    let (limiter, _manual) = new_limiter(Algorithm::TokenBucket, 7.0, 86400.0, None, 4);
    let decision = acquire(&limiter, "k", 7);
    assert!(decision.allowed, "{decision:?}");
    let (limiter, _manual) = new_limiter(Algorithm::TokenBucket, 7.0, 86400.0, None, 4);
    assert_eq!(drain(&limiter, "k"), 7);
}

// ---------------------------------------------------------------------------------------
// Changing the quota, resetting
// ---------------------------------------------------------------------------------------

fn quota(algorithm: Algorithm, rate: f64, burst: Option<f64>, shards: usize) -> Quota {
    Quota::new(rate, 1.0, burst, algorithm, Some(shards)).unwrap()
}

#[test]
fn set_quota_carries_the_available_tokens_over() {
    let tb = Algorithm::TokenBucket;
    let (limiter, manual) = per_second_100(tb, 4);
    for _ in 0..40 {
        assert!(acquire(&limiter, "k", 1).allowed);
    }
    assert_eq!(limiter.peek(), 60.0);
    // A larger quota on more shards: the 60 tokens come along, no more.
    limiter
        .set_quota(quota(tb, 200.0, Some(200.0), 16))
        .unwrap();
    assert_eq!(limiter.quota().shards, 16);
    assert_eq!(limiter.shard_tokens().len(), 16);
    assert!((limiter.peek() - 60.0).abs() < 1e-9, "{}", limiter.peek());
    assert_eq!(drain(&limiter, "k"), 60);
    // Then it refills at the new rate: 200 per second, up to the new burst.
    manual.advance(SEC / 2);
    assert!((limiter.peek() - 100.0).abs() < 1e-9, "{}", limiter.peek());
    manual.advance(SEC);
    assert_eq!(limiter.peek(), 200.0);
    // A smaller burst caps what carries over.
    limiter.set_quota(quota(tb, 100.0, Some(50.0), 1)).unwrap();
    assert_eq!(limiter.peek(), 50.0);
    assert_eq!(drain(&limiter, "k"), 50);

    // The sliding window carries its log: 40 admissions still count against a limit of 50.
    let sw = Algorithm::SlidingWindow;
    let (limiter, manual) = per_second_100(sw, 4);
    for _ in 0..40 {
        assert!(acquire(&limiter, "k", 1).allowed);
    }
    limiter.set_quota(quota(sw, 50.0, None, 16)).unwrap();
    assert_eq!(limiter.peek(), 10.0);
    assert_eq!(drain(&limiter, "k"), 10);
    manual.advance(SEC);
    assert!(!acquire(&limiter, "k", 1).allowed);
    manual.advance(1);
    assert_eq!(drain(&limiter, "k"), 50);
}

#[test]
fn reset_refills_the_budget_and_clears_the_counters() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            let (limiter, _manual) = per_second_100(algorithm, shards);
            assert_eq!(drain(&limiter, "k"), 100);
            assert_eq!(limiter.served().iter().sum::<u64>(), 100);
            limiter.reset();
            assert_eq!(limiter.peek(), 100.0, "{}", label(algorithm, shards));
            assert_eq!(limiter.served().iter().sum::<u64>(), 0);
            assert_eq!(limiter.quota().shards, shards);
            assert_eq!(drain(&limiter, "k"), 100, "{}", label(algorithm, shards));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------

#[test]
fn eight_threads_with_a_frozen_clock_admit_exactly_the_burst() {
    const THREADS: usize = 8;
    const CALLS: usize = 1000;
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            for same_key in [true, false] {
                let what = format!("{} same_key={same_key}", label(algorithm, shards));
                let (limiter, _manual) = per_second_100(algorithm, shards);
                let barrier = std::sync::Barrier::new(THREADS);
                let per_thread: Vec<(u64, HashSet<usize>)> = std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..THREADS)
                        .map(|thread| {
                            let (limiter, barrier) = (&limiter, &barrier);
                            scope.spawn(move || {
                                let key = if same_key {
                                    "shared".to_owned()
                                } else {
                                    format!("thread-{thread}")
                                };
                                let hash = limiter.hash_key(&key).unwrap();
                                barrier.wait();
                                let mut admitted = 0;
                                let mut shards_used = HashSet::new();
                                for _ in 0..CALLS {
                                    let decision = limiter.try_acquire_hashed(hash, 1).unwrap();
                                    if decision.allowed {
                                        admitted += 1;
                                        shards_used.insert(decision.shard);
                                    }
                                }
                                (admitted, shards_used)
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                let total: u64 = per_thread.iter().map(|(admitted, _)| admitted).sum();
                assert_eq!(total, 100, "{what}");
                assert_eq!(limiter.peek(), 0.0, "{what}");
                assert_eq!(limiter.served().iter().sum::<u64>(), 100, "{what}");
                assert!(per_thread
                    .iter()
                    .flat_map(|(_, used)| used)
                    .all(|&s| s < shards));
            }
        }
    }
}
