//! Each token-bucket shard's share of the refill and of the burst. Shares start even;
//! rebalancing (`rebalance.rs`) moves them toward demand, possibly onto fewer shards;
//! they always add up to the whole exactly.

use crate::memory::params::share;

/// One even share: the weights of `n` shards always add up to `n * EVEN`, and a shard of
/// weight `w` refills `w / EVEN` ticks of credit per tick of the set's time.
pub(crate) const EVEN: u64 = 1 << 16;

/// The least weight rebalancing leaves a shard: an eighth of an even share, so that keys
/// served by a quiet shard still find its refill rather than gathering it.
pub(crate) const FLOOR: u64 = EVEN / 8;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Weights(Box<[u64]>);

impl Weights {
    pub(crate) fn even(n: usize) -> Self {
        Self(vec![EVEN; n].into())
    }

    /// Equal shares for the first `active` of `n` shards, none for the others.
    pub(crate) fn even_over(n: usize, active: usize) -> Self {
        Self::toward(&vec![1; active], n)
    }

    /// The shards up to the last with a weight: every one beyond has none.
    pub(crate) fn span(&self) -> usize {
        self.0
            .iter()
            .rposition(|&w| w > 0)
            .map_or(0, |last| last + 1)
    }

    /// `self`, except that the shards `keep` says keep their weight in `current`; the
    /// rest of the whole is split among the others in these proportions.
    pub(crate) fn keeping(&self, current: &Weights, keep: &[bool]) -> Self {
        let kept: u64 = (0..self.len())
            .filter(|&i| keep[i])
            .map(|i| current.get(i))
            .sum();
        let mut weights = self.split(self.len() as u64 * EVEN - kept);
        for (i, w) in weights.iter_mut().enumerate().filter(|&(i, _)| keep[i]) {
            *w = current.get(i);
        }
        debug_assert_eq!(weights.iter().sum::<u64>(), self.len() as u64 * EVEN);
        Self(weights.into())
    }

    pub(crate) fn is_even(&self) -> bool {
        self.0.iter().all(|&w| w == EVEN)
    }

    pub(crate) fn get(&self, i: usize) -> u64 {
        self.0[i]
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Weights for `n` shards whose shares follow `demand` on the first `demand.len()`
    /// (in any unit; the active shards), the others getting none: every one of those keeps [`FLOOR`] of the
    /// share an even split among them would give, and the rest is split in proportion to
    /// demand (largest remainders first); an even split among them when there is no demand.
    pub(crate) fn toward(demand: &[u64], n: usize) -> Self {
        let active = demand.len();
        assert!(0 < active && active <= n, "1 to n shards have a share");
        let total: u128 = demand.iter().map(|&d| u128::from(d)).sum();
        let whole = n as u128 * u128::from(EVEN);
        let floor = (whole / active as u128 * u128::from(FLOOR) / u128::from(EVEN)) as u64;
        if total == 0 {
            return Self::toward(&vec![1; active], n);
        }
        let spread = whole - active as u128 * u128::from(floor);
        let mut weights: Vec<u64> = vec![0; n];
        let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(active);
        for (i, &d) in demand.iter().enumerate() {
            let exact = spread * u128::from(d);
            weights[i] = floor + (exact / total) as u64;
            remainders.push((exact % total, i));
        }
        let given: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        let left = (whole - given) as usize;
        remainders.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, i) in remainders.iter().take(left) {
            weights[i] += 1;
        }
        Self(weights.into())
    }

    /// `total` split in these proportions: the parts add up to `total` exactly; even
    /// weights split it as [`share`] does (the first `total % n` shards one more).
    pub(crate) fn split(&self, total: u64) -> Vec<u64> {
        let n = self.0.len();
        if self.is_even() {
            return (0..n).map(|i| share(total, n, i)).collect();
        }
        let whole: u128 = self.0.iter().map(|&w| u128::from(w)).sum();
        let (mut running, mut before) = (0u128, 0u64);
        self.0
            .iter()
            .map(|&w| {
                running += u128::from(w);
                let upto = (u128::from(total) * running / whole) as u64;
                let part = upto - before;
                before = upto;
                part
            })
            .collect()
    }

    /// `total` split among the shards `among` says, in these proportions (the others'
    /// parts 0; all of it to the first of them if none has a weight).
    pub(crate) fn split_among(&self, total: u64, among: impl Fn(usize) -> bool) -> Vec<u64> {
        let weights: Box<[u64]> = (0..self.len())
            .map(|i| if among(i) { self.0[i] } else { 0 })
            .collect();
        if weights.iter().all(|&w| w == 0) {
            let mut parts = vec![0; self.len()];
            if let Some(first) = (0..self.len()).find(|&i| among(i)) {
                parts[first] = total;
            }
            return parts;
        }
        Self(weights).split(total)
    }

    /// `total` split as [`Weights::split`] does, no part above its cap in `caps` (which
    /// add up to at least `total`): what a cap cuts off goes to the first parts with room.
    pub(crate) fn split_within(&self, total: u64, caps: &[u64]) -> Vec<u64> {
        let mut parts = self.split(total);
        let mut left = 0;
        for (part, &cap) in parts.iter_mut().zip(caps) {
            left += part.saturating_sub(cap);
            *part = (*part).min(cap);
        }
        for (part, &cap) in parts.iter_mut().zip(caps) {
            let added = (cap - *part).min(left);
            *part += added;
            left -= added;
        }
        debug_assert_eq!(left, 0, "the caps hold the total");
        parts
    }

    /// How far `demand` is from these shares: `max_i (d_i / D - s_i) / s_i` with `s_i`
    /// shard i's fraction of the whole, over the shards with a share (the imbalance ratio
    /// of `balance.rs`, for demand).
    pub(crate) fn imbalance(&self, demand: &[u64]) -> f64 {
        let total: u64 = demand.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let whole = (self.0.len() as u64 * EVEN) as f64;
        demand
            .iter()
            .zip(self.0.iter())
            .filter(|&(_, &w)| w > 0)
            .map(|(&d, &w)| {
                let expected = w as f64 / whole;
                (d as f64 / total as f64 - expected) / expected
            })
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(weights: &Weights) -> u64 {
        weights.0.iter().sum()
    }

    #[test]
    fn weights_toward_demand_add_up_to_n_even_shares_and_keep_the_floor() {
        for demand in [
            vec![0, 0, 0],
            vec![1, 0, 0, 0],
            vec![10, 20, 30, 40],
            vec![u64::MAX, 1, 7, u64::MAX / 3],
            vec![5; 16],
            (0..1000).map(|i| i * i).collect(),
        ] {
            let weights = Weights::toward(&demand, demand.len());
            assert_eq!(sum(&weights), demand.len() as u64 * EVEN, "{demand:?}");
            assert!(weights.0.iter().all(|&w| w >= FLOOR), "{demand:?}");
        }
        assert!(Weights::toward(&[5; 16], 16).is_even());
        assert_eq!(
            Weights::toward(&[3, 1], 2).0[..],
            [EVEN + EVEN / 2 - FLOOR / 2, EVEN / 2 + FLOOR / 2][..]
        );
    }

    #[test]
    fn fewer_active_shards_take_every_share() {
        let weights = Weights::toward(&[1, 3], 4);
        assert_eq!(sum(&weights), 4 * EVEN);
        assert_eq!(weights.split(100)[2..], [0, 0]);
        assert_eq!(Weights::even_over(4, 1).split(100), vec![100, 0, 0, 0]);
        assert_eq!(Weights::even_over(4, 1).imbalance(&[10, 0, 0, 0]), 0.0);
        // Shard 1 keeps its even share; shard 0 takes the rest of the two shards' refill.
        let kept = Weights::even_over(2, 1).keeping(&Weights::even(2), &[false, true]);
        assert_eq!(kept, Weights(vec![EVEN, EVEN].into()));
        let kept = Weights::even_over(3, 1)
            .keeping(&Weights::toward(&[1, 2, 1], 3), &[false, false, true]);
        assert_eq!(kept.0.iter().sum::<u64>(), 3 * EVEN);
        assert_eq!(kept.get(1), 0);
    }

    #[test]
    fn a_split_adds_up_exactly_and_even_weights_split_as_share_does() {
        assert_eq!(Weights::even(4).split(10), vec![3, 3, 2, 2]);
        for total in [0, 1, 7, 1000, u64::MAX] {
            for demand in [vec![1, 2, 3], vec![9, 0, 0, 1], vec![1; 5]] {
                let parts = Weights::toward(&demand, demand.len()).split(total);
                assert_eq!(
                    parts.iter().map(|&p| u128::from(p)).sum::<u128>(),
                    u128::from(total)
                );
            }
        }
        let parts = Weights::toward(&[3, 1], 2).split(1000);
        assert_eq!(parts, vec![718, 282]);
    }

    #[test]
    fn a_split_within_caps_adds_up_and_keeps_every_cap() {
        let weights = Weights::toward(&[1, 5, 1, 9], 4);
        let caps = weights.split(1001);
        for total in [0, 1, 500, 999, 1000, 1001] {
            let parts = weights.split_within(total, &caps);
            assert_eq!(parts.iter().sum::<u64>(), total);
            assert!(parts.iter().zip(&caps).all(|(p, c)| p <= c));
        }
        assert_eq!(weights.split_within(10, &[0, 0, 4, 6]), vec![0, 0, 4, 6]);
    }

    #[test]
    fn imbalance_is_zero_when_demand_follows_the_shares() {
        let weights = Weights::toward(&[3, 1], 2);
        assert_eq!(Weights::even(2).imbalance(&[3, 1]), 0.5);
        assert!(weights.imbalance(&[719, 281]) < 1e-3);
        assert_eq!(weights.imbalance(&[0, 0]), 0.0);
    }
}
