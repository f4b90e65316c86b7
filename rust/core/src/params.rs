//! A quota turned into the integer sizes the budgets work in.

use crate::clock::{Nanos, NANOS_PER_SEC};
use crate::error::{Error, Result};
use crate::gcra;
use crate::quota::{Algorithm, Quota};

/// A token must cost at least this many ticks of one shard's credit, which bounds the
/// rounding of the rate to 0.01 %.
const MIN_TOKEN_COST: u64 = 10_000;
/// A shard's credit fits comfortably in a u64 of ticks (4.5 years of burst).
const MAX_CAPACITY_TICKS: u64 = 1 << 62;

/// Derived, checked sizes of a quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Params {
    pub(crate) shards: usize,
    /// Units one token costs (ticks of one shard's credit for the token bucket, 1 for the
    /// sliding window).
    pub(crate) unit: u64,
    /// Units the whole budget holds.
    pub(crate) capacity: u64,
    pub(crate) window: Nanos,
}

impl Params {
    pub(crate) fn new(quota: &Quota) -> Result<Self> {
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
                    shards: quota.shards,
                    unit,
                    capacity: capacity as u64,
                    window: window as Nanos,
                })
            }
            Algorithm::SlidingWindow => Ok(Self {
                shards: quota.shards,
                unit: 1,
                capacity: quota.burst as u64,
                window: window as Nanos,
            }),
        }
    }

    /// `count` tokens in units, if the burst can ever hold them.
    pub(crate) fn units(&self, count: u64) -> Option<u64> {
        count.checked_mul(self.unit).filter(|&u| u <= self.capacity)
    }
}

/// Shard `i`'s share of `total`: equal shares, the remainder to the first shards, so that
/// the shares add up to `total` exactly (and a smaller total never gives a larger share).
pub(crate) fn share(total: u64, shards: usize, i: usize) -> u64 {
    let n = shards as u64;
    total / n + u64::from((i as u64) < total % n)
}
