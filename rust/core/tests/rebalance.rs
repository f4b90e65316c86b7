//! Adaptive rebalancing: shares move toward demand, exactly, on the decision path.
//! On a `ManualClock`, so every count is exact.

use ratelimit_core::{
    Algorithm, Balance, Clock, ManualClock, Quota, RateLimiter, Rebalancing, ReservationPolicy,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const MS: u64 = 1_000_000;

fn limiter(
    rate: f64,
    burst: f64,
    shards: usize,
    rebalancing: Option<Rebalancing>,
) -> (RateLimiter, Arc<ManualClock>) {
    let manual = Arc::new(ManualClock::new(0.0));
    let quota = Quota::new(rate, 1.0, Some(burst), Algorithm::TokenBucket, Some(shards)).unwrap();
    let limiter = RateLimiter::with_reservations(
        quota,
        Clock::Manual(manual.clone()),
        ReservationPolicy::default(),
    )
    .unwrap();
    let limiter = match rebalancing {
        Some(rebalancing) => limiter.rebalancing(rebalancing),
        None => limiter,
    };
    (limiter, manual)
}

/// The adaptive limiter's defaults: shares move at an imbalance of 0.3, or every 5 minutes.
fn adaptive() -> Option<Rebalancing> {
    Some(Rebalancing::new(0.3, 300.0).unwrap())
}

/// splitmix64: a fixed, seeded stream of keys.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(`s`) over `n` keys: the cumulative weights, for sampling by bisection.
fn zipf(n: usize, s: f64) -> Vec<f64> {
    let mut total = 0.0;
    let mut cumulative: Vec<f64> = (1..=n)
        .map(|k| {
            total += (k as f64).powf(-s);
            total
        })
        .collect();
    for c in cumulative.iter_mut() {
        *c /= total;
    }
    cumulative
}

// The setting the adaptive limiter was first tried in: 16 shards, a budget of 2,000 a
// second with a burst of 100, and Zipf(1.1) demand over 10,000 keys at twice that, one
// request every 250 µs for two seconds.
const RATE: f64 = 2_000.0;
const BURST: f64 = 100.0;
const STEP: u64 = 250_000;

struct Run {
    admitted: u64,
    /// Admitted by each step (for the bound over every window).
    cumulative: Vec<u64>,
    /// The balance after the first second and after the second.
    first: Balance,
    second: Balance,
}

fn zipf_run(rebalancing: Option<Rebalancing>) -> Run {
    let (limiter, manual) = limiter(RATE, BURST, 16, rebalancing);
    // Fixed hashes, so that which keys share a shard is the same in every run (a limiter's
    // own key hashing is seeded per process).
    let mut hashes = Stream(1);
    let keys: Vec<u64> = (0..10_000).map(|_| hashes.next()).collect();
    let cdf = zipf(keys.len(), 1.1);
    let mut stream = Stream(7);
    let (mut admitted, mut cumulative, mut balances) = (0, Vec::new(), Vec::new());
    for _second in 0..2 {
        for _ in 0..4_000 {
            let k = cdf
                .partition_point(|&c| c < stream.unit())
                .min(keys.len() - 1);
            admitted += u64::from(limiter.try_acquire_key(keys[k], 1).unwrap().allowed);
            cumulative.push(admitted);
            manual.advance(STEP);
        }
        balances.push(limiter.balance().unwrap());
    }
    let second = balances.pop().unwrap();
    Run {
        admitted,
        cumulative,
        first: balances.pop().unwrap(),
        second,
    }
}

/// I1 over every window that starts on a 10 ms step and ends on any step (both
/// included): at most `burst + rate * length` admissions.
fn assert_within_the_bound(run: &Run) {
    let c = &run.cumulative;
    for i in (0..c.len()).step_by(40) {
        let before = if i == 0 { 0 } else { c[i - 1] };
        for (j, &by) in c.iter().enumerate().skip(i) {
            let bound = BURST + RATE * ((j - i) as u64 * STEP) as f64 / 1e9;
            let admitted = (by - before) as f64;
            assert!(
                admitted <= bound + 1e-6,
                "steps {i}..={j}: {admitted} > {bound}"
            );
        }
    }
}

#[test]
fn zipf_demand_rebalances_off_the_slow_path() {
    let fixed = zipf_run(None);
    let adaptive = zipf_run(adaptive());
    // The last request comes 7,999 steps after the first.
    let bound = BURST + RATE * (7_999 * STEP) as f64 / 1e9;
    for run in [&fixed, &adaptive] {
        assert_within_the_bound(run);
        assert!(
            run.admitted as f64 >= 0.99 * bound,
            "{} of {bound}",
            run.admitted
        );
    }
    assert_eq!(fixed.second.rebalances, 0);
    assert!(fixed.second.imbalance_ratio > 0.3, "{:?}", fixed.second);
    // Uncontended, the adaptive limiter spreads keys over fewer shards (one, here), so
    // the budget is not spread thin: the second second is on the fast path.
    assert!(adaptive.first.rebalances >= 1, "{:?}", adaptive.first);
    assert!(
        adaptive.second.imbalance_ratio < 0.3,
        "{:?}",
        adaptive.second
    );
    assert!(
        adaptive.second.slow_path_share * 10.0 <= fixed.second.slow_path_share,
        "slow path {} against {}",
        adaptive.second.slow_path_share,
        fixed.second.slow_path_share
    );
}

#[test]
fn the_shares_add_up_to_the_rate_and_the_burst_after_every_rebalance() {
    let (limiter, manual) = limiter(999.9, 77.7, 16, adaptive());
    let mut stream = Stream(3);
    for round in 0..50 {
        // Demand on a few keys, different every round.
        for _ in 0..2_000 {
            let key = format!("k{}", stream.next() % (round + 2));
            limiter.try_acquire(&key, 1).unwrap();
            manual.advance(100_000);
        }
        limiter.rebalance();
        let shares = limiter.balance().unwrap().shares;
        assert_eq!(shares.rate.iter().sum::<f64>(), 999.9, "round {round}");
        assert_eq!(shares.burst.iter().sum::<f64>(), 77.7, "round {round}");
    }
    assert!(limiter.balance().unwrap().rebalances >= 50);
}

#[test]
fn one_hot_key_gets_the_whole_budget() {
    let (limiter, manual) = limiter(1_600.0, 1_600.0, 16, adaptive());
    let hot = limiter.key("hot").unwrap();
    let mut admitted = 0;
    // Ten seconds at one call a millisecond: all 1,600 of the burst, then every token as it
    // refills, wherever the shares stand.
    for _ in 0..10_000 {
        while limiter.try_acquire_key(hot, 1).unwrap().allowed {
            admitted += 1;
        }
        manual.advance(MS);
    }
    assert!(limiter.balance().unwrap().rebalances >= 1);
    // At t = 9.999 s: the burst and 9.999 s of refill, less what is still a fraction.
    assert_eq!(admitted, 1_600 + 15_998, "{:?}", limiter.balance().unwrap());
    // And once the shares moved, the hot key's shards serve it without gathering.
    manual.advance(5 * MS);
    let before = limiter.shard_views().unwrap().gathered();
    let balance = limiter.balance().unwrap();
    for _ in 0..1_000 {
        limiter.try_acquire_key(hot, 1).unwrap();
        manual.advance(MS);
    }
    assert!(
        limiter.shard_views().unwrap().gathered() - before <= 100,
        "{balance:?} then {:?}",
        limiter.balance().unwrap()
    );
}

#[test]
fn rebalancing_while_four_threads_take_loses_and_duplicates_nothing() {
    let (limiter, manual) = limiter(10_000.0, 5_000.0, 16, adaptive());
    let limiter = Arc::new(limiter);
    let mut expected = 5_000.0;
    let mut total = 0;
    for round in 0..5u64 {
        let admitted = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let (limiter, admitted, done) = (limiter.clone(), admitted.clone(), done.clone());
                std::thread::spawn(move || {
                    // One thread on two hot keys, three on many: skewed demand.
                    let mut stream = Stream(t * 1000 + round);
                    let mut refusals = 0;
                    while refusals < 2_000 {
                        let key = stream.next() % (if t == 0 { 2 } else { 500 });
                        if limiter.try_acquire(&format!("k{key}"), 1).unwrap().allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            refusals = 0;
                        } else {
                            refusals += 1;
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        // Moving the shares while the threads take; once more after they are done, so that
        // a round whose threads all finished before this thread ran still moves them.
        let mut rebalances = 0;
        loop {
            let finished = done.load(Ordering::Relaxed) == 4;
            rebalances += u64::from(limiter.rebalance());
            if finished {
                break;
            }
        }
        for worker in workers {
            worker.join().unwrap();
        }
        // What is left, one thread on many keys: nothing may be stranded anywhere.
        for key in 0..64 {
            while limiter.try_acquire(&format!("k{key}"), 1).unwrap().allowed {
                admitted.fetch_add(1, Ordering::Relaxed);
            }
        }
        // The clock stood still: exactly what had refilled, however often the shares moved
        // (each round refills a tenth of a token more than a whole number, so what is
        // still a fraction of a tick in some shard cannot tip the count).
        total += admitted.load(Ordering::Relaxed);
        assert_eq!(
            total, expected as u64,
            "round {round}, {rebalances} rebalances"
        );
        assert!(round == 0 || rebalances > 0);
        assert!(limiter.peek(0).unwrap() < 1.0);
        manual.advance(250_010_000); // 2,500.1 tokens
        expected += 2_500.1;
    }
    assert!(limiter.balance().unwrap().rebalances > 0);
}

#[test]
fn a_key_asking_more_than_a_shards_share_is_reported_by_name() {
    let (limiter, manual) = limiter(10_000.0, 10_000.0, 16, adaptive());
    let hot = limiter.key("hot").unwrap().hash();
    let mut stream = Stream(11);
    // Half the calls for one key, the rest over 1,000 others, until the first look.
    let mut step = 0;
    while limiter.balance().unwrap().rebalances == 0 {
        let (key, hash) = if step % 2 == 0 {
            ("hot".to_owned(), hot)
        } else {
            let key = format!("k{}", stream.next() % 1000);
            let hash = limiter.key(&key).unwrap().hash();
            (key, hash)
        };
        if limiter.try_acquire_key(hash, 1).unwrap().sampled {
            limiter.name_key(hash, &key);
        }
        manual.advance(50_000);
        step += 1;
    }
    let balance = limiter.balance().unwrap();
    assert_eq!(balance.hot.len(), 1, "{:?}", balance.hot);
    assert_eq!(balance.hot[0].name.as_deref(), Some("hot"));
    // About 125 decisions were sampled by the first look: half of them, give or take.
    assert!(
        (balance.hot[0].share - 0.5).abs() < 0.2,
        "{:?}",
        balance.hot
    );
    // (How its decisions then spread: `memory::gcra` tests, where the shard count holds.)
}
