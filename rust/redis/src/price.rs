//! A quota in the scripts' integer units: for the token bucket, a token costs `token`
//! units, a microsecond refills `tick` units and the bucket holds `capacity` units
//! (`scripts/bucket.lua`); for the sliding window, `limit` tokens in `window` microseconds
//! (`scripts/window.lua`).

use ratelimit_core::{Algorithm, Error, Quota, Result};

/// The most tokens a sliding window on Redis counts: it keeps one entry per token.
pub const MAX_REDIS_WINDOW_LIMIT: u64 = 100_000;

/// What a script is told about the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Bucket(Price),
    Window { limit: u64, window: u64 },
}

impl Rule {
    pub fn of(quota: &Quota) -> Result<Self> {
        match quota.algorithm {
            Algorithm::TokenBucket => Price::of(quota).map(Rule::Bucket),
            Algorithm::SlidingWindow => {
                let limit = quota.burst as u64;
                if limit > MAX_REDIS_WINDOW_LIMIT {
                    return Err(Error::InvalidArgument {
                        argument: "rate",
                        message: format!(
                            "a sliding window on Redis keeps one entry per token in the window: \
                             at most {MAX_REDIS_WINDOW_LIMIT}, got {limit}"
                        ),
                    });
                }
                // Rounded up to a whole microsecond: never a shorter window than asked.
                let window = (quota.period * 1e6).ceil().max(1.0) as u64;
                Ok(Rule::Window { limit, window })
            }
        }
    }

    /// The script's ARGV[2..=4].
    pub fn params(&self) -> [u64; 3] {
        match *self {
            Rule::Bucket(price) => [price.token, price.tick, price.capacity],
            Rule::Window { limit, window } => [limit, window, 0],
        }
    }

    /// Units per token in the scripts' answers.
    pub fn unit(&self) -> u64 {
        match *self {
            Rule::Bucket(price) => price.token,
            Rule::Window { .. } => 1,
        }
    }

    /// Microseconds of back-off the script can count exactly.
    pub fn max_micros(&self) -> u64 {
        match *self {
            Rule::Bucket(price) => price.max_micros(),
            Rule::Window { window, .. } => (LIMIT as u64) - window,
        }
    }
}

/// Every quantity the script handles stays below this, so that Lua's doubles hold it exactly.
const LIMIT: u128 = 1 << 50;
/// The most units one microsecond refills.
const MAX_TICK: u128 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub token: u64,
    pub tick: u64,
    pub capacity: u64,
}

impl Price {
    /// The exact price when `period * 1e6 / rate` (microseconds a token takes), as the
    /// decimals the caller wrote, is a fraction that fits; otherwise a token is priced up to
    /// one part in 2^20 dearer (never cheaper: the budget never admits more than its quota).
    pub fn of(quota: &Quota) -> Result<Self> {
        let exact = decimal(quota.period)
            .zip(decimal(quota.rate))
            .and_then(|((pn, pd), (rn, rd))| {
                let token = pn.checked_mul(rd)?.checked_mul(1_000_000)?;
                let tick = pd.checked_mul(rn)?;
                let g = gcd(token, tick);
                Some((token / g, tick / g))
            })
            .filter(|&(token, tick)| tick <= MAX_TICK && token <= LIMIT);
        let (token, tick) = match exact {
            Some(price) => price,
            None => {
                let micros = quota.period * 1e6 / quota.rate;
                let tick = (0..=20)
                    .rev()
                    .map(|k| 1u128 << k)
                    .find(|&tick| micros * tick as f64 * quota.burst.ceil() < LIMIT as f64)
                    .unwrap_or(1);
                ((micros * tick as f64).ceil().max(1.0) as u128, tick)
            }
        };
        let capacity = match decimal(quota.burst) {
            Some((n, d)) => n.checked_mul(token).map(|units| units / d),
            None => None,
        }
        .unwrap_or_else(|| (quota.burst * token as f64).floor() as u128);
        if capacity >= LIMIT {
            return Err(Error::InvalidArgument {
                argument: "burst_size",
                message: format!(
                    "the burst of {} tokens at this rate is too large for a Redis budget \
                     (a token costs {token} units and the bucket must stay under 2^50)",
                    quota.burst
                ),
            });
        }
        Ok(Self {
            token: token as u64,
            tick: tick as u64,
            capacity: capacity as u64,
        })
    }

    /// Microseconds of back-off the script can count exactly.
    pub fn max_micros(&self) -> u64 {
        ((LIMIT as u64) - self.capacity) / self.tick
    }
}

/// `x` as the decimal fraction Rust prints it with (the shortest that reads back the same).
fn decimal(x: f64) -> Option<(u128, u128)> {
    let text = format!("{x}");
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = 10u128.checked_pow(fraction.len() as u32)?;
    let g = gcd(digits, scale);
    Some((digits / g, scale / g))
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratelimit_core::Algorithm;

    fn price(rate: f64, period: f64, burst: f64) -> Price {
        Price::of(&Quota::new(rate, period, Some(burst), Algorithm::TokenBucket, Some(1)).unwrap())
            .unwrap()
    }

    #[test]
    fn round_quotas_are_priced_exactly() {
        // 10 per second: a token is 100,000 microseconds.
        assert_eq!(
            price(10.0, 1.0, 5.0),
            Price {
                token: 100_000,
                tick: 1,
                capacity: 500_000
            }
        );
        // 3 per second: a token is 1e6 units at 3 units a microsecond.
        assert_eq!(
            price(3.0, 1.0, 1.0),
            Price {
                token: 1_000_000,
                tick: 3,
                capacity: 1_000_000
            }
        );
        // 600 per 0.1 s, and a burst of 1.5 tokens.
        let p = price(600.0, 0.1, 1.5);
        assert_eq!((p.token * 6000, p.tick), (1_000_000 * p.tick, p.tick));
        assert_eq!(p.capacity * 2, p.token * 3);
    }

    #[test]
    fn other_quotas_price_a_token_a_little_dearer_never_cheaper() {
        let p = price(1.0 / 3.0, 1.0, 1.0);
        let exact = 3e6;
        let priced = p.token as f64 / p.tick as f64;
        assert!(priced >= exact && priced < exact * (1.0 + 1e-6), "{p:?}");
    }
}
