//! Property tests of SPEC §3 I1 (never over) and I2 (sharding is invisible to admission)
//! on a manual clock, single-threaded. Keys are given as fixed hashes through
//! `try_acquire_key`, so a failing case replays exactly (string keys are hashed with a
//! per-limiter random seed).

use proptest::prelude::*;
mod common;
use common::cases;
use ratelimit_core::{
    Algorithm, Booking, Clock, ManualClock, Quota, RateLimiter, Refusal, Reservation,
};
use std::collections::VecDeque;
use std::sync::Arc;

const KEYS: u64 = 50;

/// How requests pick their key.
#[derive(Debug, Clone, Copy)]
enum Keys {
    /// One hot key.
    One,
    /// Uniform over 50 keys.
    Uniform,
    /// Zipf-like (s = 1) over 50 keys: key k has weight about 1/k.
    Zipf,
}

fn keys() -> impl Strategy<Value = Keys> {
    prop_oneof![Just(Keys::One), Just(Keys::Uniform), Just(Keys::Zipf)]
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The hash of the key that `u` in [0, 1) picks under `keys`.
fn key_hash(keys: Keys, u: f64) -> u64 {
    let index = match keys {
        Keys::One => 0,
        Keys::Uniform => ((u * KEYS as f64) as u64).min(KEYS - 1),
        // P(index < k) = ln(k + 1) / ln(50): log-uniform, i.e. weight ~ 1 / (index + 1).
        Keys::Zipf => ((KEYS as f64).powf(u) as u64).clamp(1, KEYS) - 1,
    };
    splitmix64(index)
}

#[derive(Debug, Clone, Copy)]
struct Config {
    algorithm: Algorithm,
    shards: usize,
    rate: f64,
    period: f64,
    /// Token bucket only; the sliding window's capacity is floor(rate).
    burst: Option<f64>,
}

impl Config {
    fn quota(&self) -> Quota {
        Quota::new(
            self.rate,
            self.period,
            self.burst,
            self.algorithm,
            Some(self.shards),
        )
        .unwrap()
    }

    fn capacity(&self) -> f64 {
        self.quota().burst
    }

    fn period_ns(&self) -> f64 {
        self.period * 1e9
    }

    fn limiter(&self) -> (RateLimiter, Arc<ManualClock>) {
        let manual = Arc::new(ManualClock::new(0.0));
        let limiter = RateLimiter::new(self.quota(), Clock::Manual(manual.clone())).unwrap();
        (limiter, manual)
    }
}

/// Whole-number bursts (the usual case) and fractional ones.
fn burst(range: std::ops::RangeInclusive<u32>) -> impl Strategy<Value = f64> {
    let (lo, hi) = (*range.start() as f64, *range.end() as f64);
    prop_oneof![3 => range.prop_map(f64::from), 1 => lo..hi]
}

fn config(algorithm: Algorithm, min_burst: u32) -> impl Strategy<Value = Config> {
    (
        1usize..=32,
        prop_oneof![(1u32..=1000).prop_map(f64::from), 1.0f64..1000.0],
        prop_oneof![Just(1.0), Just(60.0), 0.1f64..100.0],
        burst(min_burst..=200),
    )
        .prop_map(move |(shards, rate, period, burst)| Config {
            algorithm,
            shards,
            rate,
            period,
            burst: match algorithm {
                Algorithm::TokenBucket => Some(burst),
                Algorithm::SlidingWindow => None,
            },
        })
        .prop_filter(
            "the sliding window needs floor(rate) >= min_burst",
            move |c| c.algorithm == Algorithm::TokenBucket || c.rate >= f64::from(min_burst),
        )
}

// ---------------------------------------------------------------------------------------
// I1: never over
// ---------------------------------------------------------------------------------------

/// One arrival: wait `advance` periods, then ask for `count` tokens for key `key`.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    advance: f64,
    key: f64,
    /// 0 asks for 1 token; otherwise the fraction of the burst to ask for.
    count: f64,
    /// After a rate-limited refusal, wait exactly `retry_after` and ask again.
    retry: bool,
}

fn arrivals(max: usize) -> impl Strategy<Value = Vec<Arrival>> {
    let advance = prop_oneof![
        3 => Just(0.0),
        3 => 0.0f64..0.02,
        2 => 0.0f64..0.3,
        1 => 0.0f64..1.5,
    ];
    let count = prop_oneof![6 => Just(0.0), 3 => 0.0f64..0.2, 1 => 0.0f64..=1.0];
    prop::collection::vec(
        (advance, 0.0f64..1.0, count, prop::bool::weighted(0.2)).prop_map(
            |(advance, key, count, retry)| Arrival {
                advance,
                key,
                count,
                retry,
            },
        ),
        1..max,
    )
}

fn count_of(arrival: &Arrival, capacity: f64) -> u64 {
    let most = capacity.floor() as u64;
    (1 + (arrival.count * most as f64) as u64).min(most)
}

/// Admissions (time in ns, tokens), in time order.
type Admissions = Vec<(u64, u64)>;

/// Plays the arrivals; on a `retry` after a rate-limited refusal checks that the request
/// is still refused 1 ns before `retry_after` and admitted at it (rounded up to the ns).
/// Checks along the way that every refusal is `RateLimited` (counts never exceed the burst).
fn play(config: &Config, keys: Keys, arrivals: &[Arrival]) -> Result<Admissions, TestCaseError> {
    let (limiter, manual) = config.limiter();
    let capacity = config.capacity();
    let mut admissions = Vec::new();
    for arrival in arrivals {
        manual.advance((arrival.advance * config.period_ns()) as u64);
        let hash = key_hash(keys, arrival.key);
        let count = count_of(arrival, capacity);
        let decision = limiter.try_acquire_key(hash, count).unwrap();
        if decision.allowed {
            admissions.push((manual.now(), count));
            continue;
        }
        if decision.reason == Some(Refusal::ExceedsCapacity) && count == capacity.floor() as u64 {
            // The known f64 capacity bug (invariants.rs,
            // count_equal_to_burst_is_admitted_with_a_day_long_period): conservative, so it
            // cannot hide an I1 violation. Not reachable with this test's periods.
            continue;
        }
        prop_assert_eq!(
            decision.reason,
            Some(Refusal::RateLimited),
            "count {}",
            count
        );
        let retry_after = decision.retry_after.unwrap();
        prop_assert!(retry_after > 0.0);
        if arrival.retry {
            let wait = (retry_after * 1e9).round() as u64;
            let wait_up = (retry_after * 1e9).ceil() as u64;
            manual.advance(wait - 1);
            let early = limiter.try_acquire_key(hash, count).unwrap();
            prop_assert!(!early.allowed, "admitted 1 ns before retry_after");
            manual.advance(wait_up - wait + 1);
            let on_time = limiter.try_acquire_key(hash, count).unwrap();
            prop_assert!(on_time.allowed, "refused at retry_after: {:?}", on_time);
            admissions.push((manual.now(), count));
        }
    }
    Ok(admissions)
}

/// Merges admissions at the same instant.
fn by_instant(admissions: &Admissions) -> Vec<(u64, u64)> {
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for &(t, n) in admissions {
        match merged.last_mut() {
            Some((last, total)) if *last == t => *total += n,
            _ => merged.push((t, n)),
        }
    }
    merged
}

/// Token bucket: for every pair of admission instants a <= b, the tokens admitted in
/// [a, b] are at most burst + rate * (b - a) / period.
fn check_token_bucket(config: &Config, admissions: &Admissions) -> Result<(), TestCaseError> {
    let instants = by_instant(admissions);
    let burst = config.burst.unwrap();
    for i in 0..instants.len() {
        let mut tokens = 0u64;
        for j in i..instants.len() {
            tokens += instants[j].1;
            let elapsed = (instants[j].0 - instants[i].0) as f64;
            let bound = burst + config.rate * elapsed / config.period_ns();
            prop_assert!(
                tokens as f64 <= bound + 1e-6,
                "{} tokens admitted in [{} ns, {} ns], bound {}",
                tokens,
                instants[i].0,
                instants[j].0,
                bound
            );
        }
    }
    Ok(())
}

/// Sliding window: every closed window [a, a + period] holds at most floor(rate)
/// admissions. Admission times are whole nanoseconds, so such a window holds those at
/// most floor(period in ns) after `a`; it is enough to start windows at admissions.
fn check_sliding_window(config: &Config, admissions: &Admissions) -> Result<(), TestCaseError> {
    let instants = by_instant(admissions);
    let span = config.period_ns().floor() as u64;
    let limit = config.rate.floor() as u64;
    let mut end = 0;
    let mut inside = 0u64;
    for start in 0..instants.len() {
        if end < start {
            end = start;
            inside = 0;
        }
        while end < instants.len() && instants[end].0 - instants[start].0 <= span {
            inside += instants[end].1;
            end += 1;
        }
        prop_assert!(
            inside <= limit,
            "{} admissions in [{} ns, {} ns + period], limit {}",
            inside,
            instants[start].0,
            instants[start].0,
            limit
        );
        inside -= instants[start].1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reference models: one unsharded budget
// ---------------------------------------------------------------------------------------

/// Something that admits or refuses `count` at `now` for `hash`.
trait Admit {
    fn admit(&mut self, now: u64, hash: u64, count: u64) -> bool;
}

struct Sharded {
    limiter: RateLimiter,
    manual: Arc<ManualClock>,
}

impl Admit for Sharded {
    fn admit(&mut self, now: u64, hash: u64, count: u64) -> bool {
        self.manual.set(now);
        assert_eq!(self.manual.now(), now);
        self.limiter.try_acquire_key(hash, count).unwrap().allowed
    }
}

/// A single token bucket in f64: the budget with no shards at all.
struct IdealBucket {
    tokens: f64,
    burst: f64,
    per_ns: f64,
    last: u64,
}

impl IdealBucket {
    fn new(config: &Config) -> Self {
        let burst = config.burst.unwrap();
        Self {
            tokens: burst,
            burst,
            per_ns: config.rate / config.period_ns(),
            last: 0,
        }
    }
}

impl Admit for IdealBucket {
    fn admit(&mut self, now: u64, _hash: u64, count: u64) -> bool {
        self.tokens = self
            .burst
            .min(self.tokens + (now - self.last) as f64 * self.per_ns);
        self.last = now;
        if self.tokens + 1e-9 >= count as f64 {
            self.tokens -= count as f64;
            true
        } else {
            false
        }
    }
}

/// A single exact log of admission times: at most `limit` in any closed window of
/// `window` ns (the limiter's window, the period rounded up to whole ns).
struct IdealLog {
    log: VecDeque<u64>,
    limit: u64,
    window: u64,
}

impl IdealLog {
    fn new(config: &Config) -> Self {
        Self {
            log: VecDeque::new(),
            limit: config.rate.floor() as u64,
            window: config.period_ns().ceil() as u64,
        }
    }

    fn expire(&mut self, now: u64) {
        while self.log.front().is_some_and(|&t| t + self.window < now) {
            self.log.pop_front();
        }
    }

    /// Nanoseconds until `count` fits.
    fn wait(&mut self, now: u64, count: u64) -> u64 {
        self.expire(now);
        let free = self.limit - self.log.len() as u64;
        if free >= count {
            return 0;
        }
        self.log[(count - free - 1) as usize] + self.window + 1 - now
    }
}

impl Admit for IdealLog {
    fn admit(&mut self, now: u64, _hash: u64, count: u64) -> bool {
        if self.wait(now, count) > 0 {
            return false;
        }
        self.log.extend(std::iter::repeat_n(now, count as usize));
        true
    }
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn i1_token_bucket_never_admits_more_than_burst_plus_refill(
        config in config(Algorithm::TokenBucket, 1),
        keys in keys(),
        arrivals in arrivals(300),
    ) {
        let admissions = play(&config, keys, &arrivals)?;
        check_token_bucket(&config, &admissions)?;
    }

    #[test]
    fn i1_sliding_window_never_admits_more_than_the_limit_per_window(
        config in config(Algorithm::SlidingWindow, 1),
        keys in keys(),
        arrivals in arrivals(300),
    ) {
        let admissions = play(&config, keys, &arrivals)?;
        check_sliding_window(&config, &admissions)?;
    }

    /// Sharding is invisible for the sliding window: decision by decision, the sharded
    /// limiter answers as one unsharded log would, with the same `retry_after`.
    #[test]
    fn i2_sliding_window_decides_exactly_as_one_unsharded_log(
        config in config(Algorithm::SlidingWindow, 1),
        keys in keys(),
        arrivals in arrivals(300),
    ) {
        let (limiter, manual) = config.limiter();
        let mut ideal = IdealLog::new(&config);
        let capacity = config.capacity();
        for (i, arrival) in arrivals.iter().enumerate() {
            manual.advance((arrival.advance * config.period_ns()) as u64);
            let now = manual.now();
            let count = count_of(arrival, capacity);
            let decision = limiter.try_acquire_key(key_hash(keys, arrival.key), count).unwrap();
            let wait = ideal.wait(now, count);
            prop_assert_eq!(decision.allowed, wait == 0, "arrival {} at {} ns", i, now);
            if decision.allowed {
                prop_assert!(ideal.admit(now, 0, count));
            } else {
                let retry_after = decision.retry_after.unwrap();
                prop_assert_eq!((retry_after * 1e9).round() as u64, wait, "arrival {}", i);
            }
            prop_assert_eq!(limiter.peek(0).unwrap(), (ideal.limit - ideal.log.len() as u64) as f64);
        }
    }

    /// I1 still holds across re-ratings mid-run (`set_quota` carries the state over; here
    /// with the same quota, so the budget must come through unchanged).
    #[test]
    fn i1_holds_across_re_ratings(
        config in prop_oneof![config(Algorithm::TokenBucket, 1), config(Algorithm::SlidingWindow, 1)],
        keys in keys(),
        arrivals in arrivals(200),
        re_rate_at in prop::collection::vec(0usize..200, 1..6),
    ) {
        let (limiter, manual) = config.limiter();
        let capacity = config.capacity();
        let mut admissions = Vec::new();
        for (i, arrival) in arrivals.iter().enumerate() {
            if re_rate_at.contains(&i) {
                let before = limiter.peek(0).unwrap();
                limiter.set_quota(config.quota()).unwrap();
                prop_assert!((limiter.peek(0).unwrap() - before).abs() < 1e-6, "{} != {}", limiter.peek(0).unwrap(), before);
            }
            manual.advance((arrival.advance * config.period_ns()) as u64);
            let count = count_of(arrival, capacity);
            if limiter.try_acquire_key(key_hash(keys, arrival.key), count).unwrap().allowed {
                admissions.push((manual.now(), count));
            }
        }
        match config.algorithm {
            Algorithm::TokenBucket => check_token_bucket(&config, &admissions)?,
            Algorithm::SlidingWindow => check_sliding_window(&config, &admissions)?,
        }
    }
}

// ---------------------------------------------------------------------------------------
// I2: under load above the budget, at least 99 % of it is admitted
// ---------------------------------------------------------------------------------------

/// How much each step of an overload run offers.
#[derive(Debug, Clone, Copy)]
enum Offer {
    /// Requests of 1..=`max_count` tokens until the first refusal.
    UntilRefused { max_count: u64 },
    /// This many requests of 1 token: more than the refill of one step, fewer than the burst.
    Calls(u64),
}

#[derive(Debug, Clone)]
struct Overload {
    config: Config,
    keys: Keys,
    /// Key picks and count picks, used in turn.
    picks: Vec<(f64, f64)>,
    offer: Offer,
    /// Tokens refilled per step.
    refill: f64,
    steps: u64,
}

impl Overload {
    fn step_ns(&self) -> u64 {
        ((self.refill * self.config.period_ns() / self.config.rate).round() as u64).max(1)
    }

    fn duration_ns(&self) -> u64 {
        self.step_ns() * (self.steps - 1)
    }

    /// burst + rate * T / period, T from the first call to the last.
    fn budget(&self) -> f64 {
        self.config.burst.unwrap()
            + self.config.rate * self.duration_ns() as f64 / self.config.period_ns()
    }

    /// Plays the run against `admit`; returns the tokens admitted.
    fn run(&self, admit: &mut impl Admit) -> u64 {
        let mut admitted = 0;
        let mut pick = 0;
        for step in 0..self.steps {
            let now = step * self.step_ns();
            let mut calls = 0;
            loop {
                let (key, count) = self.picks[pick % self.picks.len()];
                pick += 1;
                calls += 1;
                let count = match self.offer {
                    Offer::UntilRefused { max_count } => {
                        1 + ((count * max_count as f64) as u64).min(max_count - 1)
                    }
                    Offer::Calls(_) => 1,
                };
                let allowed = admit.admit(now, key_hash(self.keys, key), count);
                if allowed {
                    admitted += count;
                }
                let done = match self.offer {
                    Offer::UntilRefused { .. } => !allowed,
                    Offer::Calls(n) => calls == n,
                };
                if done {
                    break;
                }
            }
        }
        admitted
    }
}

/// Target budget: large enough that the unsharded bucket, which ends a run holding up to
/// `max_count - 1` tokens, is within 1 % of it.
const MIN_BUDGET: f64 = 400.0;

/// Overload runs. `roomy_shards` keeps every shard's share of the burst above what a step
/// can leave in it (`burst / shards >= max_count + refill`) and spends the burst at once,
/// so that no shard can ever sit full while the budget is short: the case the current
/// shard set gets right (see `i2_token_bucket_admits_99_percent_of_the_budget_under_overload`).
fn overload(roomy_shards: bool) -> impl Strategy<Value = Overload> {
    (
        config(Algorithm::TokenBucket, 2),
        keys(),
        prop::collection::vec((0.0f64..1.0, 0.0f64..1.0), 1..64),
        prop::bool::ANY.prop_map(move |b| b || roomy_shards),
        1u64..=3,
        0.0f64..1.0,
        1.0f64..4.0,
    )
        .prop_map(
            move |(config, keys, picks, until_refused, n, refill_pick, length)| {
                let burst = config.burst.unwrap();
                // The unsharded bucket must waste nothing either: what a step leaves plus one
                // step's refill stays within the burst.
                let (offer, refill) = if until_refused {
                    let max_count = n.min((burst - 1.0).floor() as u64).max(1);
                    let room = (burst - max_count as f64).min(20.0);
                    let refill = 0.05 + refill_pick * (room - 0.05).max(0.0);
                    (Offer::UntilRefused { max_count }, refill)
                } else {
                    // n calls offer 1.25x to 5x the refill.
                    let calls = n.min((burst - 1.0).floor() as u64).max(1);
                    let refill = (calls as f64 * (0.2 + 0.6 * refill_pick)).min(burst - 1.0);
                    (Offer::Calls(calls), refill)
                };
                let mut config = config;
                if let (true, Offer::UntilRefused { max_count }) = (roomy_shards, offer) {
                    let roomy = (burst / (max_count as f64 + refill)).floor() as usize;
                    config.shards = config.shards.min(roomy.max(1));
                }
                let mut run = Overload {
                    config,
                    keys,
                    picks,
                    offer,
                    refill,
                    steps: 2,
                };
                // Long enough for the budget to reach MIN_BUDGET and `length` bursts, and
                // (offering a fixed number of calls) for the burst to be spent first.
                let refill = run.refill;
                let calls_to_drain = match offer {
                    Offer::Calls(calls) => burst / (calls as f64 - refill),
                    Offer::UntilRefused { .. } => 0.0,
                };
                let steps = ((MIN_BUDGET.max(length * burst) - burst) / refill)
                    .max(2.0 * calls_to_drain)
                    .ceil() as u64;
                run.steps = steps.clamp(20, 20_000);
                run
            },
        )
}

fn check_overload(run: &Overload) -> Result<(), TestCaseError> {
    let budget = run.budget();
    let (limiter, manual) = run.config.limiter();
    let sharded = run.run(&mut Sharded { limiter, manual });
    let ideal = run.run(&mut IdealBucket::new(&run.config));
    // The test's own premise: one unsharded bucket gets (nearly) the whole budget.
    prop_assert!(
        ideal as f64 >= 0.99 * budget,
        "ideal {} of budget {}",
        ideal,
        budget
    );
    prop_assert!(
        sharded as f64 <= budget + 1e-6,
        "sharded {} over budget {}",
        sharded,
        budget
    );
    prop_assert!(
        sharded as f64 >= 0.99 * budget,
        "sharded admitted {} of budget {} ({:.2} %); one bucket admitted {}",
        sharded,
        budget,
        100.0 * sharded as f64 / budget,
        ideal
    );
    Ok(())
}

proptest! {
    #![proptest_config(cases(64))]

    /// Found by this suite. Each shard holds `burst / shards` and refills only itself; a
    /// request no candidate can serve is gathered from every shard, fullest candidate first
    /// and then in index order, which leaves the remaining credit in a few shards. Those fill
    /// up to their small share and throw their refill away while the budget as a whole is
    /// short. With `burst / shards` below one request this is a steady loss (rate=100/s,
    /// burst=2, shards=16, one key, one call per 9 ms: 92.6 % of the rate, see
    /// `i2_a_hot_key_with_a_small_burst_gets_the_whole_rate` in invariants.rs); with a large
    /// share it is a one-off loss while the first burst is spent a few calls at a time.
    #[test]
    fn i2_token_bucket_admits_99_percent_of_the_budget_under_overload(run in overload(false)) {
        check_overload(&run)?;
    }

    #[test]
    fn i2_token_bucket_admits_99_percent_of_the_budget_when_no_shard_can_fill(
        run in overload(true),
    ) {
        check_overload(&run)?;
    }

    #[test]
    fn i2_sliding_window_admits_as_much_as_one_log_under_overload(
        config in config(Algorithm::SlidingWindow, 2),
        keys in keys(),
        picks in prop::collection::vec((0.0f64..1.0, 0.0f64..1.0), 1..64),
        max_count in 1u64..=3,
        step in 0.001f64..0.2,
        steps in 50u64..400,
    ) {
        let run = Overload {
            config,
            keys,
            picks,
            offer: Offer::UntilRefused { max_count: max_count.min(config.rate.floor() as u64) },
            refill: step * config.rate,
            steps,
        };
        let (limiter, manual) = config.limiter();
        let sharded = run.run(&mut Sharded { limiter, manual });
        let ideal = run.run(&mut IdealLog::new(&config));
        prop_assert_eq!(sharded, ideal);
    }
}

// ---------------------------------------------------------------------------------------
// Counts up to the burst are never "exceeds capacity"
// ---------------------------------------------------------------------------------------

fn fresh_bucket_admits_whole_burst(
    shards: usize,
    rate: u32,
    period: f64,
    burst: u32,
) -> Result<(), TestCaseError> {
    let config = Config {
        algorithm: Algorithm::TokenBucket,
        shards,
        rate: f64::from(rate),
        period,
        burst: Some(f64::from(burst)),
    };
    let clock = Clock::Manual(Arc::new(ManualClock::new(0.0)));
    let limiter = match RateLimiter::new(config.quota(), clock) {
        Ok(limiter) => limiter,
        // The documented limit: a burst that takes years to refill over all shards.
        Err(err) => {
            prop_assert_eq!(err.argument(), "burst_size");
            return Ok(());
        }
    };
    prop_assert_eq!(limiter.peek(0).unwrap().round(), f64::from(burst));
    let decision = limiter.try_acquire_key(1, u64::from(burst)).unwrap();
    prop_assert!(decision.allowed, "{:?}", decision);
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    /// A fresh token bucket admits `floor(burst)` tokens at once, whatever the shard count
    /// (SPEC I2: a single key can use the whole burst), for bursts that refill within an
    /// hour (the whole budget then stays under 2^53 ticks of credit).
    #[test]
    fn a_fresh_token_bucket_admits_its_whole_burst_at_once(
        shards in 1usize..=32,
        rate in 1u32..=1000,
        period in prop_oneof![Just(3600.0), 0.1f64..100.0],
        burst in 1u32..=200,
    ) {
        prop_assume!(f64::from(burst) * period / f64::from(rate) <= 3600.0);
        fresh_bucket_admits_whole_burst(shards, rate, period, burst)?;
    }

    /// The same for bursts that take days to refill. Fails on the two f64 bugs in
    /// invariants.rs (`count_equal_to_burst_is_admitted_with_a_day_long_period`,
    /// `a_bucket_that_takes_days_to_refill_starts_full_and_refills`).
    #[test]
    fn a_fresh_token_bucket_admits_its_whole_burst_even_when_it_takes_days_to_refill(
        shards in 1usize..=32,
        rate in 1u32..=1000,
        period in prop_oneof![Just(3600.0), Just(86400.0), 0.1f64..100.0],
        burst in 1u32..=200,
    ) {
        fresh_bucket_admits_whole_burst(shards, rate, period, burst)?;
    }
}

proptest! {
    // Cheap cases, and the queue's bugs need many of them to show: 512.
    #![proptest_config(cases(512))]

    /// I1 with reservations in the mix: every admission counts when the caller may
    /// proceed (a reservation when it is executed), with cancellations and executions in
    /// any order along the way. `account.rs` drives every operation.
    #[test]
    fn i1_holds_with_reservations_in_the_mix(
        config in prop_oneof![config(Algorithm::TokenBucket, 1), config(Algorithm::SlidingWindow, 1)],
        keys in keys(),
        ops in prop::collection::vec((0u8..4, 0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0), 1..200),
    ) {
        let (limiter, manual) = config.limiter();
        let largest = config.capacity().floor().max(1.0) as u64;
        let mut admissions = Vec::new();
        let mut held: Vec<Reservation> = Vec::new();
        for (kind, advance, size, pick) in ops {
            manual.advance((advance * advance * config.period_ns() * 0.3) as u64);
            let count = (1 + (size * 4.0) as u64).min(largest);
            let hash = key_hash(keys, pick);
            match kind {
                0 => {
                    if limiter.try_acquire_key(hash, count).unwrap().allowed {
                        admissions.push((manual.now(), count));
                    }
                }
                1 => {
                    let max_wait = pick * config.period * 3.0;
                    if let Booking::Reserved(r) = limiter.reserve(hash, count, max_wait).unwrap() {
                        held.push(r);
                    }
                }
                _ if held.is_empty() => {}
                2 => {
                    let r = held.remove((pick * held.len() as f64) as usize % held.len());
                    let decision = limiter.execute_reservation(&r.id).unwrap();
                    if decision.allowed {
                        admissions.push((manual.now(), r.count));
                    } else if decision.reason == Some(Refusal::NotReady) {
                        held.push(r);
                    }
                }
                _ => {
                    let r = held.remove((pick * held.len() as f64) as usize % held.len());
                    let expired = r.expires_at <= manual.now();
                    prop_assert_eq!(limiter.cancel_reservation(&r.id).unwrap(), !expired);
                }
            }
        }
        for r in held {
            manual.set(r.execute_at.max(manual.now()));
            if limiter.execute_reservation(&r.id).unwrap().allowed {
                admissions.push((manual.now(), r.count));
            }
        }
        admissions.sort_unstable();
        match config.algorithm {
            Algorithm::TokenBucket => check_token_bucket(&config, &admissions)?,
            Algorithm::SlidingWindow => check_sliding_window(&config, &admissions)?,
        }
    }
}
