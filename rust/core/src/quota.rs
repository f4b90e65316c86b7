//! What a limiter allows: rate per period, burst, algorithm and shard count, validated once.

use crate::error::{Error, Result};

/// Largest shard count accepted.
pub const MAX_SHARDS: usize = 1024;
/// Largest sliding-window limit: the window keeps one timestamp per admission.
pub const MAX_WINDOW_LIMIT: u64 = 36_000_000;
/// Longest period (100 years): its nanoseconds fit a u64 with room to spare.
pub const MAX_PERIOD_SECONDS: f64 = 100.0 * 365.0 * 86_400.0;
/// Shortest period: one nanosecond, the clock's resolution.
pub const MIN_PERIOD_SECONDS: f64 = 1e-9;
/// Largest token-bucket burst: a token costs at least one tick, and a shard's credit is
/// counted in a u64 of at most 2^62 ticks.
pub const MAX_BURST: f64 = (1u64 << 62) as f64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Continuous refill (GCRA): at most `burst + rate * t / period` over any interval `t`.
    TokenBucket,
    /// Exact sliding log: at most `floor(rate)` admissions in any closed window of `period`.
    SlidingWindow,
}

impl Algorithm {
    pub const NAMES: [&'static str; 2] = ["token_bucket", "sliding_window"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "token_bucket" => Ok(Algorithm::TokenBucket),
            "sliding_window" => Ok(Algorithm::SlidingWindow),
            other => Err(Error::invalid(
                "algorithm",
                format!(
                    "must be one of {}, got {other:?}",
                    Self::NAMES.map(|n| format!("{n:?}")).join(", ")
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingWindow => "sliding_window",
        }
    }
}

/// Which requests share a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One budget for every key; keys only spread the load over shards.
    Global,
    /// One budget per key, each of the whole quota; shards are lock stripes of keys.
    Key,
}

impl Scope {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "global" => Ok(Scope::Global),
            "key" => Ok(Scope::Key),
            other => Err(Error::invalid(
                "scope",
                format!("must be \"global\" or \"key\", got {other:?}"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Key => "key",
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub rate: f64,
    pub period: f64,
    pub burst: f64,
    pub algorithm: Algorithm,
    pub shards: usize,
}

impl Quota {
    /// This quota at `rate` per `period` (this one's when `None`) with `burst` (`None`: the
    /// default for the new rate), its algorithm and shards kept: what `set_rate` asks.
    pub fn rerated(&self, rate: f64, period: Option<f64>, burst: Option<f64>) -> Result<Quota> {
        let period = period.unwrap_or(self.period);
        Quota::new(rate, period, burst, self.algorithm, Some(self.shards))
    }

    /// Validates every argument. `burst` defaults to `rate` (at least 1, so a rate below one
    /// token per period still admits single tokens); `shards` defaults to [`auto_shards`].
    pub fn new(
        rate: f64,
        period: f64,
        burst: Option<f64>,
        algorithm: Algorithm,
        shards: Option<usize>,
    ) -> Result<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(Error::invalid(
                "rate",
                format!("must be a finite number > 0, got {rate}"),
            ));
        }
        if !(MIN_PERIOD_SECONDS..=MAX_PERIOD_SECONDS).contains(&period) {
            return Err(Error::invalid(
                "period",
                format!(
                    "must be a finite number of seconds from {MIN_PERIOD_SECONDS:e} (one \
                     nanosecond) to {MAX_PERIOD_SECONDS:e} (100 years), got {period:e}"
                ),
            ));
        }
        let shards = match shards {
            Some(n) if (1..=MAX_SHARDS).contains(&n) => n,
            Some(n) => {
                return Err(Error::invalid(
                    "shards",
                    format!("must be between 1 and {MAX_SHARDS}, got {n}"),
                ))
            }
            None => auto_shards(rate * 60.0 / period, available_cpus()),
        };
        let burst = match algorithm {
            // Left out, the burst is the rate: then a rate too large for a burst is named.
            Algorithm::TokenBucket => match burst {
                None if rate <= MAX_BURST => rate.max(1.0),
                None => {
                    return Err(Error::invalid(
                        "rate",
                        format!(
                            "without burst_size the burst is the rate, which must then be <= \
                             {MAX_BURST:e}, got {rate:e}"
                        ),
                    ))
                }
                Some(burst) if (1.0..=MAX_BURST).contains(&burst) => burst,
                Some(burst) => {
                    return Err(Error::invalid(
                        "burst_size",
                        format!("must be a finite number >= 1 and <= {MAX_BURST:e}, got {burst}"),
                    ))
                }
            },
            Algorithm::SlidingWindow => {
                let limit = rate.floor();
                if !(1.0..=MAX_WINDOW_LIMIT as f64).contains(&limit) {
                    return Err(Error::invalid(
                        "rate",
                        format!(
                            "the sliding window admits floor(rate) per period, which must be \
                             between 1 and {MAX_WINDOW_LIMIT}, got {rate:e}"
                        ),
                    ));
                }
                if let Some(b) = burst.filter(|&b| b != limit) {
                    return Err(Error::invalid(
                        "burst_size",
                        format!(
                            "the sliding window has no separate burst: its capacity is \
                             floor(rate) = {limit}; leave burst_size unset (got {b})"
                        ),
                    ));
                }
                limit
            }
        };
        Ok(Self {
            rate,
            period,
            burst,
            algorithm,
            shards,
        })
    }

    /// Seconds between two tokens of the whole budget.
    pub fn emission_interval(&self) -> f64 {
        self.period / self.rate
    }
}

/// The migration guide's shard table, by requests per minute, bounded by the CPU count:
/// more shards than cores only spreads the same budget thinner.
pub fn auto_shards(per_minute: f64, cpus: usize) -> usize {
    let by_rate = if per_minute < 100.0 {
        1
    } else if per_minute < 1_000.0 {
        2
    } else if per_minute < 10_000.0 {
        4
    } else if per_minute < 100_000.0 {
        8
    } else {
        16
    };
    by_rate.min(cpus.max(1))
}

/// Lock stripes of a per-key limiter when none are asked for: enough that threads on
/// different keys seldom share one, a power of two.
pub fn key_stripes(cpus: usize) -> usize {
    (cpus.max(1) * 16).next_power_of_two().min(MAX_SHARDS)
}

/// [`key_stripes`] for this machine.
pub fn default_key_stripes() -> usize {
    key_stripes(available_cpus())
}

/// Keys a per-key limiter keeps at most unless told otherwise: 2^20, at most 64 MiB of
/// token-bucket state.
pub const DEFAULT_MAX_KEYS: usize = 1 << 20;

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_defaults_to_rate_and_at_least_one() {
        let q = Quota::new(600.0, 60.0, None, Algorithm::TokenBucket, Some(1)).unwrap();
        assert_eq!(q.burst, 600.0);
        let q = Quota::new(0.5, 60.0, None, Algorithm::TokenBucket, Some(1)).unwrap();
        assert_eq!(q.burst, 1.0);
    }

    #[test]
    fn bad_arguments_name_themselves() {
        let tb = Algorithm::TokenBucket;
        let cases = [
            (Quota::new(0.0, 60.0, None, tb, None), "rate"),
            (Quota::new(f64::NAN, 60.0, None, tb, None), "rate"),
            (Quota::new(f64::INFINITY, 60.0, None, tb, None), "rate"),
            (Quota::new(10.0, 0.0, None, tb, None), "period"),
            (Quota::new(10.0, -1.0, None, tb, None), "period"),
            (Quota::new(10.0, f64::NAN, None, tb, None), "period"),
            (Quota::new(10.0, 1.0, Some(0.5), tb, None), "burst_size"),
            (
                Quota::new(10.0, 1.0, Some(2f64.powi(63)), tb, None),
                "burst_size",
            ),
            (Quota::new(10.0, 1.0, Some(1e300), tb, None), "burst_size"),
            (Quota::new(1e300, 1e9, None, tb, None), "rate"),
            (Quota::new(10.0, 1e300, None, tb, None), "period"),
            (Quota::new(10.0, 1e-300, None, tb, None), "period"),
            (Quota::new(10.0, 1.0, None, tb, Some(0)), "shards"),
            (
                Quota::new(10.0, 1.0, None, tb, Some(MAX_SHARDS + 1)),
                "shards",
            ),
            (
                Quota::new(0.5, 1.0, None, Algorithm::SlidingWindow, None),
                "rate",
            ),
            (
                Quota::new(10.0, 1.0, Some(20.0), Algorithm::SlidingWindow, None),
                "burst_size",
            ),
        ];
        for (result, argument) in cases {
            assert_eq!(result.unwrap_err().argument(), argument);
        }
    }

    #[test]
    fn unknown_algorithm_lists_the_valid_ones() {
        let err = Algorithm::parse("leaky").unwrap_err().to_string();
        assert!(
            err.contains("\"token_bucket\", \"sliding_window\""),
            "{err}"
        );
    }

    #[test]
    fn auto_shards_follows_the_guide_table_within_cpus() {
        assert_eq!(auto_shards(60.0, 8), 1);
        assert_eq!(auto_shards(600.0, 8), 2);
        assert_eq!(auto_shards(6_000.0, 8), 4);
        assert_eq!(auto_shards(60_000.0, 8), 8);
        assert_eq!(auto_shards(6_000_000.0, 32), 16);
        assert_eq!(auto_shards(6_000_000.0, 2), 2);
    }
}
