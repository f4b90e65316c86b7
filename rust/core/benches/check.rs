//! The core check: one decision (`check_key`: allowed or not) including the clock read,
//! on one thread and on two threads that use different shards; and `try_acquire_key`,
//! which also tells the tokens left (a look at every shard). Run with `make bench` (or `cargo bench -p ratelimit-core`).

use criterion::{criterion_group, criterion_main, Criterion};
use ratelimit_core::{
    Algorithm, Booking, Clock, ManualClock, Quota, RateLimiter, ReservationPolicy,
};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// A budget no benchmark can exhaust, so every call is admitted.
fn limiter(shards: usize) -> RateLimiter {
    let quota = Quota::new(3e6, 1.0, Some(1e11), Algorithm::TokenBucket, Some(shards)).unwrap();
    RateLimiter::new(quota, Clock::monotonic()).unwrap()
}

/// Two key hashes whose candidate shards are disjoint, so that two threads using them
/// never touch each other's shards.
fn hashes_on_separate_shards(limiter: &RateLimiter) -> [u64; 2] {
    let hash = |i: u32| limiter.key(&format!("key-{i}")).unwrap().hash();
    let a = hash(0);
    let (a1, a2) = limiter.shard_views().unwrap().candidates(a);
    let b = (1..)
        .map(hash)
        .find(|&h| {
            let (b1, b2) = limiter.shard_views().unwrap().candidates(h);
            ![a1, a2].contains(&b1) && ![a1, a2].contains(&b2)
        })
        .unwrap();
    [a, b]
}

fn single_thread(c: &mut Criterion) {
    let clock = Clock::monotonic();
    c.bench_function("clock read (baseline)", |b| {
        b.iter(|| black_box(clock.now()))
    });
    let limiter = limiter(1);
    let hash = limiter.key("default").unwrap().hash();
    c.bench_function("check/1 thread", |b| {
        b.iter(|| black_box(limiter.check_key(black_box(hash), 1).unwrap()))
    });
    c.bench_function("try_acquire (with tokens left)/1 thread", |b| {
        b.iter(|| black_box(limiter.try_acquire_key(black_box(hash), 1).unwrap()))
    });
    let limiter16 = self::limiter(16);
    c.bench_function("check/1 thread, 16 shards", |b| {
        b.iter(|| black_box(limiter16.check_key(black_box(hash), 1).unwrap()))
    });
    c.bench_function("try_acquire (with tokens left)/1 thread, 16 shards", |b| {
        b.iter(|| black_box(limiter16.try_acquire_key(black_box(hash), 1).unwrap()))
    });
}

/// Aggregate throughput: `threads` threads make `iters` calls each, the time reported is
/// wall time divided by the thread count, so the per-call figure falls as threads scale.
/// The one-thread run alternates the two keys, so both runs keep the same shards busy.
/// At 16 shards the two keys are hot keys of a skewed budget: most shards stay full while
/// theirs are drained (what adaptive rebalancing is for).
fn threads(c: &mut Criterion) {
    for (shards, name) in [(4, "separate shards"), (16, "2 hot keys on 16 shards")] {
        scaling(c, shards, name);
    }
}

fn scaling(c: &mut Criterion, shards: usize, name: &str) {
    let limiter = Arc::new(limiter(shards));
    let hashes = hashes_on_separate_shards(&limiter);
    for threads in [1usize, 2] {
        c.bench_function(&format!("check/{threads} threads, {name}"), |b| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(threads + 1));
                let workers: Vec<_> = (0..threads)
                    .map(|t| {
                        let (limiter, barrier) = (limiter.clone(), barrier.clone());
                        // Alone, a thread takes turns with both keys; in pairs, one each.
                        let mine: Vec<u64> = if threads == 1 {
                            hashes.to_vec()
                        } else {
                            vec![hashes[t]]
                        };
                        std::thread::spawn(move || {
                            barrier.wait();
                            for hash in mine.iter().cycle().take(iters as usize) {
                                black_box(limiter.check_key(*hash, 1).unwrap());
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                for w in workers {
                    w.join().unwrap();
                }
                start.elapsed() / threads as u32
            })
        });
    }
}

fn policy() -> ReservationPolicy {
    ReservationPolicy {
        ttl: 1e-3,
        max: 1_000_000,
        ..ReservationPolicy::default()
    }
}

/// A reservation's cost: reserve then execute, served at once, and queued for a later slot.
fn reservations(c: &mut Criterion) {
    let quota = Quota::new(3e6, 1.0, Some(1e11), Algorithm::TokenBucket, Some(1)).unwrap();
    let limiter = RateLimiter::with_reservations(quota, Clock::monotonic(), policy()).unwrap();
    c.bench_function("reserve+execute/served at once", |b| {
        b.iter(|| {
            let Booking::Reserved(r) = limiter.reserve(1, 1, 0.0).unwrap() else {
                unreachable!("a huge budget serves at once")
            };
            black_box(limiter.execute_reservation(&r.id).unwrap())
        })
    });
    // 1000 tokens per second, burst 1: every reservation waits 1 ms for its slot.
    let manual = Arc::new(ManualClock::new(0.0));
    let quota = Quota::new(1000.0, 1.0, Some(1.0), Algorithm::TokenBucket, Some(1)).unwrap();
    let queued =
        RateLimiter::with_reservations(quota, Clock::Manual(manual.clone()), policy()).unwrap();
    c.bench_function("reserve+execute/queued for its slot", |b| {
        b.iter(|| {
            let Booking::Reserved(r) = queued.reserve(1, 1, f64::INFINITY).unwrap() else {
                unreachable!("no max_wait")
            };
            manual.set(r.execute_at);
            black_box(queued.execute_reservation(&r.id).unwrap())
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = single_thread, threads, reservations
}
criterion_main!(benches);
