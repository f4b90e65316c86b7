//! Upstream feedback: the rate follows an upstream's answers by AIMD. A refusal (an HTTP
//! 429) multiplies the rate by `decrease`, not below a floor; each success adds `increase`
//! of the configured rate, up to it. The configured rate is the one the limiter was made
//! with or last given by `set_quota`; feedback moves the rate under it, never above, and
//! keeps the period and the burst.

use crate::error::{Error, Result};
use crate::quota::{Algorithm, Quota};

/// How a refusal lowers the rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decrease {
    /// The rate is multiplied by this, in (0, 1].
    pub factor: f64,
    /// The lowest rate it goes to, in tokens per period (`None`: a tenth of the configured).
    pub floor: Option<f64>,
}

impl Default for Decrease {
    fn default() -> Self {
        Self {
            factor: 0.5,
            floor: None,
        }
    }
}

/// A success raises the rate by this share of the configured rate, in (0, 1].
pub const DEFAULT_INCREASE: f64 = 0.01;

/// The rate after a refusal, from `current` under `configured`.
pub(crate) fn decreased(configured: &Quota, current: &Quota, decrease: Decrease) -> Result<f64> {
    if !(decrease.factor > 0.0 && decrease.factor <= 1.0) {
        return Err(Error::invalid(
            "decrease",
            format!("must be a number > 0 and <= 1, got {}", decrease.factor),
        ));
    }
    let floor = match decrease.floor {
        Some(floor) if floor.is_finite() && floor > 0.0 && floor <= configured.rate => floor,
        Some(floor) => {
            return Err(Error::invalid(
                "min_rate",
                format!(
                    "must be a number > 0 and <= the configured rate ({}), got {floor}",
                    configured.rate
                ),
            ))
        }
        None => configured.rate / 10.0,
    };
    // A sliding window counts whole admissions: at least one per window.
    let floor = match current.algorithm {
        Algorithm::SlidingWindow => floor.max(1.0).min(configured.rate),
        Algorithm::TokenBucket => floor,
    };
    Ok((current.rate * decrease.factor)
        .max(floor)
        .min(current.rate))
}

/// The rate after a success, from `current` up to `configured`.
pub(crate) fn increased(configured: &Quota, current: &Quota, increase: f64) -> Result<f64> {
    if !(increase > 0.0 && increase <= 1.0) {
        return Err(Error::invalid(
            "increase",
            format!("must be a number > 0 and <= 1, got {increase}"),
        ));
    }
    Ok((current.rate + increase * configured.rate).min(configured.rate))
}

/// `current` at `rate`, its period, burst, algorithm and shards kept.
pub(crate) fn at_rate(current: &Quota, rate: f64) -> Result<Quota> {
    let burst = match current.algorithm {
        Algorithm::TokenBucket => Some(current.burst),
        Algorithm::SlidingWindow => None,
    };
    Quota::new(
        rate,
        current.period,
        burst,
        current.algorithm,
        Some(current.shards),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(rate: f64, algorithm: Algorithm) -> Quota {
        let burst = (algorithm == Algorithm::TokenBucket).then_some(20.0);
        Quota::new(rate, 1.0, burst, algorithm, Some(1)).unwrap()
    }

    #[test]
    fn a_refusal_halves_the_rate_down_to_a_tenth_and_successes_climb_back() {
        let configured = quota(100.0, Algorithm::TokenBucket);
        let mut current = configured;
        let mut rates = Vec::new();
        for _ in 0..5 {
            current.rate = decreased(&configured, &current, Decrease::default()).unwrap();
            rates.push(current.rate);
        }
        assert_eq!(rates, [50.0, 25.0, 12.5, 10.0, 10.0]);
        for _ in 0..95 {
            current.rate = increased(&configured, &current, DEFAULT_INCREASE).unwrap();
        }
        assert!((current.rate - 100.0).abs() < 1e-9);
        current.rate = increased(&configured, &current, DEFAULT_INCREASE).unwrap();
        assert_eq!(current.rate, 100.0);
        assert_eq!(at_rate(&current, 10.0).unwrap().burst, 20.0);
    }

    #[test]
    fn a_window_keeps_at_least_one_admission_per_window() {
        let configured = quota(5.0, Algorithm::SlidingWindow);
        let decrease = Decrease {
            factor: 0.01,
            floor: Some(0.1),
        };
        assert_eq!(decreased(&configured, &configured, decrease).unwrap(), 1.0);
    }

    #[test]
    fn bad_parameters_are_named() {
        let q = quota(10.0, Algorithm::TokenBucket);
        let bad = |factor, floor| {
            decreased(&q, &q, Decrease { factor, floor })
                .unwrap_err()
                .to_string()
        };
        assert!(bad(0.0, None).starts_with("decrease: "));
        assert!(bad(f64::NAN, None).starts_with("decrease: "));
        assert!(bad(0.5, Some(11.0)).starts_with("min_rate: "));
        assert!(bad(0.5, Some(-1.0)).starts_with("min_rate: "));
        let too_much = increased(&q, &q, 1.5).unwrap_err().to_string();
        assert!(too_much.starts_with("increase: "));
    }
}
