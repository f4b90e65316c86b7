//! How evenly the shards of a limiter serve: a statistic for `get_shard_balance()`.

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

    pub(crate) fn of(distribution: Vec<u64>) -> Self {
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
}
