//! The token bucket is exact for any rate a user needs (issue 8): from one token per year to
//! 1e9 tokens per second, bursts up to 1e12, at every shard count. Over a run on a manual
//! clock the admitted tokens never exceed `burst + rate * t / period`, and fall short of it
//! by less than one request plus one part in a million.

use ratelimit_core::{Algorithm, Clock, ManualClock, Quota, RateLimiter};
use std::sync::Arc;

const SEC: u64 = 1_000_000_000;
const YEAR: f64 = 365.0 * 86_400.0;

struct Run {
    rate: f64,
    period: f64,
    burst: Option<f64>,
    /// Tokens per request.
    count: u64,
    /// Clock steps, and how many of them; every step takes requests until one is refused.
    step: u64,
    steps: u64,
}

impl Run {
    /// Tokens admitted at each shard count, checked against the exact bound.
    fn check(&self, shards: &[usize]) {
        for &n in shards {
            let quota = Quota::new(
                self.rate,
                self.period,
                self.burst,
                Algorithm::TokenBucket,
                Some(n),
            )
            .unwrap();
            let manual = Arc::new(ManualClock::new(0.0));
            let limiter = RateLimiter::new(quota, Clock::Manual(manual.clone())).unwrap();
            let mut admitted = 0u64;
            for step in 0..=self.steps {
                if step > 0 {
                    manual.advance(self.step);
                }
                while limiter.try_acquire("k", self.count).unwrap().allowed {
                    admitted += self.count;
                }
            }
            let elapsed = (self.step * self.steps) as f64 / SEC as f64;
            let bound = quota.burst + self.rate * elapsed / self.period;
            let what = format!("rate={} period={} shards={n}", self.rate, self.period);
            assert!(admitted as f64 <= bound, "{what}: {admitted} > {bound}");
            let floor = bound * (1.0 - 1e-6) - self.count as f64;
            assert!(admitted as f64 >= floor, "{what}: {admitted} < {floor}");
        }
    }
}

#[test]
fn a_gigabit_per_second_in_64_kib_chunks() {
    // 125,000,000 bytes per second, burst one second's worth, over 2 s in 1 ms steps
    // (each step refills 125,000 bytes, well under the burst: nothing overflows).
    Run {
        rate: 125_000_000.0,
        period: 1.0,
        burst: None,
        count: 64 * 1024,
        step: SEC / 1000,
        steps: 2000,
    }
    .check(&[1, 2, 16]);
}

#[test]
fn a_billion_tokens_per_second() {
    Run {
        rate: 1e9,
        period: 1.0,
        burst: Some(1e6),
        count: 1000,
        step: SEC / 10_000,
        steps: 20_000,
    }
    .check(&[1, 2, 16]);
}

#[test]
fn one_token_per_year() {
    // Exact to the token: one now, then one a year for ten years.
    for shards in [1, 16, 1024] {
        let quota = Quota::new(1.0, YEAR, None, Algorithm::TokenBucket, Some(shards)).unwrap();
        let manual = Arc::new(ManualClock::new(0.0));
        let limiter = RateLimiter::new(quota, Clock::Manual(manual.clone())).unwrap();
        let mut admitted = 0;
        for year in 0..=10u64 {
            manual.set((year as f64 * YEAR) as u64 * SEC);
            while limiter.try_acquire("k", 1).unwrap().allowed {
                admitted += 1;
            }
            assert_eq!(admitted, year + 1, "shards={shards}");
        }
    }
}

#[test]
fn a_huge_burst_at_a_low_rate() {
    // A trillion tokens of burst, refilled at one per day, in daily steps for a year.
    Run {
        rate: 1.0,
        period: 86_400.0,
        burst: Some(1e12),
        count: 1_000_000_000,
        step: 86_400 * SEC,
        steps: 365,
    }
    .check(&[1, 16]);
}

#[test]
fn rates_per_minute_hour_and_day_stay_exact() {
    for (rate, period) in [
        (600.0, 60.0),
        (36_000.0, 3600.0),
        (1e6, 86_400.0),
        (7.0, 1.0),
    ] {
        Run {
            rate,
            period,
            burst: Some(10.0),
            count: 1,
            // A few tokens' time per step, so the burst of 10 never overflows.
            step: (period * 1e9 / rate * 3.7) as u64,
            steps: 3000,
        }
        .check(&[1, 3, 16]);
    }
}

#[test]
fn high_rates_that_no_power_of_two_prices_exactly() {
    // Tokens cost a fraction of a nanosecond's ticks here: the clock scale carries the rate.
    for rate in [3.3e6, 1.7e8, 999_999_937.0] {
        Run {
            rate,
            period: 1.0,
            burst: Some(rate / 100.0),
            // An odd count of about 10 µs of tokens: no count divides the burst evenly.
            count: (rate / 1e5) as u64 | 1,
            step: SEC / 1000,
            steps: 1500,
        }
        .check(&[1, 3, 16]);
    }
}

#[test]
fn rates_out_of_range_are_refused_naming_rate() {
    for (rate, burst) in [(1e-300, None), (1e12, None), (1e-20, Some(1e12))] {
        let quota = Quota::new(rate, 1.0, burst, Algorithm::TokenBucket, Some(1)).unwrap();
        let err = RateLimiter::new(quota, Clock::default()).unwrap_err();
        assert_eq!(err.argument(), "rate", "{err}");
    }
}

#[test]
fn the_sliding_window_states_its_range() {
    let window = |rate, period| Quota::new(rate, period, None, Algorithm::SlidingWindow, Some(1));
    assert!(window(36e6, 1.0).is_ok() && window(1.0, 100.0 * YEAR).is_ok());
    assert_eq!(window(0.5, 1.0).unwrap_err().argument(), "rate");
    assert_eq!(window(4e7, 1.0).unwrap_err().argument(), "rate");
    assert_eq!(window(10.0, 1e300).unwrap_err().argument(), "period");
}
