//! A quota turned into the integer sizes the budgets work in.

use crate::clock::{Nanos, NANOS_PER_SEC};
use crate::error::{Error, Result};
use crate::quota::{Algorithm, Quota};

/// A shard's credit fits comfortably in a u64 of ticks.
const MAX_CAPACITY_TICKS: u64 = 1 << 62;
/// Ticks per nanosecond at most: u64 ticks then last 18 years of limiter uptime.
const MAX_TICKS_PER_NANO: u64 = 32;
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
        self.read(now).now
    }

    /// `now` in ticks, rounded both ways (the same on a whole scale).
    #[inline(always)]
    pub(crate) fn read(self, now: Nanos) -> Ticks {
        let product = now as u128 * self.fraction as u128;
        let ticks = now
            .wrapping_mul(self.whole)
            .wrapping_add((product >> 64) as u64);
        Ticks {
            now: ticks,
            start: ticks.wrapping_add(u64::from(product as u64 != 0)),
        }
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

    /// Whole ticks per nanosecond, if the scale is a whole number.
    fn whole(self) -> Option<u64> {
        (self.fraction == 0).then_some(self.whole)
    }
}

/// `x` (finite, > 0) as `m * 2^e` with `m` odd.
fn dyadic(x: f64) -> (u128, i32) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1 << 52) - 1);
    let (m, e) = if biased == 0 {
        (mantissa, -1074)
    } else {
        (mantissa | 1 << 52, biased - 1075)
    };
    let zeros = m.trailing_zeros();
    (u128::from(m >> zeros), e + zeros as i32)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The time a token costs in one shard, `shards * period * 1e9 / rate` nanoseconds, as the
/// exact fraction `(p, q)` in lowest terms of the floats given, when both fit a u128.
fn token_nanos_ratio(quota: &Quota) -> Option<(u128, u128)> {
    let (period, period_exp) = dyadic(quota.period);
    let (rate, rate_exp) = dyadic(quota.rate);
    // At most 2^10 shards * 2^30 * 2^53: room to spare.
    let (mut p, mut q) = (quota.shards as u128 * 1_000_000_000 * period, rate);
    let shift = period_exp - rate_exp;
    let widened = if shift >= 0 { &mut p } else { &mut q };
    if shift.unsigned_abs() > widened.leading_zeros() {
        return None;
    }
    *widened <<= shift.unsigned_abs();
    let g = gcd(p, q);
    Some((p / g, q / g))
}

/// A reading of the clock in ticks. `now` is rounded down, so credit never runs ahead of
/// time; `start` is rounded up, and a bucket that was full restarts its TAT from there, so
/// that the part of a tick between the two is never credited: no interval, however short,
/// then admits more than the burst plus its refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticks {
    pub(crate) now: u64,
    pub(crate) start: u64,
}

#[cfg(test)]
impl Ticks {
    /// A reading a whole number of ticks from the origin (for tests).
    pub(crate) fn at(ticks: u64) -> Self {
        Self {
            now: ticks,
            start: ticks,
        }
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

    /// Preferably a whole number of ticks per nanosecond that prices a token in whole
    /// ticks (see [`Self::exact_scale`]). Otherwise a power of two (exact: the token's cost is
    /// rounded up by less than 2^-20), the finest up to 32 ticks per nanosecond at which the
    /// burst fits. When even that would price a token under 2^20 ticks (over ~30,000 tokens
    /// per second per shard), a token costs as many ticks as fit its time and the scale
    /// makes that time exact.
    fn scale_for(quota: &Quota) -> Result<Scale> {
        if let Some(scale) = Self::exact_scale(quota) {
            return Ok(scale);
        }
        let token_nanos = quota.shards as f64 * quota.period * NANOS_PER_SEC / quota.rate;
        let max_unit = (MAX_CAPACITY_TICKS - 1) as f64 / quota.burst.ceil();
        let exponent = (max_unit / token_nanos)
            .log2()
            .floor()
            .min((MAX_TICKS_PER_NANO as f64).log2());
        if exponent >= -64.0 {
            let scale = Scale::power_of_two(exponent as i32);
            if (token_nanos * scale.ticks_per_nano()).ceil() >= f64::from(1u32 << MIN_SCALE_BITS) {
                return Ok(scale);
            }
        }
        let unit = (token_nanos * MAX_TICKS_PER_NANO as f64)
            .min(max_unit)
            .floor();
        if unit < 1.0 {
            let max = quota.shards as f64 * MAX_TICKS_PER_NANO as f64 * NANOS_PER_SEC;
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

    /// A whole number of ticks per nanosecond, a multiple of the denominator of a token's
    /// time in nanoseconds (`p / q`), so that a token costs whole ticks (`p * s / q`) and so
    /// does every nanosecond: no rounding anywhere, `k` tokens' time refills exactly `k`
    /// tokens. The most up to 32 at which the burst fits; `None` when the denominator is
    /// over 32 or the burst is too large for even `q` ticks per nanosecond.
    fn exact_scale(quota: &Quota) -> Option<Scale> {
        let (p, q) = token_nanos_ratio(quota)?;
        // The burst is finite and at least 1; a float this large fits no scale anyway.
        let burst = quota.burst.ceil().min(MAX_CAPACITY_TICKS as f64) as u128;
        let max_unit = (MAX_CAPACITY_TICKS - 1) as u128 / burst;
        let multiple = (u128::from(MAX_TICKS_PER_NANO) / q).min(max_unit / p);
        (multiple > 0).then(|| Scale::per_nano((multiple * q) as u64))
    }

    /// Ticks a token costs on `scale`, rounded up, which keeps the rate at or under the
    /// quota: each shard refills one tick per tick, so a token costs N * period / rate of
    /// time there. Integer arithmetic on a whole scale (exact whenever the scale prices
    /// the token exactly), floats on a fractional one.
    fn token_ticks(quota: &Quota, scale: Scale) -> u128 {
        let exact = scale.whole().zip(token_nanos_ratio(quota));
        let unit = exact.and_then(|(s, (p, q))| Some(p.checked_mul(s.into())?.div_ceil(q)));
        let unit = unit.unwrap_or_else(|| {
            let nanos = quota.shards as f64 * quota.period * NANOS_PER_SEC / quota.rate;
            (nanos * scale.ticks_per_nano()).ceil() as u128
        });
        unit.max(1)
    }

    /// The sizes of `quota` on an existing clock scale (a re-rated limiter keeps its own).
    pub(crate) fn with_scale(quota: &Quota, scale: Scale) -> Result<Self> {
        let n = quota.shards as f64;
        let window = (quota.period * NANOS_PER_SEC).ceil();
        match quota.algorithm {
            Algorithm::TokenBucket => {
                let unit = Self::token_ticks(quota, scale);
                // Whole tokens in integers, so that a burst of B is exactly B tokens however
                // large the product; only a fractional part goes through floats.
                let whole = (quota.burst.trunc() as u128).saturating_mul(unit);
                let fraction = (quota.burst.fract() * unit as f64).floor() as u128;
                let capacity = whole.saturating_add(fraction);
                let limit = MAX_CAPACITY_TICKS as f64 / scale.ticks_per_nano() / NANOS_PER_SEC;
                if unit >= MAX_CAPACITY_TICKS as u128 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rate: f64, period: f64, shards: usize) -> Params {
        let quota = Quota::new(rate, period, None, Algorithm::TokenBucket, Some(shards)).unwrap();
        Params::new(&quota).unwrap()
    }

    #[test]
    fn a_round_rate_gets_a_whole_scale_that_prices_a_token_exactly() {
        // 1e9 / 3 ns a token: 30 ticks a nanosecond make it 1e10 ticks.
        let p = params(3.0, 1.0, 1);
        assert_eq!(
            (p.scale, p.unit, p.capacity),
            (Scale::per_nano(30), 10_000_000_000, 3 * 10_000_000_000)
        );
        // 7 per minute at 4 shards: 4 * 60e9 / 7 ns, 28 ticks a nanosecond.
        let p = params(7.0, 60.0, 4);
        assert_eq!((p.scale, p.unit), (Scale::per_nano(28), 960_000_000_000));
        // 1e9 per second at 16 shards: 16 ns, 32 ticks a nanosecond.
        let p = params(1e9, 1.0, 16);
        assert_eq!((p.scale, p.unit), (Scale::per_nano(32), 512));
    }

    #[test]
    fn other_rates_keep_a_power_of_two_or_a_fractional_scale() {
        // 1e9 / 37 ns: no whole scale up to 32 prices it; rounded up by under 2^-20.
        let p = params(37.0, 1.0, 1);
        assert_eq!((p.scale, p.unit), (Scale::per_nano(32), 864_864_865));
        assert!(params(999_999_937.0, 1.0, 1).scale.whole().is_none());
    }

    #[test]
    fn a_reading_rounds_down_for_credit_and_up_for_a_restart() {
        let whole = Scale::per_nano(30).read(7);
        assert_eq!((whole.now, whole.start), (210, 210));
        let half = Scale::power_of_two(-1);
        assert_eq!(half.read(7), Ticks { now: 3, start: 4 });
        assert_eq!(half.read(8), Ticks { now: 4, start: 4 });
    }
}
