//! The balance report: the slow path counted, shares of the budget, the imbalance ratio.
//! On a frozen `ManualClock`, so every count is exact.

use ratelimit_core::{Algorithm, Clock, Key, ManualClock, Quota, RateLimiter, DEFAULT_MAX_KEYS};
use std::sync::Arc;

fn limiter(algorithm: Algorithm, rate: f64, burst: Option<f64>, shards: usize) -> RateLimiter {
    let quota = Quota::new(rate, 1.0, burst, algorithm, Some(shards)).unwrap();
    RateLimiter::new(quota, Clock::Manual(Arc::new(ManualClock::new(0.0)))).unwrap()
}

/// Takes one token at a time for `key` until the first refusal; returns how many.
fn drain(limiter: &RateLimiter, key: &str) -> u64 {
    let hash = limiter.key(key).unwrap();
    let mut admitted = 0;
    while limiter.try_acquire_key(hash, 1).unwrap().allowed {
        admitted += 1;
    }
    admitted
}

/// 16 shards of 100 tokens: a hot key's two candidates serve 200, and every later
/// admission is gathered from the other shards.
fn hot_key_limiter() -> RateLimiter {
    let limiter = limiter(Algorithm::TokenBucket, 1600.0, None, 16);
    assert_eq!(drain(&limiter, "hot"), 1600);
    limiter
}

#[test]
fn a_hot_key_that_drains_its_shards_takes_the_slow_path() {
    let limiter = hot_key_limiter();
    assert_eq!(limiter.shard_views().unwrap().gathered(), 1400);
    let balance = limiter.balance().unwrap();
    assert_eq!(balance.distribution.iter().sum::<u64>(), 1600);
    assert_eq!(balance.slow_path_share, 1400.0 / 1600.0);
    // The gathered admissions count at the hot key's fuller candidate.
    assert_eq!(balance.distribution.iter().filter(|&&s| s > 0).count(), 2);
    assert!(!balance.balanced());
}

#[test]
fn a_uniform_spread_of_keys_stays_on_the_fast_path_and_balanced() {
    let limiter = limiter(Algorithm::TokenBucket, 10_000.0, None, 16);
    for round in 0..5 {
        for key in 0..1000 {
            let decision = limiter.try_acquire(&format!("user-{key}"), 1).unwrap();
            assert!(decision.allowed, "round {round} key {key}");
        }
    }
    let balance = limiter.balance().unwrap();
    assert!(balance.slow_path_share < 0.01, "{balance:?}");
    assert!(balance.imbalance_ratio < 0.3, "{balance:?}");
    assert!(balance.balanced());
}

#[test]
fn reset_clears_the_slow_path_count() {
    let limiter = hot_key_limiter();
    limiter.reset().unwrap();
    assert_eq!(limiter.shard_views().unwrap().gathered(), 0);
    let balance = limiter.balance().unwrap();
    assert_eq!(
        (balance.slow_path_share, balance.imbalance_ratio),
        (0.0, 0.0)
    );
    assert_eq!(drain(&limiter, "hot"), 1600);
    assert_eq!(limiter.shard_views().unwrap().gathered(), 1400);
}

#[test]
fn a_gathered_admission_given_back_is_no_longer_counted() {
    let limiter = limiter(Algorithm::TokenBucket, 1600.0, None, 16);
    let hot = limiter.key("hot").unwrap();
    for _ in 0..200 {
        assert!(limiter.try_acquire_key(hot, 1).unwrap().allowed);
    }
    assert_eq!(limiter.shard_views().unwrap().gathered(), 0);
    // The hot key's part is gathered, then given back because the second part refuses.
    let empty = self::limiter(Algorithm::TokenBucket, 1.0, None, 1);
    assert_eq!(drain(&empty, "any"), 1);
    let decision =
        RateLimiter::try_acquire_all([(&limiter, hot, 1), (&empty, Key::hashed(0), 1)], 0.0)
            .unwrap();
    assert!(!decision.allowed);
    assert_eq!(limiter.shard_views().unwrap().gathered(), 0);
    assert_eq!(
        limiter.shard_views().unwrap().served().iter().sum::<u64>(),
        200
    );
    assert!(limiter.try_acquire_key(hot, 1).unwrap().allowed);
    assert_eq!(limiter.shard_views().unwrap().gathered(), 1);
}

#[test]
fn shares_add_up_exactly_to_the_rate_and_the_burst() {
    for (rate, burst) in [
        (1000.0, Some(7.0)),
        (1000.0, None),
        (3.3, Some(2.5)),
        (1e6, Some(1e9)),
    ] {
        for shards in [1, 3, 16, 100] {
            let shares = limiter(Algorithm::TokenBucket, rate, burst, shards)
                .balance()
                .unwrap()
                .shares;
            let what = format!("rate {rate} burst {burst:?} shards {shards}");
            assert_eq!(shares.rate.len(), shards, "{what}");
            assert_eq!(shares.rate.iter().sum::<f64>(), rate, "{what}");
            assert_eq!(
                shares.burst.iter().sum::<f64>(),
                burst.unwrap_or(rate),
                "{what}"
            );
        }
    }
    let shares = limiter(Algorithm::TokenBucket, 1000.0, Some(7.0), 16)
        .balance()
        .unwrap()
        .shares;
    assert_eq!((shares.rate[0], shares.burst[0]), (62.5, 0.4375));
}

#[test]
fn the_sliding_window_splits_its_limit_and_never_gathers() {
    let limiter = limiter(Algorithm::SlidingWindow, 10.0, None, 4);
    assert_eq!(drain(&limiter, "hot"), 10);
    let balance = limiter.balance().unwrap();
    assert_eq!(balance.shares.rate, vec![2.5; 4]);
    assert_eq!(balance.shares.burst, vec![3.0, 3.0, 2.0, 2.0]);
    assert_eq!(
        (
            limiter.shard_views().unwrap().gathered(),
            balance.slow_path_share
        ),
        (0, 0.0)
    );
}

#[test]
fn set_quota_changes_the_shares() {
    let limiter = limiter(Algorithm::TokenBucket, 1600.0, None, 16);
    let quota = Quota::new(800.0, 1.0, Some(8.0), Algorithm::TokenBucket, Some(16)).unwrap();
    limiter.set_quota(quota).unwrap();
    let shares = limiter.balance().unwrap().shares;
    assert_eq!((shares.rate[15], shares.burst[15]), (50.0, 0.5));
}

#[test]
fn per_key_budgets_share_nothing_and_never_gather() {
    let quota = Quota::new(10.0, 1.0, None, Algorithm::TokenBucket, Some(4)).unwrap();
    let clock = Clock::Manual(Arc::new(ManualClock::new(0.0)));
    let limiter = RateLimiter::keyed(quota, clock, Default::default(), DEFAULT_MAX_KEYS).unwrap();
    assert_eq!(drain(&limiter, "hot"), 10);
    let balance = limiter.balance().unwrap();
    assert!(balance.shares.rate.is_empty() && balance.shares.burst.is_empty());
    assert_eq!(
        (
            limiter.shard_views().unwrap().gathered(),
            balance.slow_path_share
        ),
        (0, 0.0)
    );
    assert_eq!(balance.distribution.iter().sum::<u64>(), 10);
}
