//! How evenly the shards of a limiter serve, each against its share of the budget: a
//! statistic for `get_shard_balance()`.

use crate::memory::hot::HotKey;
use crate::quota::Quota;

/// Each shard's share of a budget in tokens: of the rate (per period) and of the burst.
/// Each list, summed in order, adds up to the whole exactly in floating point.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shares {
    pub rate: Vec<f64>,
    pub burst: Vec<f64>,
}

impl Shares {
    /// How `quota` is split over its shards, given each shard's weight in the refill and
    /// its part of the capacity (`Budget::parts`): even until rebalancing moves them.
    pub(crate) fn of(quota: &Quota, (rate, burst): (Vec<u64>, Vec<u64>)) -> Self {
        Self {
            rate: split(quota.rate, &rate),
            burst: split(quota.burst, &burst),
        }
    }
}

/// `whole` in the proportions of `parts`. Every running total is rounded to a multiple of
/// the spacing of floating-point numbers at `whole`, so each piece (the difference of two
/// running totals) is exact, and so is every partial sum in order: summed in order, the
/// pieces add up to `whole` exactly.
fn split(whole: f64, parts: &[u64]) -> Vec<f64> {
    let total: u128 = parts.iter().map(|&p| u128::from(p)).sum();
    let spacing = f64::from_bits(whole.to_bits() + 1) - whole;
    let (mut running, mut before) = (0u128, 0.0);
    parts
        .iter()
        .map(|&part| {
            running += u128::from(part);
            let upto = if running == total {
                whole
            } else {
                let exact = whole * running as f64 / total as f64;
                ((exact / spacing).round() * spacing).min(whole)
            };
            let piece = upto - before;
            before = upto;
            piece
        })
        .collect()
}

/// Requests served per shard, measured against each shard's share of the rate, and how many
/// were gathered from every shard (the slow path).
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    pub distribution: Vec<u64>,
    /// How far the busiest shard serves above its share: `max_i (served_i / total - s_i) / s_i`,
    /// `s_i` being shard i's fraction of the rate (with equal shares, `(max - mean) / mean`);
    /// 0 when nothing was served yet.
    pub imbalance_ratio: f64,
    /// The shards that served the most and the least for their shares.
    pub most_loaded: usize,
    pub least_loaded: usize,
    /// Empty where keys share no budget (`scope="key"`): its lock stripes are measured
    /// against equal shares.
    pub shares: Shares,
    /// Gathered admissions out of all served (0 with none).
    pub slow_path_share: f64,
    /// Times rebalancing moved the shares toward demand (the counts above are since the
    /// last time).
    pub rebalances: u64,
    /// The shards keys spread over: all of them, unless rebalancing left fewer.
    pub active: usize,
    /// Keys an adaptive limiter spreads over every shard in use, hottest first.
    pub hot: Vec<HotKey>,
}

impl Balance {
    /// Shards are called balanced while the busiest is within this fraction of its share.
    pub const THRESHOLD: f64 = 0.3;

    pub(crate) fn of(
        distribution: Vec<u64>,
        gathered: u64,
        shares: Shares,
        rebalances: u64,
    ) -> Self {
        let total: u64 = distribution.iter().sum();
        let weights = if shares.rate.is_empty() {
            vec![1.0; distribution.len()]
        } else {
            shares.rate.clone()
        };
        debug_assert_eq!(weights.len(), distribution.len(), "a share per shard");
        let whole: f64 = weights.iter().sum();
        // Each shard above (> 0) or below (< 0) what its share would have served, relative
        // to that; 0 before any traffic.
        let loads: Vec<f64> = distribution
            .iter()
            .zip(&weights)
            .map(|(&served, &weight)| {
                if total == 0 || weight == 0.0 {
                    return 0.0; // nothing served yet, or a shard with no share (not in use)
                }
                let expected = total as f64 * weight / whole;
                (served as f64 - expected) / expected
            })
            .collect();
        let (mut most, mut least) = (0, 0);
        let in_use = loads.iter().enumerate().filter(|&(i, _)| weights[i] > 0.0);
        for (i, &load) in in_use {
            if load > loads[most] {
                most = i;
            }
            if load < loads[least] {
                least = i;
            }
        }
        let slow_path_share = if total == 0 {
            0.0
        } else {
            gathered as f64 / total as f64
        };
        Self {
            distribution,
            imbalance_ratio: loads[most],
            most_loaded: most,
            least_loaded: least,
            shares,
            slow_path_share,
            rebalances,
            active: 0,
            hot: Vec::new(),
        }
    }

    pub fn balanced(&self) -> bool {
        self.imbalance_ratio <= Self::THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::params::Params;
    use crate::memory::weights::{Weights, EVEN};
    use crate::quota::Algorithm;

    fn even(quota: &Quota, params: &Params) -> Shares {
        let n = params.shards;
        Shares::of(
            quota,
            (vec![EVEN; n], Weights::even(n).split(params.capacity)),
        )
    }

    fn equal(n: usize) -> Shares {
        Shares {
            rate: vec![10.0; n],
            burst: vec![10.0; n],
        }
    }

    #[test]
    fn balance_is_defined_before_any_traffic() {
        let balance = Balance::of(vec![0, 0, 0, 0], 0, equal(4), 0);
        assert_eq!(balance.imbalance_ratio, 0.0);
        assert_eq!(balance.slow_path_share, 0.0);
        assert!(balance.balanced());
        assert_eq!((balance.most_loaded, balance.least_loaded), (0, 0));
    }

    #[test]
    fn balance_measures_the_busiest_shard_against_the_mean() {
        let balance = Balance::of(vec![10, 30, 20, 20], 8, equal(4), 0);
        assert_eq!(balance.imbalance_ratio, 0.5);
        assert_eq!(balance.slow_path_share, 0.1);
        assert!(!balance.balanced());
        assert_eq!((balance.most_loaded, balance.least_loaded), (1, 0));
    }

    #[test]
    fn a_shard_given_more_that_serves_more_is_balanced() {
        let shares = Shares {
            rate: vec![10.0, 30.0, 20.0, 20.0],
            burst: vec![1.0; 4],
        };
        let balance = Balance::of(vec![10, 30, 20, 20], 0, shares.clone(), 0);
        assert_eq!(balance.imbalance_ratio, 0.0);
        assert!(balance.balanced());
        // Even service is unbalanced against unequal shares: shard 0 serves 20 for 10.
        let balance = Balance::of(vec![20, 20, 20, 20], 0, shares, 0);
        assert_eq!(balance.imbalance_ratio, 1.0);
        assert_eq!((balance.most_loaded, balance.least_loaded), (0, 1));
    }

    #[test]
    fn without_shares_the_stripes_are_measured_against_equal_ones() {
        let balance = Balance::of(vec![10, 30, 20, 20], 0, Shares::default(), 0);
        assert_eq!(balance.imbalance_ratio, 0.5);
        assert_eq!(balance.most_loaded, 1);
    }

    #[test]
    fn shares_add_up_to_the_rate_and_the_burst_exactly() {
        let rates = [1000.0, 1.0, 7.0, 3.3, 999_999_937.0, 1e9, 0.1, 1.0 / 3.0];
        let bursts = [
            None,
            Some(7.0),
            Some(1.0),
            Some(2.5),
            Some(1e12),
            Some(12_345.678),
        ];
        for rate in rates {
            for burst in bursts {
                for shards in [1, 2, 3, 7, 16, 1000] {
                    let quota =
                        Quota::new(rate, 1.0, burst, Algorithm::TokenBucket, Some(shards)).unwrap();
                    let Ok(params) = Params::new(&quota) else {
                        continue; // out of range at this shard count
                    };
                    let shares = even(&quota, &params);
                    let what = format!("rate {rate} burst {burst:?} shards {shards}");
                    assert_eq!(shares.rate.len(), shards, "{what}");
                    assert_eq!(shares.rate.iter().sum::<f64>(), rate, "{what}");
                    assert_eq!(shares.burst.iter().sum::<f64>(), quota.burst, "{what}");
                    let most = shares.rate.iter().cloned().fold(f64::MIN, f64::max);
                    let least = shares.rate.iter().cloned().fold(f64::MAX, f64::min);
                    assert!(most - least <= 4.0 * f64::EPSILON * rate, "{what}");
                }
            }
        }
    }

    #[test]
    fn the_burst_splits_as_the_shards_capacities_do() {
        let quota = Quota::new(1000.0, 1.0, Some(7.0), Algorithm::TokenBucket, Some(16)).unwrap();
        let shares = even(&quota, &Params::new(&quota).unwrap());
        assert_eq!(shares.rate, vec![62.5; 16]);
        assert_eq!(shares.burst, vec![7.0 / 16.0; 16]);
        // The sliding window's capacity is floor(rate), in whole admissions.
        let quota = Quota::new(10.9, 1.0, None, Algorithm::SlidingWindow, Some(4)).unwrap();
        let shares = even(&quota, &Params::new(&quota).unwrap());
        assert_eq!(shares.burst, vec![3.0, 3.0, 2.0, 2.0]);
        assert_eq!(shares.rate.iter().sum::<f64>(), 10.9);
    }

    #[test]
    fn moved_shares_still_add_up_exactly_in_order() {
        let demands = [
            vec![1, 0, 0, 0, 0, 0, 0, 0],
            vec![9, 1, 5, 1000, 3],
            vec![7; 16],
        ];
        for rate in [1000.0, 1.0 / 3.0, 999_999_937.0, 0.1, 12_345.678] {
            for demand in &demands {
                let weights = Weights::toward(demand, demand.len());
                let n = demand.len();
                let parts = (0..n).map(|i| weights.get(i)).collect::<Vec<_>>();
                let burst = weights.split(1_000_003);
                let shares = Shares::of(
                    &Quota::new(
                        rate,
                        1.0,
                        Some(rate * 3.0 + 1.0),
                        Algorithm::TokenBucket,
                        Some(n),
                    )
                    .unwrap(),
                    (parts, burst),
                );
                let what = format!("rate {rate} demand {demand:?}");
                assert_eq!(shares.rate.iter().sum::<f64>(), rate, "{what}");
                assert_eq!(shares.burst.iter().sum::<f64>(), rate * 3.0 + 1.0, "{what}");
                assert!(shares.rate.iter().all(|&s| s > 0.0), "{what}");
            }
        }
    }
}
