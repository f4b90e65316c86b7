//! Deterministic checks of SPEC §3 (I1–I3, I7) against the public API, driven by a
//! `ManualClock` so that nothing sleeps and every number is exact.

use ratelimit_core::{Algorithm, Clock, Decision, Key, ManualClock, Quota, RateLimiter, Refusal};
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
                assert_eq!(
                    limiter.peek(0).unwrap(),
                    0.0,
                    "{}",
                    label(algorithm, shards)
                );
            }
        }
    }
}

/// How many calls each 1 ms step of a hammering run makes.
#[derive(Clone, Copy, Debug)]
enum PerStep {
    /// A fixed number of calls (all with count 1, from rotating keys).
    Calls(usize),
    /// Calls until the first refusal, so that every step offers more than is available.
    UntilRefused,
}

/// Hammers a 100/s, burst-100 limiter with calls at t = 0, 1 ms, ..., 2000 ms inclusive.
/// Returns (admitted by t = 1000 ms inclusive, admitted in all).
fn hammer(algorithm: Algorithm, shards: usize, per_step: PerStep) -> (u64, u64) {
    let (limiter, manual) = per_second_100(algorithm, shards);
    let mut admitted = 0u64;
    let mut admitted_by_1s = 0u64;
    let mut call = 0u64;
    for step in 0..=2000u64 {
        if step > 0 {
            manual.advance(MS);
        }
        assert_eq!(manual.now(), step * MS);
        let mut calls_this_step = 0;
        loop {
            call += 1;
            calls_this_step += 1;
            let allowed = acquire(&limiter, &format!("k{}", call % 7), 1).allowed;
            admitted += u64::from(allowed);
            let done = match per_step {
                PerStep::Calls(n) => calls_this_step == n,
                PerStep::UntilRefused => !allowed,
            };
            if done {
                break;
            }
        }
        if step == 1000 {
            admitted_by_1s = admitted;
        }
    }
    (admitted_by_1s, admitted)
}

/// SPEC I3: the full burst at 0, then one token every 10 ms (100 more by 1 s, 200 by 2 s)
/// for the token bucket; for the sliding window 100 at 0 that stay in the closed window
/// [0, 1 s], then the next 100 at 1.001 s.
fn hammer_expected(algorithm: Algorithm) -> (u64, u64) {
    match algorithm {
        Algorithm::TokenBucket => (200, 300),
        Algorithm::SlidingWindow => (100, 200),
    }
}

#[test]
fn i3_two_seconds_of_hammering_admit_300_token_bucket_and_200_sliding_window() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            for per_step in [PerStep::UntilRefused, PerStep::Calls(3), PerStep::Calls(1)] {
                if algorithm == Algorithm::TokenBucket
                    && shards > 1
                    && matches!(per_step, PerStep::Calls(_))
                {
                    // See i3_token_bucket_hammering_with_a_few_calls_per_step_admits_300.
                    continue;
                }
                assert_eq!(
                    hammer(algorithm, shards, per_step),
                    hammer_expected(algorithm),
                    "{} {per_step:?}",
                    label(algorithm, shards)
                );
            }
        }
    }
}

/// Found by this suite. Each token-bucket shard holds `burst / shards` and refills only
/// itself, at `rate / shards`, capped at its own share. While the burst is being spent a
/// few calls at a time, the shards no call has touched yet sit full, and their share of the
/// refill is thrown away although the budget as a whole is below `burst`. A single bucket
/// (shards=1) admits exactly 300 in 2 s; with 3 calls per 1 ms step 4 shards admit 299 and
/// 16 shards 298-299 (32 shards: 298); with 1 call per step 16 shards admit 296-297 and 32
/// shards 295. Draining everything at t = 0 hides it (every shard is then below its cap).
#[test]
fn i3_token_bucket_hammering_with_a_few_calls_per_step_admits_300() {
    for shards in [4, 16] {
        for per_step in [PerStep::Calls(3), PerStep::Calls(1)] {
            assert_eq!(
                hammer(Algorithm::TokenBucket, shards, per_step),
                (200, 300),
                "shards={shards} {per_step:?}"
            );
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
        assert!(limiter
            .shard_views()
            .unwrap()
            .shard_tokens()
            .iter()
            .all(|&t| t < 5.0));
        let admitted = (0..50)
            .filter(|_| acquire(&limiter, "hot", 5).allowed)
            .count();
        assert_eq!(admitted, 4, "{}", algorithm.name());
        assert_eq!(limiter.peek(0).unwrap(), 0.0, "{}", algorithm.name());
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
        assert_eq!(limiter.peek(0).unwrap(), 5.0, "{}", algorithm.name());
        let shards = limiter.shard_views().unwrap().shard_tokens();
        let holding = shards.iter().filter(|&&t| t > 0.0).count();
        assert!(
            holding >= 2 && shards.iter().all(|&t| t < 5.0),
            "{}: the five tokens should be spread: {shards:?}",
            algorithm.name()
        );
        let decision = acquire(&limiter, "hot", 5);
        assert!(decision.allowed, "{}: {decision:?}", algorithm.name());
        assert_eq!(limiter.peek(0).unwrap(), 0.0);
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
            assert_eq!(decision.remaining().unwrap(), 0.0);
        }
    }
}

/// Found by this suite (see also proptests.rs, `i2_token_bucket_admits_99_percent_...`).
/// With a burst smaller than one token per shard, a request is always gathered from
/// several shards, and the credit a gather leaves behind sits in a few shards that fill up
/// to their share (`burst / shards`) and throw their refill away while the budget is short
/// of one token. One key calling every 9 ms at 100/s, burst 2, for 60 s: one shard admits
/// 6001 (the whole budget), 16 shards admit 5556 (92.6 %); every 3 ms, 8 shards admit 5716
/// (95.2 %). Same for any key hash.
#[test]
fn i2_a_hot_key_with_a_small_burst_gets_the_whole_rate() {
    for (shards, step) in [(1, 9 * MS), (8, 3 * MS), (16, 9 * MS), (16, 3 * MS)] {
        let (limiter, manual) = new_limiter(Algorithm::TokenBucket, 100.0, 1.0, Some(2.0), shards);
        let steps = 60 * SEC / step;
        let mut admitted = 0;
        for step_index in 0..=steps {
            if step_index > 0 {
                manual.advance(step);
            }
            admitted += u64::from(limiter.try_acquire_key(7, 1).unwrap().allowed);
        }
        let budget = 2.0 + 100.0 * manual.now() as f64 / SEC as f64;
        assert!(
            admitted as f64 >= 0.99 * budget,
            "shards={shards} step={step} ns: admitted {admitted} of {budget}"
        );
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
                assert_eq!(decision.remaining().unwrap(), 100.0);
            }
            // Still never, however long one waits, and nothing was taken.
            manual.advance(3600 * SEC);
            assert_eq!(
                acquire(&limiter, "k", 101).reason,
                Some(Refusal::ExceedsCapacity)
            );
            assert_eq!(limiter.peek(0).unwrap(), 100.0);
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
            let err = limiter.try_acquire_key(42, 0).unwrap_err();
            assert_eq!(err.argument(), "count");
            assert_eq!(limiter.peek(0).unwrap(), 100.0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// retry_after is the true earliest admission
// ---------------------------------------------------------------------------------------

/// Checks that a refused `count` on `key` has a `retry_after` within 1 ms of
/// `expected_ns`, is refused 1 ms and 1 ns before it, and is admitted exactly at it
/// (rounded up to the nanosecond).
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
    // `retry_after` is whole nanoseconds in f64 seconds: rounding recovers them exactly,
    // while rounding up may land one nanosecond late (1.000000001 * 1e9 > 1000000001).
    let wait = (retry_after * 1e9).round() as u64;
    let wait_up = secs_to_nanos_ceil(retry_after);
    assert!(wait_up - wait <= 1, "{what}: {retry_after}");
    assert!(
        wait.abs_diff(expected_ns) <= MS,
        "{what}: retry_after {retry_after} s, true earliest admission {} s",
        expected_ns as f64 / 1e9
    );
    assert!(wait > 0, "{what}: a refusal with no wait");
    let start = manual.now();
    // 1 ms before (or at once, when the wait is shorter than that).
    let early_by = wait.min(MS);
    manual.advance(wait - early_by);
    let early = acquire(limiter, key, count);
    assert!(!early.allowed, "{what}: admitted 1 ms before retry_after");
    // A later refusal points at the same instant.
    let again = (early.retry_after.unwrap() * 1e9).round() as u64;
    assert_eq!(
        manual.now() + again,
        start + wait,
        "{what}: the second retry_after points elsewhere"
    );
    // Exact to the nanosecond: still refused 1 ns before.
    manual.advance(early_by - 1);
    assert!(
        !acquire(limiter, key, count).allowed,
        "{what}: admitted 1 ns before retry_after"
    );
    manual.advance(wait_up - wait + 1);
    assert_eq!(manual.now(), start + wait_up);
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

/// The token bucket's earliest admission of `count`, in nanoseconds from now, from the
/// shards' tokens: each shard holds at most `burst / n` and refills `rate / n` per period,
/// so the smallest `w` with `sum(min(cap, tokens_i + w * refill)) >= count` (bisection).
fn bucket_earliest(shard_tokens: &[f64], rate: f64, burst: f64, period: u64, count: u64) -> u64 {
    let n = shard_tokens.len() as f64;
    let (cap, per_ns) = (burst / n, rate / n / period as f64);
    let gathered = |w: u64| -> f64 {
        shard_tokens
            .iter()
            .map(|&t| cap.min(t + w as f64 * per_ns))
            .sum()
    };
    let (mut lo, mut hi) = (0u64, 1u64 << 62);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if gathered(mid) >= count as f64 - 1e-9 {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
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
                    Algorithm::TokenBucket => bucket_earliest(
                        &limiter.shard_views().unwrap().shard_tokens(),
                        100.0,
                        100.0,
                        SEC,
                        count,
                    ),
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
            let peek = limiter.peek(0).unwrap();
            let shard_tokens = limiter.shard_views().unwrap().shard_tokens();
            let served = limiter.shard_views().unwrap().served();
            assert!(peek < 5.0, "{what}: {peek}");
            for (key, count) in [("k0", 5), ("k1", 5), ("other", 50), ("k0", 101)] {
                for _ in 0..3 {
                    let decision = acquire(&limiter, key, count);
                    assert!(!decision.allowed, "{what}: count {count} admitted");
                    assert_eq!(limiter.peek(0).unwrap(), peek, "{what}: count {count}");
                    assert_eq!(
                        limiter.shard_views().unwrap().shard_tokens(),
                        shard_tokens,
                        "{what}: count {count}"
                    );
                    assert_eq!(
                        limiter.shard_views().unwrap().served(),
                        served,
                        "{what}: count {count}"
                    );
                    assert_eq!(decision.remaining().unwrap(), peek, "{what}: count {count}");
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
        assert_eq!(limiter.peek(0).unwrap(), 1000.0);

        let (limiter, manual) = limiter_sw(1000.0, 86400.0, shards);
        assert_eq!(drain(&limiter, "k"), 1000, "shards={shards}");
        manual.advance(86400 * SEC);
        assert!(!acquire(&limiter, "k", 1).allowed);
        manual.advance(1);
        assert_eq!(drain(&limiter, "k"), 1000, "shards={shards}");
    }
}

/// Found by this suite: the token bucket computes its capacity as `floor(burst * unit)`
/// in f64 (`Params::new`). Once `burst * unit` passes 2^53 ticks the product can round
/// *down*, so the budget holds a few ticks less than `burst` tokens: a request of exactly
/// `burst` is refused as `exceeds_capacity` (can never succeed) and a single key drains
/// only `burst - 1`. 7 per day at 4 shards: unit = ceil(4 * 86400e9 * 32 / 7) =
/// 1579885714285715 ticks, and 7 * unit = 11059200000000005 > 2^53 rounds to ...004.
#[test]
fn count_equal_to_burst_is_admitted_with_a_day_long_period() {
    let (limiter, _manual) = new_limiter(Algorithm::TokenBucket, 7.0, 86400.0, None, 4);
    let decision = acquire(&limiter, "k", 7);
    assert!(decision.allowed, "{decision:?}");
    let (limiter, _manual) = new_limiter(Algorithm::TokenBucket, 7.0, 86400.0, None, 4);
    assert_eq!(drain(&limiter, "k"), 7);
}

/// Found by this suite: `Engine::build` fills each token-bucket shard with
/// `missing = capacity - (capacity as f64 * fill) as u64`. A shard's capacity is
/// `burst * period * 32e9 / rate` ticks; past 2^53 (a burst that takes more than ~3.3 days
/// to refill) `capacity as f64` can round *up*, and the subtraction underflows: a debug
/// build panics in `RateLimiter::new` ("attempt to subtract with overflow",
/// limiter.rs `Engine::build`), a release build wraps, the shard's TAT lands near 2^64 and
/// the shard stays empty for ~18 years. 14 per day, burst 177, 6 shards: 4 of the 6
/// shards are dead, the limiter holds 59 tokens instead of 177 and refills at a third of
/// the rate, still so 400 days later. `reset()` and `set_quota` rebuild the same way.
#[test]
fn a_bucket_that_takes_days_to_refill_starts_full_and_refills() {
    let (limiter, manual) = new_limiter(Algorithm::TokenBucket, 14.0, 86400.0, Some(177.0), 6);
    assert_eq!(
        limiter.peek(0).unwrap().round(),
        177.0,
        "{:?}",
        limiter.shard_views().unwrap().shard_tokens()
    );
    assert!(limiter
        .shard_views()
        .unwrap()
        .shard_tokens()
        .iter()
        .all(|&t| t > 29.0));
    assert!(acquire(&limiter, "k", 170).allowed);
    manual.advance(400 * 86400 * SEC);
    assert_eq!(
        limiter.peek(0).unwrap().round(),
        177.0,
        "{:?}",
        limiter.shard_views().unwrap().shard_tokens()
    );
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
    assert_eq!(limiter.peek(0).unwrap(), 60.0);
    // A larger quota: the 60 tokens come along, no more.
    limiter.set_quota(quota(tb, 200.0, Some(200.0), 4)).unwrap();
    assert_eq!(limiter.quota().rate, 200.0);
    assert!(
        (limiter.peek(0).unwrap() - 60.0).abs() < 1e-9,
        "{}",
        limiter.peek(0).unwrap()
    );
    assert_eq!(drain(&limiter, "k"), 60);
    // Then it refills at the new rate: 200 per second, up to the new burst.
    manual.advance(SEC / 2);
    assert!(
        (limiter.peek(0).unwrap() - 100.0).abs() < 1e-9,
        "{}",
        limiter.peek(0).unwrap()
    );
    manual.advance(SEC);
    assert_eq!(limiter.peek(0).unwrap(), 200.0);
    // A smaller burst caps what carries over.
    limiter.set_quota(quota(tb, 100.0, Some(50.0), 4)).unwrap();
    assert_eq!(limiter.peek(0).unwrap(), 50.0);
    assert_eq!(drain(&limiter, "k"), 50);

    // The sliding window carries its log: 40 admissions still count against a limit of 50.
    let sw = Algorithm::SlidingWindow;
    let (limiter, manual) = per_second_100(sw, 4);
    for _ in 0..40 {
        assert!(acquire(&limiter, "k", 1).allowed);
    }
    limiter.set_quota(quota(sw, 50.0, None, 4)).unwrap();
    assert_eq!(limiter.peek(0).unwrap(), 10.0);
    assert_eq!(drain(&limiter, "k"), 10);
    manual.advance(SEC);
    assert!(!acquire(&limiter, "k", 1).allowed);
    manual.advance(1);
    assert_eq!(drain(&limiter, "k"), 50);
}

#[test]
fn set_quota_keeps_the_algorithm_and_the_shard_count() {
    let (limiter, _manual) = per_second_100(Algorithm::TokenBucket, 4);
    let err = limiter
        .set_quota(quota(Algorithm::TokenBucket, 10.0, None, 16))
        .unwrap_err();
    assert_eq!(err.argument(), "shards");
    let err = limiter
        .set_quota(quota(Algorithm::SlidingWindow, 10.0, None, 4))
        .unwrap_err();
    assert_eq!(err.argument(), "algorithm");
    assert_eq!(limiter.quota().rate, 100.0);
}

#[test]
fn reset_refills_the_budget_and_clears_the_counters() {
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            let (limiter, _manual) = per_second_100(algorithm, shards);
            assert_eq!(drain(&limiter, "k"), 100);
            assert_eq!(
                limiter.shard_views().unwrap().served().iter().sum::<u64>(),
                100
            );
            limiter.reset().unwrap();
            assert_eq!(
                limiter.peek(0).unwrap(),
                100.0,
                "{}",
                label(algorithm, shards)
            );
            assert_eq!(
                limiter.shard_views().unwrap().served().iter().sum::<u64>(),
                0
            );
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
                                let hash = limiter.key(&key).unwrap();
                                barrier.wait();
                                let mut admitted = 0;
                                let mut shards_used = HashSet::new();
                                for _ in 0..CALLS {
                                    let decision = limiter.try_acquire_key(hash, 1).unwrap();
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
                assert_eq!(limiter.peek(0).unwrap(), 0.0, "{what}");
                assert_eq!(
                    limiter.shard_views().unwrap().served().iter().sum::<u64>(),
                    100,
                    "{what}"
                );
                assert!(per_thread
                    .iter()
                    .flat_map(|(_, used)| used)
                    .all(|&s| s < shards));
            }
        }
    }
}

#[test]
fn re_rating_while_threads_take_never_admits_more_than_the_budget() {
    // Frozen clock, so the budget is exactly 100 tokens. Decisions racing with a re-rating
    // are decided again; a stray take may stay charged (never the other way round).
    for algorithm in ALGORITHMS {
        for shards in SHARDS {
            let (limiter, _manual) = per_second_100(algorithm, shards);
            let quota = limiter.quota();
            let admitted: u64 = std::thread::scope(|scope| {
                let takers: Vec<_> = (0..4)
                    .map(|t| {
                        let limiter = &limiter;
                        scope.spawn(move || {
                            let key = format!("thread-{t}");
                            (0..2_000)
                                .filter(|_| acquire(limiter, &key, 1).allowed)
                                .count() as u64
                        })
                    })
                    .collect();
                for _ in 0..200 {
                    limiter.set_quota(quota).unwrap();
                }
                takers.into_iter().map(|h| h.join().unwrap()).sum()
            });
            let what = label(algorithm, shards);
            assert!(admitted <= 100, "{what}: admitted {admitted}");
            assert!(admitted > 0, "{what}");
            assert!(
                limiter.peek(0).unwrap() <= (100 - admitted) as f64,
                "{what}"
            );
        }
    }
}

#[test]
fn try_acquire_all_takes_from_every_limiter_or_from_none() {
    // A bucket of 10 and an exact window of 5 per second, as the old limiter's minute
    // bucket and hourly window: together they admit 5, and a refusal by the window leaves
    // the bucket untouched.
    for shards in SHARDS {
        let (bucket, manual) = new_limiter(Algorithm::TokenBucket, 10.0, 1.0, Some(10.0), shards);
        let window = RateLimiter::new(
            quota(Algorithm::SlidingWindow, 5.0, None, shards),
            Clock::Manual(manual.clone()),
        )
        .unwrap();
        let both = |count, max_wait| {
            RateLimiter::try_acquire_all(
                [
                    (&bucket, Key::hashed(1), count),
                    (&window, Key::hashed(1), count),
                ],
                max_wait,
            )
            .unwrap()
        };
        for _ in 0..5 {
            assert!(both(1, f64::INFINITY).allowed);
        }
        let refusal = both(1, f64::INFINITY);
        assert_eq!(refusal.reason, Some(Refusal::RateLimited));
        assert_eq!(
            bucket.peek(0).unwrap(),
            5.0,
            "shards={shards}: the bucket was given back its token"
        );
        assert_eq!(window.peek(0).unwrap(), 0.0);
        assert_eq!(
            bucket.shard_views().unwrap().served().iter().sum::<u64>(),
            5
        );
        // A wait longer than max_wait is named as such; nothing is taken either way.
        let refusal = both(1, 0.5);
        assert_eq!(refusal.reason, Some(Refusal::MaxWaitExceeded));
        assert!(refusal.retry_after.unwrap() > 0.5);
        assert_eq!(bucket.peek(0).unwrap(), 5.0);
        // A refusal by the first part takes nothing from the second.
        assert!(bucket.try_acquire("k", 5).unwrap().allowed);
        manual.advance(SEC + 1);
        assert_eq!(
            both(11, f64::INFINITY).reason,
            Some(Refusal::ExceedsCapacity)
        );
        assert_eq!(window.peek(0).unwrap(), 5.0);
    }
}

// ---------------------------------------------------------------------------------------
// back_off: nothing for the given time, then a refill from empty
// ---------------------------------------------------------------------------------------

#[test]
fn a_back_off_owes_its_refill_at_every_shard_count() {
    for shards in [1, 4, 16] {
        // 40 per second, burst 40: 1 s of back-off is 40 tokens owed.
        let (limiter, manual) = new_limiter(Algorithm::TokenBucket, 40.0, 1.0, Some(40.0), shards);
        assert_eq!(drain(&limiter, "k"), 40);
        limiter.back_off(0, 1.0).unwrap();
        let refusal = acquire(&limiter, "k", 1);
        assert!(
            (1.025..1.026).contains(&refusal.retry_after.unwrap()),
            "shards={shards}: the wait counts the debt: {refusal:?}"
        );
        // A re-rating keeps what is owed: at half the rate, 10 tokens 0.5 s after it ends.
        let half = Quota::new(20.0, 1.0, Some(40.0), Algorithm::TokenBucket, Some(shards));
        limiter.set_quota(half.unwrap()).unwrap();
        manual.advance(SEC);
        assert_eq!(drain(&limiter, "k"), 0, "shards={shards}: owed until 1 s");
        manual.advance(SEC / 2);
        assert_eq!(drain(&limiter, "k"), 10, "shards={shards}: from empty");
    }
}

#[test]
fn a_back_off_keeps_a_sliding_window_full_until_it_ends() {
    for shards in [1, 4] {
        let (limiter, manual) = new_limiter(Algorithm::SlidingWindow, 10.0, 1.0, None, shards);
        assert!(acquire(&limiter, "k", 7).allowed);
        limiter.back_off(0, 2.5).unwrap();
        let refusal = acquire(&limiter, "k", 1);
        assert!(
            (2.5..2.51).contains(&refusal.retry_after.unwrap()),
            "{refusal:?}"
        );
        manual.advance(2 * SEC);
        assert_eq!(
            drain(&limiter, "k"),
            0,
            "shards={shards}: nothing before 2.5 s"
        );
        manual.advance(SEC / 2);
        assert_eq!(
            drain(&limiter, "k"),
            10,
            "shards={shards}: the whole window after it"
        );
    }
}

#[test]
fn a_back_off_of_a_bad_length_is_refused_naming_seconds() {
    let (limiter, _) = per_second_100(Algorithm::TokenBucket, 1);
    for bad in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
        assert_eq!(limiter.back_off(0, bad).unwrap_err().argument(), "seconds");
    }
    assert!(
        acquire(&limiter, "k", 1).allowed,
        "a refused back-off changes nothing"
    );
}
