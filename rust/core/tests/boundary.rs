//! Exact at the boundary, as a user's own manual-clock test sees it: for every rate whose
//! token costs a round number of nanoseconds (integers per second, minute or hour, up to 1e9
//! per second), at every shard count, one period after draining gives the full burst back,
//! `k` emission intervals give exactly `k` tokens, and `retry_after` is exactly when the
//! token is there. And over no interval, however short, is more than
//! `burst + rate * t / period` admitted.

use proptest::prelude::*;
mod common;
use common::cases;
use ratelimit_core::{Algorithm, Clock, ManualClock, Quota, RateLimiter, ReservationPolicy};
use std::sync::Arc;

const SEC: u64 = 1_000_000_000;
const RATES_PER_SECOND: [u64; 14] = [
    3,
    7,
    12,
    30,
    60,
    300,
    600,
    3000,
    30_000,
    50_000,
    100_000,
    250_000,
    1_000_000,
    1_000_000_000,
];
const PERIODS: [u64; 3] = [1, 60, 3600];
const SHARDS: [usize; 4] = [1, 2, 4, 16];

/// A limiter of `rate` tokens per `period` seconds (burst = rate) on a manual clock at 0;
/// `shards` of one budget, or the budget of one key among others.
struct Bench {
    rate: u64,
    period: u64,
    shards: usize,
    keyed: bool,
    manual: Arc<ManualClock>,
    limiter: RateLimiter,
}

impl Bench {
    fn new(rate: u64, period: u64, shards: usize, keyed: bool) -> Self {
        let quota = Quota::new(
            rate as f64,
            period as f64,
            None,
            Algorithm::TokenBucket,
            Some(shards),
        )
        .unwrap();
        let (limiter, manual) = on_manual_clock(quota, keyed);
        Self {
            rate,
            period,
            shards,
            keyed,
            manual,
            limiter,
        }
    }

    fn what(&self) -> String {
        let scope = if self.keyed { " per key" } else { "" };
        format!(
            "{}/{} s, {} shards{scope}",
            self.rate, self.period, self.shards
        )
    }

    /// Nanoseconds of `k` emission intervals, rounded up to the clock's nanosecond.
    fn intervals(&self, k: u64) -> u64 {
        (u128::from(k) * u128::from(self.period * SEC)).div_ceil(u128::from(self.rate)) as u64
    }

    fn take(&self, count: u64) -> bool {
        self.limiter.try_acquire("k", count).unwrap().allowed
    }

    /// Takes every token there is, as a user would: in chunks of about a tenth of the
    /// burst, then one at a time.
    fn drain(&self) -> u64 {
        let mut taken = 0;
        for chunk in [(self.rate / 10).max(1), 1] {
            while self.take(chunk) {
                taken += chunk;
            }
        }
        taken
    }
}

fn every_config(keyed: bool, mut check: impl FnMut(Bench)) {
    for rate in RATES_PER_SECOND {
        for period in PERIODS {
            for shards in SHARDS {
                // As many tokens per minute or hour, and as many per second stated per
                // minute or hour.
                check(Bench::new(rate, period, shards, keyed));
                if period > 1 {
                    check(Bench::new(rate * period, period, shards, keyed));
                }
            }
        }
    }
}

#[test]
fn one_period_after_draining_gives_the_full_burst_back() {
    for keyed in [false, true] {
        every_config(keyed, |b| {
            assert_eq!(b.drain(), b.rate, "{}: the burst", b.what());
            b.manual.advance(b.period * SEC);
            assert_eq!(b.drain(), b.rate, "{}: one period later", b.what());
        });
    }
}

#[test]
fn k_emission_intervals_give_exactly_k_tokens() {
    for keyed in [false, true] {
        every_config(keyed, |b| {
            b.drain();
            let mut admitted = 0;
            // One interval at a time, then a few at once, on the exact (rounded-up) times.
            for k in (1..=5).chain([7, 12, 30, 100, 1000]) {
                if k > b.rate {
                    break;
                }
                b.manual.set(b.intervals(k));
                admitted += b.drain();
                assert_eq!(admitted, k, "{}: after {k} intervals", b.what());
            }
        });
    }
}

#[test]
fn retry_after_is_exactly_when_the_tokens_are_there() {
    for keyed in [false, true] {
        every_config(keyed, |b| {
            b.drain();
            // Part of the way to the next token, then ask for one and for a few.
            b.manual.advance(b.intervals(1) / 3);
            for count in [1, 3.min(b.rate)] {
                let decision = b.limiter.try_acquire("k", count).unwrap();
                assert!(!decision.allowed, "{}", b.what());
                let wait = (decision.retry_after.unwrap() * 1e9).round() as u64;
                let now = b.manual.now();
                assert_eq!(now + wait, b.intervals(count), "{}: {count}", b.what());
            }
            b.manual.set(b.intervals(1) - 1);
            assert!(!b.take(1), "{}: a nanosecond early", b.what());
            b.manual.advance(1);
            assert!(b.take(1), "{}: on time", b.what());
        });
    }
}

/// A limiter of `quota` on a manual clock at 0: one budget, or (`keyed`) one per key.
fn on_manual_clock(quota: Quota, keyed: bool) -> (RateLimiter, Arc<ManualClock>) {
    let manual = Arc::new(ManualClock::new(0.0));
    let clock = Clock::Manual(manual.clone());
    let limiter = if keyed {
        RateLimiter::keyed(quota, clock, ReservationPolicy::default(), 1000)
    } else {
        RateLimiter::new(quota, clock)
    };
    (limiter.unwrap(), manual)
}

/// Takes greedily at each of `steps` (nanoseconds apart) and checks every interval between
/// two admission times against `burst + rate * t / period`; one budget, or one key's.
fn check_every_interval(quota: Quota, keyed: bool, start: u64, steps: &[u64], count: u64) {
    let (limiter, manual) = on_manual_clock(quota, keyed);
    manual.set(start);
    // (time, tokens admitted at that time)
    let mut admitted: Vec<(u64, u64)> = Vec::new();
    for (i, &step) in steps.iter().enumerate() {
        if i > 0 {
            manual.advance(step);
        }
        let mut taken = 0;
        while limiter.try_acquire("k", count).unwrap().allowed {
            taken += count;
        }
        admitted.push((manual.now(), taken));
    }
    let per_nano = quota.rate / quota.period / 1e9;
    for i in 0..admitted.len() {
        let mut total = 0;
        for &(t, taken) in &admitted[i..] {
            total += taken;
            let bound = quota.burst + (t - admitted[i].0) as f64 * per_nano;
            // The bound in floats: exactly 29 can come out as 28.999999999999996.
            assert!(
                total as f64 <= bound + 1e-9,
                "{quota:?}: {total} admitted over {} ns from {}",
                t - admitted[i].0,
                admitted[i].0
            );
        }
    }
}

#[test]
fn no_interval_of_a_few_nanoseconds_admits_more_than_burst_plus_rate_times_t() {
    // High rates, round and not (whose clock scale is then fractional), a full bucket from
    // any instant, taken from greedily every nanosecond; one budget or one key's.
    let steps = [1; 48];
    let budgets = [
        (1.0, 1, false),
        (7.0, 1, false),
        (7.0, 4, false),
        (3.0, 16, false),
        (7.0, 1, true),
    ];
    for i in 0..200u32 {
        let rate = 3e7 + f64::from(i) * 4_848_484.848_484_8;
        for (burst, shards, keyed) in budgets {
            let quota =
                Quota::new(rate, 1.0, Some(burst), Algorithm::TokenBucket, Some(shards)).unwrap();
            for start in [0, 1, 2, 3, 5, 8, 13, 21] {
                check_every_interval(quota, keyed, start, &steps, 1);
            }
        }
    }
}

/// Rates with a round token time: `digits * 2^i * 5^j` per second, up to 1e9 per second.
fn round_rate() -> impl Strategy<Value = f64> {
    (1u64..=32, 0u32..=9, 0u32..=9)
        .prop_map(|(digits, i, j)| (digits * 2u64.pow(i) * 5u64.pow(j)) as f64)
        .prop_filter("at most 1e9 per second", |&r| r <= 1e9)
}

proptest! {
    #![proptest_config(cases(64))]

    /// The short intervals of the high rates: tokens a few nanoseconds apart, a full bucket
    /// at any instant, steps of a few nanoseconds.
    #[test]
    fn no_interval_admits_more_than_burst_plus_rate_times_t(
        rate in prop_oneof![
            Just(3e7), Just(5e7), Just(1e8), Just(1.25e8), Just(3e8), Just(7e8), Just(1e9),
            round_rate(), 3e7..1e9f64,
        ],
        burst in 1u64..=8,
        shards in prop_oneof![Just(1usize), Just(2), Just(4), Just(16)],
        keyed in any::<bool>(),
        start in 0u64..10_000,
        steps in prop::collection::vec(prop_oneof![1u64..=40, 1u64..=400], 1..120),
    ) {
        let quota =
            Quota::new(rate, 1.0, Some(burst as f64), Algorithm::TokenBucket, Some(shards))
                .unwrap();
        check_every_interval(quota, keyed, start, &steps, 1);
    }

    /// Any round rate per second, minute, hour or day, any burst and shard count: `k`
    /// intervals after draining (at any instant) give exactly `k` tokens.
    #[test]
    fn round_rates_refill_exactly(
        rate in round_rate(),
        period in prop_oneof![Just(1u64), Just(60), Just(3600), Just(86_400)],
        burst in 1u64..=1000,
        shards in 1usize..=16,
        start in 0u64..SEC,
        k in 1u64..=1000,
    ) {
        let quota = Quota::new(
            rate, period as f64, Some(burst as f64), Algorithm::TokenBucket, Some(shards),
        )
        .unwrap();
        let manual = Arc::new(ManualClock::new(0.0));
        let limiter = RateLimiter::new(quota, Clock::Manual(manual.clone())).unwrap();
        manual.set(start);
        prop_assert!(limiter.try_acquire("k", burst).unwrap().allowed);
        prop_assert!(!limiter.try_acquire("k", 1).unwrap().allowed);
        let k = k.min(burst);
        let nanos = (u128::from(k) * u128::from(period * SEC)).div_ceil(rate as u128) as u64;
        manual.set(start + nanos);
        prop_assert!(limiter.try_acquire("k", k).unwrap().allowed, "{} at {}", k, nanos);
        prop_assert!(!limiter.try_acquire("k", 1).unwrap().allowed, "{} + 1", k);
    }
}
