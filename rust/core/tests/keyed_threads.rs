//! Per-key budgets under real threads (`scope="key"`), on a frozen manual clock so that the
//! counts are exact: threads on many keys admit exactly each key's burst, and a burst of
//! new keys from every thread never admits a key more than its budget while it is inserted.

use ratelimit_core::{Algorithm, Clock, ManualClock, Quota, RateLimiter, ReservationPolicy};
use std::sync::{Arc, Barrier};

const THREADS: usize = 4;

fn keyed(algorithm: Algorithm, burst: u64, stripes: usize, max_keys: usize) -> Arc<RateLimiter> {
    let quota = Quota::new(burst as f64, 1.0, None, algorithm, Some(stripes)).unwrap();
    let clock = Clock::Manual(Arc::new(ManualClock::new(0.0)));
    Arc::new(RateLimiter::keyed(quota, clock, ReservationPolicy::default(), max_keys).unwrap())
}

/// Each thread calls `calls` times on every key of `keys` (all threads start together) and
/// returns the admissions per key.
fn hammer(limiter: &Arc<RateLimiter>, keys: u64, calls: usize) -> Vec<u64> {
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (limiter, barrier) = (limiter.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut admitted = vec![0u64; keys as usize];
                barrier.wait();
                for round in 0..calls {
                    for i in 0..keys {
                        // Threads walk the keys in different orders, so they meet on new keys.
                        let key = (i + (t as u64 * 7 + round as u64) * 13) % keys;
                        if limiter.try_acquire_key(key, 1).unwrap().allowed {
                            admitted[key as usize] += 1;
                        }
                    }
                }
                admitted
            })
        })
        .collect();
    let mut total = vec![0u64; keys as usize];
    for handle in handles {
        for (sum, n) in total.iter_mut().zip(handle.join().unwrap()) {
            *sum += n;
        }
    }
    total
}

#[test]
fn threads_on_many_keys_admit_each_keys_budget_exactly() {
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow] {
        for stripes in [1, 4, 16] {
            let limiter = keyed(algorithm, 5, stripes, 1 << 20);
            let admitted = hammer(&limiter, 2_000, 3);
            assert!(
                admitted.iter().all(|&n| n == 5),
                "{algorithm:?} at {stripes} stripes: {:?}",
                admitted
                    .iter()
                    .filter(|&&n| n != 5)
                    .take(5)
                    .collect::<Vec<_>>()
            );
            assert_eq!(limiter.keys().unwrap(), 2_000);
        }
    }
}

#[test]
fn new_keys_inserted_by_every_thread_at_once_get_one_budget() {
    for _ in 0..20 {
        // Burst 1: a key inserted twice would admit twice.
        let limiter = keyed(Algorithm::TokenBucket, 1, 16, 1 << 20);
        let admitted = hammer(&limiter, 5_000, 1);
        assert!(admitted.iter().all(|&n| n == 1));
    }
}

#[test]
fn the_key_cap_holds_under_threads_and_refuses_new_keys_only() {
    let limiter = keyed(Algorithm::TokenBucket, 1_000, 16, 1_000);
    let admitted = hammer(&limiter, 3_000, 2);
    assert_eq!(limiter.keys().unwrap(), 1_000);
    let kept = admitted.iter().filter(|&&n| n > 0).count();
    assert_eq!(kept, 1_000, "exactly max_keys keys got a budget");
    assert!(admitted.iter().all(|&n| n == 0 || n == 2 * THREADS as u64));
}
