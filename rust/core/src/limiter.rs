//! The limiter: a validated quota, a clock, and the sharded budget that enforces it.

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::clock::{Clock, Nanos, NANOS_PER_SEC};
use crate::error::{Error, Result};
use crate::gcra::{self, GcraShard};
use crate::quota::{Algorithm, Quota};
use crate::shard::{Outcome, Shard, ShardSet};
use crate::sliding_window::WindowShard;

/// Keys longer than this (in bytes; in characters from Python) are refused: a key is an
/// identifier, and an unbounded one is almost always a bug.
pub const MAX_KEY_LEN: usize = 1024;

/// A token must cost at least this many ticks of one shard's credit, which bounds the
/// rounding of the rate to 0.01 %.
const MIN_TOKEN_COST: u64 = 10_000;
/// A shard's credit fits comfortably in a u64 of ticks (4.5 years of burst).
const MAX_CAPACITY_TICKS: u64 = 1 << 62;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not enough tokens now; `retry_after` says when there will be.
    RateLimited,
    /// More tokens than the burst: it can never succeed.
    ExceedsCapacity,
    /// Admission would need a longer wait than the caller allows.
    MaxWaitExceeded,
}

impl Refusal {
    /// The stable short code of SPEC §2.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::ExceedsCapacity => "exceeds_capacity",
            Refusal::MaxWaitExceeded => "max_wait_exceeded",
        }
    }
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Option<Refusal>,
    /// The shard that served (or would have served) the request.
    pub shard: usize,
    /// Tokens left in the whole budget after this decision.
    pub remaining: f64,
    /// Seconds until the request could be admitted; `None` when admitted or never.
    pub retry_after: Option<f64>,
}

/// Checks a wait bound in seconds: `None` or infinity waits as long as it takes.
pub fn validate_max_wait(max_wait: Option<f64>) -> Result<f64> {
    match max_wait {
        None => Ok(f64::INFINITY),
        Some(wait) if wait >= 0.0 => Ok(wait),
        Some(wait) => Err(Error::invalid(
            "max_wait",
            format!("must be None or a number of seconds >= 0, got {wait}"),
        )),
    }
}

/// Requests served per shard and how far the busiest shard is above the mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    pub distribution: Vec<u64>,
    /// `(max - mean) / mean`; 0 when nothing was served yet.
    pub imbalance_ratio: f64,
    pub most_loaded: usize,
    pub least_loaded: usize,
}

impl Balance {
    /// Shards are called balanced while the busiest is within this fraction of the mean.
    pub const THRESHOLD: f64 = 0.3;

    fn of(distribution: Vec<u64>) -> Self {
        let total: u64 = distribution.iter().sum();
        let mean = total as f64 / distribution.len() as f64;
        let (mut most, mut least) = (0, 0);
        for (i, &served) in distribution.iter().enumerate() {
            if served > distribution[most] {
                most = i;
            }
            if served < distribution[least] {
                least = i;
            }
        }
        let imbalance_ratio = if total == 0 {
            0.0
        } else {
            (distribution[most] as f64 - mean) / mean
        };
        Self {
            distribution,
            imbalance_ratio,
            most_loaded: most,
            least_loaded: least,
        }
    }

    pub fn balanced(&self) -> bool {
        self.imbalance_ratio <= Self::THRESHOLD
    }
}

/// A sharded rate limiter over one shared budget (SPEC `scope="global"`).
pub struct RateLimiter {
    clock: Clock,
    engine: ArcSwap<Engine>,
    /// Serialises replacements (`set_quota`, `reset`).
    replacing: Mutex<()>,
    hasher: ahash::RandomState,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", &self.quota())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(quota: Quota, clock: Clock) -> Result<Self> {
        let engine = Engine::new(quota, Carry::Full, clock.now())?;
        Ok(Self {
            clock,
            engine: ArcSwap::from_pointee(engine),
            replacing: Mutex::new(()),
            hasher: ahash::RandomState::new(),
        })
    }

    pub fn quota(&self) -> Quota {
        self.engine.load().quota
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Hashes a key as [`RateLimiter::try_acquire`] does.
    pub fn hash_key(&self, key: &str) -> Result<u64> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::invalid(
                "key",
                format!("must be at most {MAX_KEY_LEN} bytes, got {}", key.len()),
            ));
        }
        Ok(self.hasher.hash_one(key))
    }

    /// Takes `count` tokens for `key` now, or refuses without waiting.
    pub fn try_acquire(&self, key: &str, count: u64) -> Result<Decision> {
        self.try_acquire_hashed(self.hash_key(key)?, count)
    }

    /// [`RateLimiter::try_acquire`] for a key already hashed (the binding uses Python's
    /// cached string hash). Only shard choice depends on the hash.
    #[inline]
    pub fn try_acquire_hashed(&self, hash: u64, count: u64) -> Result<Decision> {
        if count == 0 {
            return Err(Error::invalid_count(&count));
        }
        loop {
            let engine = self.engine.load();
            let decision = engine.decide(&self.clock, self.clock.now(), hash, count);
            // A replacement retires the engine before it reads its state: a take that does
            // not see `retired` is in that snapshot; one that does decides again on the new
            // engine (charged twice at worst, never lost).
            if !engine.retired.load(Ordering::SeqCst) {
                return Ok(decision);
            }
            std::thread::yield_now();
        }
    }

    /// Like [`RateLimiter::try_acquire_hashed`], for a caller willing to wait up to
    /// `max_wait` seconds: a refusal whose wait is longer says
    /// [`Refusal::MaxWaitExceeded`] (with the wait it would have needed) instead of
    /// [`Refusal::RateLimited`], which then means "wait `retry_after`, then ask again".
    pub fn try_acquire_within(&self, hash: u64, count: u64, max_wait: f64) -> Result<Decision> {
        let mut decision = self.try_acquire_hashed(hash, count)?;
        if decision.retry_after.is_some_and(|wait| wait > max_wait) {
            decision.reason = Some(Refusal::MaxWaitExceeded);
        }
        Ok(decision)
    }

    /// Waits on the limiter's clock until admitted or refused for good (count above the
    /// burst, or a wait beyond `max_wait` seconds), sleeping at most `slice` nanoseconds at a
    /// time and asking `keep_waiting` between slices; `None` when it said stop. Returns the
    /// decision and the seconds waited.
    pub fn acquire_blocking(
        &self,
        hash: u64,
        count: u64,
        max_wait: f64,
        slice: Nanos,
        mut keep_waiting: impl FnMut() -> bool,
    ) -> Result<Option<(Decision, f64)>> {
        let start = self.clock.now();
        loop {
            let waited = (self.clock.now() - start) as f64 / NANOS_PER_SEC;
            let decision = self.try_acquire_within(hash, count, max_wait - waited)?;
            let Some(wait) = decision
                .retry_after
                .filter(|_| decision.reason == Some(Refusal::RateLimited))
            else {
                return Ok(Some((decision, waited)));
            };
            let mut remaining = (wait * NANOS_PER_SEC).ceil() as Nanos;
            while remaining > 0 {
                let nap = remaining.min(slice);
                self.clock.sleep(nap);
                remaining -= nap;
                if !keep_waiting() {
                    return Ok(None);
                }
            }
        }
    }

    /// Tokens available in the whole budget now, without taking any.
    pub fn peek(&self) -> f64 {
        self.engine.load().remaining(self.clock.now())
    }

    /// Tokens available in each shard now.
    pub fn shard_tokens(&self) -> Vec<f64> {
        self.engine.load().shard_tokens(self.clock.now())
    }

    /// Requests admitted by each shard since the limiter was made, reset or re-rated.
    pub fn served(&self) -> Vec<u64> {
        self.engine.load().budget.served()
    }

    /// How evenly the shards have served requests (see [`Balance`]).
    pub fn balance(&self) -> Balance {
        Balance::of(self.served())
    }

    /// Changes the quota at run time. The tokens available now carry over (capped at the
    /// new burst), and so does the sliding window's log; a new shard count is taken too.
    pub fn set_quota(&self, quota: Quota) -> Result<()> {
        let params = Params::new(&quota)?;
        self.replace(|old, now| Engine::build(quota, params, old.carry(now), now))
    }

    /// Refills the budget and forgets the counters.
    pub fn reset(&self) {
        self.replace(|old, now| {
            let quota = old.quota;
            let params = Params::new(&quota).expect("the current quota is valid");
            Engine::build(quota, params, Carry::Full, now)
        })
        .expect("a reset cannot fail");
    }

    fn replace(&self, make: impl FnOnce(&Engine, Nanos) -> Engine) -> Result<()> {
        let _one_at_a_time = self.replacing.lock();
        let old = self.engine.load_full();
        old.retired.store(true, Ordering::SeqCst);
        let new = make(&old, self.clock.now());
        self.engine.store(Arc::new(new));
        Ok(())
    }
}

/// A quota and the shard set that enforces it.
struct Engine {
    quota: Quota,
    budget: Budget,
    /// Units of budget per token (ticks for the token bucket, 1 for the sliding window).
    unit: u64,
    retired: AtomicBool,
}

enum Budget {
    TokenBucket(ShardSet<GcraShard>),
    SlidingWindow(ShardSet<WindowShard>),
}

/// What a new engine inherits from the one it replaces.
enum Carry {
    Full,
    /// Tokens available (token bucket).
    Tokens(f64),
    /// Admissions still in the window, oldest first (sliding window).
    Log(Vec<Nanos>),
}

/// Derived, checked sizes of a quota's shards.
#[derive(Clone, Copy)]
struct Params {
    /// Units one token costs in one shard.
    unit: u64,
    /// Units the whole budget holds.
    capacity: u64,
    window: Nanos,
}

impl Params {
    fn new(quota: &Quota) -> Result<Self> {
        let n = quota.shards as f64;
        let window = (quota.period * NANOS_PER_SEC).ceil();
        match quota.algorithm {
            Algorithm::TokenBucket => {
                // Each shard refills one tick per tick, so a token costs N * period / rate
                // there; rounding up keeps the rate at or under the quota.
                let unit = (n * window * gcra::TICKS_PER_NANO as f64 / quota.rate).ceil();
                if unit < MIN_TOKEN_COST as f64 {
                    let max =
                        n * gcra::TICKS_PER_NANO as f64 * NANOS_PER_SEC / MIN_TOKEN_COST as f64;
                    return Err(Error::invalid(
                        "rate",
                        format!(
                            "at most {max} tokens per second with shards={} (clock \
                             resolution), got {}",
                            quota.shards,
                            quota.rate / quota.period
                        ),
                    ));
                }
                let unit = unit as u64;
                // Whole tokens in integers, so that a burst of B is exactly B tokens however
                // large the product; only a fractional part goes through floats.
                let whole = (quota.burst.trunc() as u128) * unit as u128;
                let capacity = whole + (quota.burst.fract() * unit as f64).floor() as u128;
                if capacity >= MAX_CAPACITY_TICKS as u128 {
                    return Err(Error::invalid(
                        "burst_size",
                        format!(
                            "burst_size * shards * period / rate must be under four years, \
                             got {} s",
                            quota.burst * n * quota.period / quota.rate
                        ),
                    ));
                }
                Ok(Self {
                    unit,
                    capacity: capacity as u64,
                    window: window as Nanos,
                })
            }
            Algorithm::SlidingWindow => Ok(Self {
                unit: 1,
                capacity: quota.burst as u64,
                window: window as Nanos,
            }),
        }
    }

    /// Shard `i`'s share of the capacity: equal shares, the remainder to the first shards,
    /// so that the shares add up to the whole budget exactly.
    fn share(&self, shards: usize, i: usize) -> u64 {
        let n = shards as u64;
        self.capacity / n + u64::from((i as u64) < self.capacity % n)
    }
}

impl Engine {
    fn new(quota: Quota, carry: Carry, now: Nanos) -> Result<Self> {
        Ok(Self::build(quota, Params::new(&quota)?, carry, now))
    }

    fn build(quota: Quota, params: Params, carry: Carry, now: Nanos) -> Self {
        let n = quota.shards;
        let budget = match quota.algorithm {
            Algorithm::TokenBucket => {
                let full = quota.burst;
                let fill = match carry {
                    Carry::Tokens(tokens) => (tokens / full).clamp(0.0, 1.0),
                    _ => 1.0,
                };
                Budget::TokenBucket(ShardSet::new((0..n).map(|i| {
                    let capacity = params.share(n, i);
                    let missing = if fill >= 1.0 {
                        0
                    } else {
                        capacity.saturating_sub((capacity as f64 * fill) as u64)
                    };
                    // TAT = now + missing credit: the shard is `fill` full at `now`.
                    GcraShard::new(capacity, gcra::ticks(now) + missing)
                })))
            }
            Algorithm::SlidingWindow => {
                let mut logs: Vec<VecDeque<Nanos>> = vec![VecDeque::new(); n];
                if let Carry::Log(log) = carry {
                    let keep = log.len().min(params.capacity as usize);
                    // Newest first into whichever shard has room, round robin; each shard's
                    // log stays sorted because it receives a subsequence.
                    let mut shard = 0;
                    for &stamp in log[log.len() - keep..].iter().rev() {
                        while logs[shard].len() as u64 >= params.share(n, shard) {
                            shard = (shard + 1) % n;
                        }
                        logs[shard].push_front(stamp);
                        shard = (shard + 1) % n;
                    }
                }
                Budget::SlidingWindow(ShardSet::new(
                    logs.into_iter()
                        .enumerate()
                        .map(|(i, log)| WindowShard::new(params.share(n, i), params.window, log)),
                ))
            }
        };
        Self {
            quota,
            budget,
            unit: params.unit,
            retired: AtomicBool::new(false),
        }
    }

    #[inline]
    fn decide(&self, clock: &Clock, now: Nanos, hash: u64, count: u64) -> Decision {
        match &self.budget {
            Budget::TokenBucket(set) => self.decide_on(set, clock, now, hash, count),
            Budget::SlidingWindow(set) => self.decide_on(set, clock, now, hash, count),
        }
    }

    #[inline]
    fn decide_on<S: Shard>(
        &self,
        set: &ShardSet<S>,
        clock: &Clock,
        now: Nanos,
        hash: u64,
        count: u64,
    ) -> Decision {
        let units = match count.checked_mul(self.unit) {
            Some(units) if units <= set.total_capacity() => units,
            _ => {
                return Decision {
                    allowed: false,
                    reason: Some(Refusal::ExceedsCapacity),
                    shard: set.candidates(hash).0,
                    remaining: self.tokens(set.available(now)),
                    retry_after: None,
                }
            }
        };
        let outcome = set.acquire(clock, now, hash, units);
        let remaining = self.tokens(set.available(now));
        match outcome {
            Outcome::Admitted { shard } => Decision {
                allowed: true,
                reason: None,
                shard,
                remaining,
                retry_after: None,
            },
            Outcome::Refused { shard, wait } => Decision {
                allowed: false,
                reason: Some(Refusal::RateLimited),
                shard,
                remaining,
                retry_after: Some(wait as f64 / NANOS_PER_SEC),
            },
        }
    }

    fn tokens(&self, units: u64) -> f64 {
        units as f64 / self.unit as f64
    }

    fn remaining(&self, now: Nanos) -> f64 {
        match &self.budget {
            Budget::TokenBucket(set) => self.tokens(set.available(now)),
            Budget::SlidingWindow(set) => self.tokens(set.available(now)),
        }
    }

    fn shard_tokens(&self, now: Nanos) -> Vec<f64> {
        match &self.budget {
            Budget::TokenBucket(set) => self.per_shard(set, now),
            Budget::SlidingWindow(set) => self.per_shard(set, now),
        }
    }

    fn per_shard<S: Shard>(&self, set: &ShardSet<S>, now: Nanos) -> Vec<f64> {
        (0..set.len())
            .map(|i| self.tokens(set.shard(i).available(now)))
            .collect()
    }

    fn carry(&self, now: Nanos) -> Carry {
        match &self.budget {
            Budget::TokenBucket(set) => Carry::Tokens(self.tokens(set.available(now))),
            Budget::SlidingWindow(set) => {
                let mut log: Vec<Nanos> = (0..set.len())
                    .flat_map(|i| set.shard(i).live(now))
                    .collect();
                log.sort_unstable();
                Carry::Log(log)
            }
        }
    }
}

impl Budget {
    fn served(&self) -> Vec<u64> {
        match self {
            Budget::TokenBucket(set) => set.served(),
            Budget::SlidingWindow(set) => set.served(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_is_defined_before_any_traffic() {
        let balance = Balance::of(vec![0, 0, 0, 0]);
        assert_eq!(balance.imbalance_ratio, 0.0);
        assert!(balance.balanced());
        assert_eq!((balance.most_loaded, balance.least_loaded), (0, 0));
    }

    #[test]
    fn balance_measures_the_busiest_shard_against_the_mean() {
        let balance = Balance::of(vec![10, 30, 20, 20]);
        assert_eq!(balance.imbalance_ratio, 0.5);
        assert!(!balance.balanced());
        assert_eq!((balance.most_loaded, balance.least_loaded), (1, 0));
    }

    #[test]
    fn max_wait_must_be_a_non_negative_number() {
        assert_eq!(validate_max_wait(None), Ok(f64::INFINITY));
        assert_eq!(validate_max_wait(Some(0.0)), Ok(0.0));
        for bad in [-1.0, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(
                validate_max_wait(Some(bad)).unwrap_err().argument(),
                "max_wait"
            );
        }
    }
}
