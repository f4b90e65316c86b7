//! Adaptive rebalancing: how many shards a token bucket spreads keys over, and each
//! shard's share of the refill and the burst, follow what callers do.
//!
//! Decisions look at the clock they already read: at most once per [`CHECK`] (or per
//! interval, if shorter) one of them, the one that wins a `try_lock`, looks (out of line,
//! after its own decision) at what was asked since the shares last moved, once enough was
//! ([`SAMPLE`] tokens per shard keys spread over). Nothing runs in the background and
//! nothing is spawned.
//!
//! - **Contention sets the shard count.** Shards exist so that threads do not race for
//!   one bucket; the cost is that under load a budget spread thin over many shards has
//!   its last tokens in fractions on several of them, which an exact limiter must gather
//!   (the slow path). So keys spread over twice as many shards when more than
//!   1 in [`CONTENDED`] tokens asked lost a race for its shard, and, when fewer than 1 in
//!   [`QUIET`] did, over as few as would keep the races (more of them on fewer shards)
//!   under 1 in [`CONTENDED`]: at most half as many, and one when there were none (from
//!   the shard count the limiter was made with, down to one).
//! - **Demand sets the shares.** Demand is the units asked of each shard as a key's
//!   fuller candidate, admitted or not. When its imbalance against the shares passes the
//!   threshold, or the interval has passed since they last moved, the shares move to it
//!   (`Weights::toward`: every shard keys spread over keeps a floor).
//! - **A key asking more than a shard's share is spread** over every shard in use: each look
//!   publishes such keys from a sampled sketch (`hot.rs`).

use parking_lot::{Mutex, MutexGuard};

use crate::clock::{Nanos, NANOS_PER_SEC};
use crate::error::{Error, Result};
use crate::memory::weights::Weights;

/// The longest gap between two looks at demand.
pub(crate) const CHECK: Nanos = 100_000_000;

/// Tokens asked per shard, on average, before demand is trusted to move the shares.
pub(crate) const SAMPLE: u64 = 64;

/// When to move the shares (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebalancing {
    /// Demand's imbalance ratio against the shares above which they move at once.
    pub threshold: f64,
    /// Seconds after which the shares follow demand whatever its imbalance.
    pub interval: f64,
}

impl Rebalancing {
    pub fn new(threshold: f64, interval: f64) -> Result<Self> {
        for (name, value) in [
            ("rebalance_threshold", threshold),
            ("rebalance_interval", interval),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::invalid(
                    name,
                    format!("must be a finite number > 0, got {value}"),
                ));
            }
        }
        Ok(Self {
            threshold,
            interval,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Rebalancer {
    threshold: f64,
    interval: Nanos,
    check_every: Nanos,
    since: Mutex<Since>,
}

/// What was counted when the shares last moved: demand and the served statistics are
/// measured from there.
#[derive(Debug, Clone, Default)]
pub(crate) struct Since {
    pub(crate) at: Nanos,
    pub(crate) demand: Demand,
    pub(crate) served: Vec<u64>,
    pub(crate) gathered: u64,
    pub(crate) rebalances: u64,
}

/// What the shards were asked so far (every count wrapping): units per shard, and takes
/// that lost a race for a shard and tried again.
#[derive(Debug, Clone, Default)]
pub(crate) struct Demand {
    pub(crate) asked: Vec<u64>,
    pub(crate) collisions: u64,
}

/// What a look at demand concluded.
pub(crate) struct Move {
    pub(crate) weights: Weights,
    /// The shards keys spread over.
    pub(crate) active: usize,
    pub(crate) demand: Demand,
}

/// More than 1 in this many tokens asked lost a race: spread keys over more shards.
pub(crate) const CONTENDED: u64 = 100;
/// Fewer than 1 in this many tokens asked lost a race: spread keys over fewer shards.
pub(crate) const QUIET: u64 = 10_000;

impl Rebalancer {
    pub(crate) fn new(rebalancing: Rebalancing, now: Nanos) -> Self {
        let interval = (rebalancing.interval * NANOS_PER_SEC).min(u64::MAX as f64) as Nanos;
        let check_every = interval.clamp(1, CHECK);
        Self {
            threshold: rebalancing.threshold,
            interval,
            check_every,
            since: Mutex::new(Since {
                at: now,
                ..Since::default()
            }),
        }
    }

    /// When a decision after a look at `now` should look again.
    pub(crate) fn next_look(&self, now: Nanos) -> Nanos {
        now.saturating_add(self.check_every)
    }

    /// Locks the record for a look at demand, unless another decision is looking (or
    /// `force`, which waits for it).
    pub(crate) fn look(&self, force: bool) -> Option<MutexGuard<'_, Since>> {
        if force {
            return Some(self.since.lock());
        }
        self.since.try_lock()
    }

    /// Where the shares should go, given what was asked so far, one token's units, the
    /// shares now and the shards keys spread over; `None` when they should stay. With
    /// `force`, whenever anything was asked.
    pub(crate) fn decide(
        &self,
        since: &Since,
        now: Nanos,
        demand: Demand,
        unit: u64,
        (current, active): (&Weights, usize),
        force: bool,
    ) -> Option<Move> {
        let n = current.len();
        let before = |i| since.demand.asked.get(i).copied().unwrap_or(0);
        let asked: Vec<u64> = (0..n)
            .map(|i| demand.asked[i].wrapping_sub(before(i)))
            .collect();
        let tokens = asked.iter().map(|&a| u128::from(a)).sum::<u128>() / u128::from(unit);
        let collisions = u128::from(demand.collisions.wrapping_sub(since.demand.collisions));
        if tokens == 0 || !force && tokens < u128::from(SAMPLE) * active as u128 {
            return None;
        }
        let spread = if collisions * u128::from(CONTENDED) > tokens {
            (active * 2).min(n)
        } else if collisions * u128::from(QUIET) < tokens {
            // Races grow as the shards they fall on fewer: as few shards as would still keep
            // them under 1 in CONTENDED (one, when there were none), and at least halving.
            let enough = (collisions * active as u128 * u128::from(CONTENDED)).div_ceil(tokens);
            (enough as usize).clamp(1, (active / 2).max(1))
        } else {
            active
        };
        let draining = (active..n).any(|i| current.get(i) > 0);
        let weights = if spread != active {
            Weights::even_over(n, spread)
        } else if force
            || draining
            || now.saturating_sub(since.at) >= self.interval
            || current.imbalance(&asked) > self.threshold
        {
            Weights::toward(&asked[..active], n)
        } else {
            return None;
        };
        Some(Move {
            weights,
            active: spread,
            demand,
        })
    }

    pub(crate) fn since(&self) -> Since {
        self.since.lock().clone()
    }
}
