//! A quota turned into the integer sizes the budgets work in.

use crate::clock::{Nanos, NANOS_PER_SEC};
use crate::error::{Error, Result};
use crate::quota::{Algorithm, Quota};

/// A shard's credit fits comfortably in a u64 of ticks.
const MAX_CAPACITY_TICKS: u64 = 1 << 62;
/// Ticks per nanosecond at most: u64 ticks then last 18 years of limiter uptime.
const MAX_TICKS_PER_NANO: f64 = 32.0;
/// The token bucket's clock scale carries at least this many significant bits, which bounds
/// the rounding of the rate to one part in a million.
const MIN_SCALE_BITS: u32 = 20;

/// A token bucket's clock: `whole + fraction / 2^64` ticks of credit per nanosecond, fixed
/// for the limiter's life. Each shard refills one tick per tick, so a rate is exact to the
/// scale's precision (at least 2^-20, rounded down: never above the rate), whatever a token
/// costs. Reading it is two multiplies with no shift to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scale {
    whole: u64,
    fraction: u64,
}

impl Scale {
    /// Exactly `ticks` ticks per nanosecond.
    pub(crate) const fn per_nano(ticks: u64) -> Self {
        Self {
            whole: ticks,
            fraction: 0,
        }
    }

    /// Exactly `2^exponent` ticks per nanosecond (`-64 <= exponent <= 63`).
    fn power_of_two(exponent: i32) -> Self {
        if exponent >= 0 {
            Self::per_nano(1 << exponent)
        } else {
            Self {
                whole: 0,
                fraction: 1 << (64 + exponent),
            }
        }
    }

    /// `ticks_per_nano` rounded down to 64 fractional bits; `None` when fewer than
    /// `MIN_SCALE_BITS` significant bits would be left.
    fn rounded_down(ticks_per_nano: f64) -> Option<Self> {
        // Four ulps below, so that the float rounding cannot round up.
        let k = ticks_per_nano * (1.0 - 4.0 * f64::EPSILON);
        let whole = k.floor();
        let fraction = ((k - whole) * 2f64.powi(64)).floor();
        let significant = whole * 2f64.powi(64) + fraction;
        (significant >= f64::from(1u32 << MIN_SCALE_BITS)).then_some(Self {
            whole: whole as u64,
            fraction: fraction as u64,
        })
    }

    /// Ticks at `now` (rounded down: time is never ahead).
    #[inline(always)]
    pub(crate) fn ticks(self, now: Nanos) -> u64 {
        let fraction = ((now as u128 * self.fraction as u128) >> 64) as u64;
        now.wrapping_mul(self.whole).wrapping_add(fraction)
    }

    /// Nanoseconds until `ticks` ticks have passed (rounded up: never early).
    pub(crate) fn nanos(self, ticks: u64) -> Nanos {
        let per_nano = (self.whole as u128) << 64 | self.fraction as u128;
        let nanos = ((ticks as u128) << 64).div_ceil(per_nano);
        nanos.min(u64::MAX as u128) as Nanos
    }

    fn ticks_per_nano(self) -> f64 {
        self.whole as f64 + self.fraction as f64 / 2f64.powi(64)
    }
}

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
    /// The token bucket's clock (one tick per nanosecond for the sliding window).
    pub(crate) scale: Scale,
}

impl Params {
    /// The sizes of a limiter's first quota; the token bucket's clock scale is chosen here.
    pub(crate) fn new(quota: &Quota) -> Result<Self> {
        let scale = match quota.algorithm {
            Algorithm::TokenBucket => Self::scale_for(quota)?,
            Algorithm::SlidingWindow => Scale::per_nano(1),
        };
        Self::with_scale(quota, scale)
    }

    /// Preferably a power of two (exact: the token's cost is rounded up by less than 2^-20);
    /// the finest up to 32 ticks per nanosecond at which the burst fits. When even that
    /// would price a token under 2^20 ticks (over ~30,000 tokens per second per shard), a
    /// token costs as many ticks as fit its time and the scale makes that time exact.
    fn scale_for(quota: &Quota) -> Result<Scale> {
        let token_nanos = quota.shards as f64 * quota.period * NANOS_PER_SEC / quota.rate;
        let max_unit = (MAX_CAPACITY_TICKS - 1) as f64 / quota.burst.ceil();
        let exponent = (max_unit / token_nanos)
            .log2()
            .floor()
            .min(MAX_TICKS_PER_NANO.log2());
        if exponent >= -64.0 {
            let scale = Scale::power_of_two(exponent as i32);
            if (token_nanos * scale.ticks_per_nano()).ceil() >= f64::from(1u32 << MIN_SCALE_BITS) {
                return Ok(scale);
            }
        }
        let unit = (token_nanos * MAX_TICKS_PER_NANO).min(max_unit).floor();
        if unit < 1.0 {
            let max = quota.shards as f64 * MAX_TICKS_PER_NANO * NANOS_PER_SEC;
            return Err(Error::invalid(
                "rate",
                format!(
                    "at most {max:e} tokens per second with shards={}, got {:e}",
                    quota.shards,
                    quota.rate / quota.period
                ),
            ));
        }
        let fine = token_nanos
            .is_finite()
            .then(|| Scale::rounded_down(unit / token_nanos));
        fine.flatten().ok_or_else(|| {
            let min_ticks_per_nano = 2f64.powi(MIN_SCALE_BITS as i32 - 64);
            let min = quota.shards as f64 * NANOS_PER_SEC * min_ticks_per_nano / max_unit;
            Error::invalid(
                "rate",
                format!(
                    "at least {min:e} tokens per second with burst_size={} and shards={} \
                     (to stay exact), got {:e}",
                    quota.burst,
                    quota.shards,
                    quota.rate / quota.period
                ),
            )
        })
    }

    /// The sizes of `quota` on an existing clock scale (a re-rated limiter keeps its own).
    pub(crate) fn with_scale(quota: &Quota, scale: Scale) -> Result<Self> {
        let n = quota.shards as f64;
        let window = (quota.period * NANOS_PER_SEC).ceil();
        match quota.algorithm {
            Algorithm::TokenBucket => {
                // Each shard refills one tick per tick, so a token costs N * period / rate
                // of time there; rounding its ticks up keeps the rate at or under the quota.
                let unit = (n * quota.period * NANOS_PER_SEC * scale.ticks_per_nano() / quota.rate)
                    .ceil()
                    .max(1.0);
                // Whole tokens in integers, so that a burst of B is exactly B tokens however
                // large the product; only a fractional part goes through floats.
                let whole = (quota.burst.trunc() as u128) * unit as u128;
                let capacity = whole + (quota.burst.fract() * unit).floor() as u128;
                let limit = MAX_CAPACITY_TICKS as f64 / scale.ticks_per_nano() / NANOS_PER_SEC;
                if unit >= MAX_CAPACITY_TICKS as f64 {
                    // One token's time is too long: the rate per second is too low.
                    return Err(Error::invalid(
                        "rate",
                        format!(
                            "at least {:e} tokens per second with shards={} on this limiter, \
                             got {:e}",
                            n / limit,
                            quota.shards,
                            quota.rate / quota.period
                        ),
                    ));
                }
                if capacity >= MAX_CAPACITY_TICKS as u128 {
                    return Err(Error::invalid(
                        "burst_size",
                        format!(
                            "burst_size * shards * period / rate must be under {:e} s on \
                             this limiter, got {:e} s",
                            limit,
                            quota.burst * n * quota.period / quota.rate
                        ),
                    ));
                }
                Ok(Self {
                    shards: quota.shards,
                    unit: unit as u64,
                    capacity: capacity as u64,
                    window: window as Nanos,
                    scale,
                })
            }
            Algorithm::SlidingWindow => Ok(Self {
                shards: quota.shards,
                unit: 1,
                capacity: quota.burst as u64,
                window: window as Nanos,
                scale,
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
