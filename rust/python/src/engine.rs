//! `Engine`: the in-memory budget behind a Python `ShardedRateLimiter`. It converts
//! arguments, calls the core once and converts the answer; waiting (asyncio or threads) is
//! done by the Python class, by asking for its turn.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use ratelimit_core::{
    default_key_stripes, Algorithm, Balance, Booking, Clock, Decrease, Holder, Key as CoreKey,
    Quota, RateLimiter, Rebalancing, ReservationPolicy, Scope, ShardViews, DEFAULT_INCREASE,
    DEFAULT_MAX_KEYS,
};

use crate::args::{
    AlgorithmArg, BurstSize, ClockArg, Count, DecreaseFactor, Increase, Key, MaxKeys,
    MaxReservations, MaxWait, MinRate, Period, Rate, RebalanceInterval, RebalanceThreshold,
    ReservationGrace, ReservationId, ReservationTtl, RetryAfter, ScopeArg, Seconds, Shards, Tokens,
    Waited,
};
use crate::clock::PyManualClock;
use crate::error::Result;
use crate::reservation::PyTokenReservation;
use crate::result::PyRateLimitResult;

fn no_shards() -> PyErr {
    PyTypeError::new_err("this engine's budget has no shards")
}

#[pyclass(frozen, module = "flashcard_pipeline._native", name = "Engine")]
pub(crate) struct PyEngine {
    core: RateLimiter,
    /// Python's hash of `"default"`, the key when none is given.
    default_hash: u64,
    clock: Option<Py<PyManualClock>>,
    /// `try_acquire` calls refused, per shard (or key stripe): statistics only, counted on
    /// separate cache lines so that threads refused on different shards do not contend.
    refused: Box<[CachePadded<AtomicU64>]>,
}

impl PyEngine {
    #[inline]
    fn count_refusal(&self, shard: usize) {
        self.refused[shard % self.refused.len()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn core(&self) -> &RateLimiter {
        &self.core
    }

    /// The engine's shards (every in-memory engine has them).
    fn shard_views(&self) -> PyResult<&dyn ShardViews> {
        self.core.shard_views().ok_or_else(no_shards)
    }

    /// A key as it crosses to the core: its text, and Python's own hash of it (cached in
    /// the string), which picks its shard. A string that is not valid UTF-8 (lone
    /// surrogates) crosses by its hash alone, which the in-memory budgets need.
    #[inline]
    fn key<'k>(&self, key: &'k Key<'_>) -> PyResult<CoreKey<'k>> {
        match key {
            Key::Default => Ok(CoreKey::new("default", self.default_hash)),
            Key::Given(given) => {
                let hash = given.hash()? as u64;
                Ok(match given.to_str() {
                    Ok(text) => CoreKey::new(text, hash),
                    Err(_) => CoreKey::hashed(hash),
                })
            }
        }
    }

    /// After a decision an adaptive engine sampled: gives the key's text to its hot-key
    /// sketch, which keeps only hashes otherwise.
    #[cold]
    fn name_sampled(&self, key: &Key<'_>, hash: u64) -> PyResult<()> {
        match key {
            Key::Default => self.core.name_key(hash, "default"),
            Key::Given(key) => self.core.name_key(hash, &key.to_cow()?),
        }
        Ok(())
    }

    /// Books `count` tokens for `holder` within the call's wait bound, as Python sees it:
    /// the reservation, or the refusal.
    fn book<'py>(
        slf: &Bound<'py, Self>,
        key: Key<'py>,
        count: Count,
        max_wait: Option<MaxWait>,
        holder: Holder,
    ) -> Result<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let budget = this.core.wait_budget(max_wait.map(|w| w.0))?;
        let booked = match this.core.book(this.key(&key)?, count.0, budget, holder)? {
            Booking::Reserved(reservation) => {
                let key = match key {
                    Key::Given(key) => key.into_any().unbind(),
                    Key::Default => PyString::new(py, "default").into_any().unbind(),
                };
                Bound::new(
                    py,
                    PyTokenReservation::new(this.core.clock(), key, reservation),
                )?
                .into_any()
            }
            Booking::Decided(decision) => {
                Bound::new(py, PyRateLimitResult::new(decision, 0.0))?.into_any()
            }
        };
        Ok(booked)
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(
        signature = (
            rate=None, period=None, shards=None, algorithm=None, burst_size=None,
            *, scope=None, max_wait=None, clock=None, reservation_ttl=None,
            reservation_grace=None, max_reservations=None, max_keys=None,
            rebalancing=None,
        ),
        text_signature = "(rate, period=60.0, shards=None, algorithm='token_bucket', \
                          burst_size=None, *, scope='global', max_wait=None, clock=None, \
                          reservation_ttl=60.0, reservation_grace=0.25, \
                          max_reservations=10000, max_keys=1048576, rebalancing=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        rate: Option<Rate>,
        period: Option<Period>,
        shards: Option<Shards>,
        algorithm: Option<AlgorithmArg>,
        burst_size: Option<BurstSize>,
        scope: Option<ScopeArg>,
        max_wait: Option<MaxWait>,
        clock: Option<ClockArg<'_>>,
        reservation_ttl: Option<ReservationTtl>,
        reservation_grace: Option<ReservationGrace>,
        max_reservations: Option<MaxReservations>,
        max_keys: Option<MaxKeys>,
        rebalancing: Option<(RebalanceThreshold, RebalanceInterval)>,
    ) -> Result<Self> {
        let rate = rate.ok_or_else(|| {
            PyTypeError::new_err("rate: required (tokens per period, a number > 0)")
        })?;
        let scope = scope.map_or(Scope::Global, |s| s.0);
        if max_keys.is_some() && scope != Scope::Key {
            return Err(PyValueError::new_err(
                "max_keys: applies to scope=\"key\" only (one budget per key)",
            )
            .into());
        }
        let shards = shards.map(|s| s.0).or_else(|| match scope {
            Scope::Key => Some(default_key_stripes()),
            Scope::Global => None,
        });
        let quota = Quota::new(
            rate.0,
            period.map_or(60.0, |p| p.0),
            burst_size.map(|b| b.0),
            algorithm.map_or(Algorithm::TokenBucket, |a| a.0),
            shards,
        )?;
        let defaults = ReservationPolicy::default();
        let policy = ReservationPolicy {
            ttl: reservation_ttl.map_or(defaults.ttl, |t| t.0),
            grace: reservation_grace.map_or(defaults.grace, |g| g.0),
            max: max_reservations.map_or(defaults.max, |m| m.0),
            max_wait: max_wait.map(|w| w.0),
        };
        let core_clock = match &clock {
            None => Clock::monotonic(),
            Some(manual) => Clock::Manual(manual.0.get().inner.clone()),
        };
        let core = match scope {
            Scope::Global => RateLimiter::with_reservations(quota, core_clock, policy)?,
            Scope::Key => RateLimiter::keyed(
                quota,
                core_clock,
                policy,
                max_keys.map_or(DEFAULT_MAX_KEYS, |m| m.0),
            )?,
        };
        // `(rebalance_threshold, rebalance_interval)`: an adaptive limiter.
        let core = match rebalancing {
            None => core,
            Some((threshold, interval)) => {
                core.rebalancing(Rebalancing::new(threshold.0, interval.0)?)
            }
        };
        let shards = core.quota().shards;
        Ok(Self {
            core,
            default_hash: PyString::new(py, "default").hash()? as u64,
            clock: clock.map(|c| c.0.unbind()),
            refused: (0..shards).map(|_| CachePadded::default()).collect(),
        })
    }

    /// Takes `count` tokens for `key` now, or says when to retry. Never waits.
    #[pyo3(signature = (key=Key::Default, count=Count::ONE), text_signature = "($self, key='default', count=1)")]
    fn try_acquire(&self, key: Key<'_>, count: Count) -> Result<PyRateLimitResult> {
        let core_key = self.key(&key)?;
        let decision = self.core.try_acquire_key(core_key, count.0)?;
        if !decision.allowed {
            self.count_refusal(decision.shard);
        }
        if decision.sampled {
            self.name_sampled(&key, core_key.hash())?;
        }
        Ok(PyRateLimitResult::new(decision, 0.0))
    }

    /// Books `count` tokens for the caller's reservation: a `TokenReservation` for the next
    /// slot, or the refusal (`exceeds_capacity`, `max_wait_exceeded`) as a `RateLimitResult`.
    #[pyo3(signature = (key=Key::Default, count=Count::ONE, max_wait=None), text_signature = "($self, key='default', count=1, max_wait=None)")]
    fn reserve<'py>(
        slf: &Bound<'py, Self>,
        key: Key<'py>,
        count: Count,
        max_wait: Option<MaxWait>,
    ) -> Result<Bound<'py, PyAny>> {
        Self::book(slf, key, count, max_wait, Holder::Caller)
    }

    /// `reserve` for a waiting `acquire`: the turn is kept in line by `reset()`.
    #[pyo3(signature = (key=Key::Default, count=Count::ONE, max_wait=None), text_signature = "($self, key='default', count=1, max_wait=None)")]
    fn book_turn<'py>(
        slf: &Bound<'py, Self>,
        key: Key<'py>,
        count: Count,
        max_wait: Option<MaxWait>,
    ) -> Result<Bound<'py, PyAny>> {
        Self::book(slf, key, count, max_wait, Holder::Waiter)
    }

    /// Admits a reservation once its slot has come; charges nothing more. Refused with
    /// `not_ready` (and `retry_after`), `expired`, `cancelled`, `already_executed` or
    /// `unknown_reservation`. `waited` is reported back as the result's `waited`.
    #[pyo3(signature = (reservation_id, waited=Waited(0.0)), text_signature = "($self, reservation_id, waited=0.0)")]
    fn execute_reservation(
        &self,
        reservation_id: ReservationId<'_, '_>,
        waited: Waited,
    ) -> Result<PyRateLimitResult> {
        let decision = self.core.execute_reservation(reservation_id.0.to_str()?)?;
        Ok(PyRateLimitResult::new(decision, waited.0))
    }

    /// `execute_reservation` for a waiter's turn: a turn whose next chance is more than
    /// `max_wait` seconds away (what is left of its bound) is given back and refused
    /// `max_wait_exceeded`.
    #[pyo3(signature = (turn_id, waited, max_wait), text_signature = "($self, turn_id, waited, max_wait)")]
    fn execute_turn(
        &self,
        turn_id: ReservationId<'_, '_>,
        waited: Waited,
        max_wait: MaxWait,
    ) -> Result<PyRateLimitResult> {
        let decision = self.core.execute_turn(turn_id.0.to_str()?, max_wait.0)?;
        Ok(PyRateLimitResult::new(decision, waited.0))
    }

    /// Gives a reservation's tokens back; `True` once, `False` after that or for an id that
    /// is unknown, expired or executed.
    fn cancel_reservation(&self, reservation_id: ReservationId<'_, '_>) -> Result<bool> {
        Ok(self.core.cancel_reservation(reservation_id.0.to_str()?)?)
    }

    /// The wait bound in seconds for a call: its own `max_wait`, else the engine's.
    #[pyo3(signature = (max_wait=None))]
    fn wait_budget(&self, max_wait: Option<MaxWait>) -> Result<f64> {
        Ok(self.core.wait_budget(max_wait.map(|w| w.0))?)
    }

    /// Seconds on the engine's clock, for measuring waits.
    fn now(&self) -> f64 {
        self.core.clock().now() as f64 / 1e9
    }

    /// Tokens available now in the budget `key` draws on, without taking any.
    #[pyo3(signature = (key=Key::Default), text_signature = "($self, key='default')")]
    fn peek(&self, key: Key<'_>) -> Result<f64> {
        Ok(self.core.peek(self.key(&key)?)?)
    }

    /// Refills the budget `key` draws on (every budget when no key is given), forgets its
    /// reservations and clears the per-shard counters; waiting turns stay in line on the
    /// fresh budget.
    #[pyo3(signature = (key=None), text_signature = "($self, key=None)")]
    fn reset(&self, key: Option<Key<'_>>) -> Result<()> {
        match key {
            None => {
                self.core.reset()?;
                for counter in self.refused.iter() {
                    counter.store(0, Ordering::Relaxed);
                }
            }
            Some(key) => self.core.reset_key(self.key(&key)?)?,
        }
        Ok(())
    }

    /// Admits nothing from the budget `key` draws on for `seconds`, then refills from empty:
    /// a token bucket owes that much refill (`-seconds * rate / period` tokens), a sliding
    /// window stays full until then. What an upstream's 429 with `Retry-After` asks for.
    #[pyo3(signature = (seconds, key=Key::Default), text_signature = "($self, seconds, key='default')")]
    fn back_off(&self, seconds: Seconds, key: Key<'_>) -> Result<()> {
        Ok(self.core.back_off(self.key(&key)?, seconds.0)?)
    }

    /// An upstream refused (an HTTP 429): the rate is multiplied by `decrease`, not below
    /// `min_rate` (default a tenth of the configured rate), at once; with `retry_after`
    /// seconds the budget `key` draws on also backs off that long. Returns the new rate.
    #[pyo3(
        signature = (retry_after=None, key=Key::Default, *, decrease=None, min_rate=None),
        text_signature = "($self, retry_after=None, key='default', *, decrease=0.5, \
                          min_rate=None)"
    )]
    fn on_rate_limit(
        &self,
        retry_after: Option<RetryAfter>,
        key: Key<'_>,
        decrease: Option<DecreaseFactor>,
        min_rate: Option<MinRate>,
    ) -> Result<f64> {
        let defaults = Decrease::default();
        let decrease = Decrease {
            factor: decrease.map_or(defaults.factor, |d| d.0),
            floor: min_rate.map(|m| m.0),
        };
        Ok(self
            .core
            .on_rate_limit(self.key(&key)?, retry_after.map(|r| r.0), decrease)?)
    }

    /// An upstream call succeeded: the rate rises by `increase` of the configured rate
    /// (default 0.01), up to it, at once. Returns the new rate.
    #[pyo3(signature = (*, increase=None), text_signature = "($self, *, increase=0.01)")]
    fn on_success(&self, increase: Option<Increase>) -> Result<f64> {
        Ok(self
            .core
            .on_success(increase.map_or(DEFAULT_INCREASE, |i| i.0))?)
    }

    /// Moves the shares to the demand seen since they last moved, now, if anything was
    /// asked since; whether they moved (never for a limiter that does not rebalance).
    fn rebalance(&self) -> bool {
        self.core.rebalance()
    }

    /// Keys with a budget of their own (scope="key"), after dropping idle ones; 0 where
    /// all keys share one budget.
    fn __len__(&self) -> Result<usize> {
        Ok(self.core.keys()?)
    }

    /// Changes rate, period and burst at run time; the tokens available now carry over,
    /// capped at the new burst. The algorithm and the shard count stay as made.
    #[pyo3(signature = (rate, period=None, burst_size=None))]
    fn set_rate(
        &self,
        rate: Option<Rate>,
        period: Option<Period>,
        burst_size: Option<BurstSize>,
    ) -> Result<()> {
        let rate =
            rate.ok_or_else(|| PyTypeError::new_err("rate: must be a number > 0, got None"))?;
        let quota =
            self.core
                .quota()
                .rerated(rate.0, period.map(|p| p.0), burst_size.map(|b| b.0))?;
        Ok(self.core.set_quota(quota)?)
    }

    #[getter]
    fn rate(&self) -> f64 {
        self.core.quota().rate
    }

    #[getter]
    fn period(&self) -> f64 {
        self.core.quota().period
    }

    #[getter]
    fn burst_size(&self) -> f64 {
        self.core.quota().burst
    }

    #[getter]
    fn shards(&self) -> usize {
        self.core.quota().shards
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.core.quota().algorithm.name()
    }

    #[getter]
    fn scope(&self) -> &'static str {
        self.core.scope().name()
    }

    #[getter]
    fn max_keys(&self) -> Option<usize> {
        self.core.max_keys()
    }

    #[getter]
    fn max_wait(&self) -> Option<f64> {
        self.core.max_wait()
    }

    #[getter]
    fn clock(&self, py: Python<'_>) -> Option<Py<PyManualClock>> {
        self.clock.as_ref().map(|c| c.clone_ref(py))
    }

    /// Configuration and live state of the budget.
    fn get_status<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
        let quota = self.core.quota();
        let status = PyDict::new(py);
        status.set_item("algorithm", quota.algorithm.name())?;
        status.set_item("scope", self.core.scope().name())?;
        status.set_item("rate", quota.rate)?;
        status.set_item("total_rate", quota.rate)?;
        status.set_item("period", quota.period)?;
        status.set_item("burst_size", quota.burst)?;
        status.set_item("shards", quota.shards)?;
        status.set_item("max_wait", self.core.max_wait())?;
        let tokens = self.core.peek(CoreKey::new("default", self.default_hash))?;
        status.set_item("tokens_remaining", tokens)?;
        status.set_item("total_tokens_available", tokens)?;
        let shards = self.shard_views()?;
        let shard_tokens = shards.shard_tokens();
        status.set_item("shard_tokens", shard_tokens.clone())?;
        // Read once, so that the shards' counts and their sum agree.
        let served = shards.served();
        // The previous API's view: each shard's tokens, its share of the burst and of the
        // rate (per second), and the admissions it served.
        let shares = shards.shares();
        let details = shard_tokens
            .iter()
            .zip(&served)
            .zip(shares.rate.iter().zip(&shares.burst))
            .enumerate()
            .map(|(shard_id, ((tokens, served), (rate, burst)))| {
                let detail = PyDict::new(py);
                detail.set_item("shard_id", shard_id)?;
                detail.set_item("tokens_available", tokens)?;
                detail.set_item("capacity", burst)?;
                detail.set_item("rate", rate / quota.period)?;
                detail.set_item("requests_handled", served)?;
                Ok(detail)
            })
            .collect::<PyResult<Vec<_>>>()?;
        status.set_item("shard_details", details)?;
        let allowed: u64 = served.iter().sum();
        let denied: u64 = self.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        status.set_item("requests_allowed", allowed)?;
        let total = allowed + denied;
        let statistics = PyDict::new(py);
        statistics.set_item("total_requests", total)?;
        statistics.set_item("allowed_requests", allowed)?;
        statistics.set_item("denied_requests", denied)?;
        // The previous API's names for the same two counts.
        statistics.set_item("allowed", allowed)?;
        statistics.set_item("denied", denied)?;
        let success_rate = if total == 0 {
            1.0
        } else {
            allowed as f64 / total as f64
        };
        statistics.set_item("success_rate", success_rate)?;
        status.set_item("statistics", statistics)?;
        let counts = self.core.reservation_counts()?;
        let reservations = PyDict::new(py);
        reservations.set_item("active", counts.active)?;
        reservations.set_item("total_created", counts.created)?;
        reservations.set_item("expired", counts.expired)?;
        status.set_item("reservations", reservations)?;
        if let Some(max_keys) = self.core.max_keys() {
            status.set_item("keys", self.core.keys()?)?;
            status.set_item("max_keys", max_keys)?;
        }
        Ok(status)
    }

    /// How evenly the shards serve: always the same keys, traffic or not.
    fn get_shard_balance<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let balance = self.core.balance().ok_or_else(no_shards)?;
        let view = PyDict::new(py);
        view.set_item("balanced", balance.balanced())?;
        view.set_item("imbalance_ratio", balance.imbalance_ratio)?;
        view.set_item("threshold", Balance::THRESHOLD)?;
        view.set_item("most_loaded_shard", balance.most_loaded)?;
        view.set_item("least_loaded_shard", balance.least_loaded)?;
        view.set_item("distribution", balance.distribution)?;
        view.set_item("shard_tokens", self.shard_views()?.shard_tokens())?;
        view.set_item("rate_shares", balance.shares.rate)?;
        view.set_item("burst_shares", balance.shares.burst)?;
        view.set_item("slow_path_share", balance.slow_path_share)?;
        view.set_item("rebalances", balance.rebalances)?;
        view.set_item("active_shards", balance.active)?;
        let hot = PyList::empty(py);
        for key in balance.hot {
            let entry = PyDict::new(py);
            entry.set_item("key", key.name)?;
            entry.set_item("share", key.share)?;
            hot.append(entry)?;
        }
        view.set_item("hot_keys", hot)?;
        Ok(view)
    }

    fn __repr__(&self) -> String {
        let q = self.core.quota();
        format!(
            "rate={:?}, period={:?}, shards={}, algorithm={:?}, burst_size={:?}",
            q.rate,
            q.period,
            q.shards,
            q.algorithm.name(),
            q.burst
        )
    }
}

/// Engines taken together, all or nothing (a `LimiterGroup`): fixed when made, so that a
/// decision converts no list and allocates nothing but its result.
#[pyclass(frozen, module = "flashcard_pipeline._native", name = "EngineGroup")]
pub(crate) struct PyEngineGroup {
    engines: Box<[Py<PyEngine>]>,
}

#[pymethods]
impl PyEngineGroup {
    #[new]
    fn new(engines: Vec<Bound<'_, PyEngine>>) -> PyResult<Self> {
        if engines.is_empty() {
            return Err(PyValueError::new_err(
                "engines: at least one engine is needed",
            ));
        }
        Ok(Self {
            engines: engines.into_iter().map(Bound::unbind).collect(),
        })
    }

    /// Takes `count` tokens for `key` from every engine or from none. Returns the refusal of
    /// the first engine that refused, after giving back what the others took, or the last
    /// admission. A refusal whose wait exceeds `max_wait` says `max_wait_exceeded`; it is
    /// counted in the first engine's statistics.
    #[pyo3(
        signature = (key=Key::Default, count=Count::ONE, max_wait=None),
        text_signature = "($self, key='default', count=1, max_wait=None)"
    )]
    fn try_acquire(
        &self,
        key: Key<'_>,
        count: Count,
        max_wait: Option<MaxWait>,
    ) -> Result<PyRateLimitResult> {
        // Every engine sees a key the same way (its text and Python's string hash).
        let key = self.engines[0].get().key(&key)?;
        let max_wait = max_wait.map_or(f64::INFINITY, |w| w.0);
        let decision = self.decide(key, count.0, max_wait)?;
        Ok(PyRateLimitResult::new(decision, 0.0))
    }

    /// `try_acquire(count=tokens)` for the default key, as the previous API's `try_acquire`
    /// answers: `True` if admitted. No result is made.
    #[pyo3(signature = (tokens=Tokens(1)), text_signature = "($self, tokens=1)")]
    fn admits(&self, tokens: Tokens) -> Result<bool> {
        let key = CoreKey::new("default", self.engines[0].get().default_hash);
        Ok(self.decide(key, tokens.0, f64::INFINITY)?.allowed)
    }
}

impl PyEngineGroup {
    fn decide(
        &self,
        key: CoreKey<'_>,
        count: u64,
        max_wait: f64,
    ) -> Result<ratelimit_core::Decision> {
        let parts = self
            .engines
            .iter()
            .map(|engine| (engine.get().core(), key, count));
        let decision = RateLimiter::try_acquire_all(parts, max_wait)?;
        if !decision.allowed {
            // A group's refusal counts once, as its first engine's.
            self.engines[0].get().count_refusal(decision.shard);
        }
        Ok(decision)
    }
}
