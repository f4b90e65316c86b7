//! `ShardedRateLimiter`'s native base: construction, the non-blocking calls and the
//! status views. Waiting (asyncio or threads) is done by the Python subclass, by polling
//! its turn.

use pyo3::exceptions::{PyNotImplementedError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use ratelimit_core::{
    validate_max_wait, Algorithm, Balance, Booking, Clock, Quota, RateLimiter, Refusal,
    ReservationPolicy, MAX_SHARDS,
};

use crate::args;
use crate::clock::PyManualClock;
use crate::error::to_py;
use crate::reservation::PyTokenReservation;
use crate::result::PyRateLimitResult;

#[pyclass(
    frozen,
    subclass,
    module = "flashcard_pipeline._native",
    name = "ShardedRateLimiter"
)]
pub(crate) struct PyShardedRateLimiter {
    core: RateLimiter,
    /// Python's hash of `"default"`, the key when none is given.
    default_hash: u64,
    max_wait: Option<f64>,
    clock: Option<Py<PyManualClock>>,
}

impl PyShardedRateLimiter {
    pub(crate) fn core(&self) -> &RateLimiter {
        &self.core
    }

    /// The shard-choosing hash of a key: Python's own string hash, cached in the string.
    #[inline]
    fn hash(&self, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        match args::key(key)? {
            None => Ok(self.default_hash),
            Some(key) => Ok(key.hash()? as u64),
        }
    }
}

/// `shards` as given: an int from 1 to `MAX_SHARDS`, or `None` for automatic.
fn shards(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let range = format!("between 1 and {MAX_SHARDS}");
    args::integer(obj, "shards", &range)?
        .map(|n| {
            usize::try_from(n)
                .map_err(|_| PyValueError::new_err(format!("shards: must be {range}, got {n}")))
        })
        .transpose()
}

/// A `str` argument that must be one of a few names.
fn name<'py>(obj: &Bound<'py, PyAny>, argument: &str) -> PyResult<Bound<'py, PyString>> {
    obj.cast::<PyString>().cloned().map_err(|_| {
        PyTypeError::new_err(format!("{argument}: must be a str, got {}", obj.get_type()))
    })
}

#[pymethods]
impl PyShardedRateLimiter {
    #[new]
    #[pyo3(
        signature = (
            rate=None, period=None, shards=None, algorithm=None, burst_size=None,
            *, scope=None, max_wait=None, clock=None, reservation_ttl=None,
            max_reservations=None,
        ),
        text_signature = "(rate, period=60.0, shards=None, algorithm='token_bucket', \
                          burst_size=None, *, scope='global', max_wait=None, clock=None, \
                          reservation_ttl=60.0, max_reservations=10000)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        rate: Option<&Bound<'_, PyAny>>,
        period: Option<&Bound<'_, PyAny>>,
        shards: Option<&Bound<'_, PyAny>>,
        algorithm: Option<&Bound<'_, PyAny>>,
        burst_size: Option<&Bound<'_, PyAny>>,
        scope: Option<&Bound<'_, PyAny>>,
        max_wait: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
        reservation_ttl: Option<&Bound<'_, PyAny>>,
        max_reservations: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rate = args::number(rate, "rate")?.ok_or_else(|| {
            PyTypeError::new_err("rate: required (tokens per period, a number > 0)")
        })?;
        let period = args::number(period, "period")?.unwrap_or(60.0);
        let burst_size = args::number(burst_size, "burst_size")?;
        let max_wait = args::number(max_wait, "max_wait")?;
        match scope.map(|s| name(s, "scope")).transpose()? {
            None => {}
            Some(s) if s == "global" => {}
            Some(s) if s == "key" => {
                return Err(PyNotImplementedError::new_err(
                    "scope=\"key\" (one budget per key) is not available yet; use \
                     scope=\"global\" (one budget shared by all keys)",
                ))
            }
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "scope: must be \"global\" or \"key\", got {:?}",
                    other.to_string()
                )))
            }
        }
        validate_max_wait(max_wait).map_err(to_py)?;
        let algorithm = match algorithm {
            None => Algorithm::TokenBucket,
            Some(obj) => Algorithm::parse(name(obj, "algorithm")?.to_str()?).map_err(to_py)?,
        };
        let quota = Quota::new(rate, period, burst_size, algorithm, self::shards(shards)?)
            .map_err(to_py)?;
        let (core_clock, clock) = match clock.filter(|c| !c.is_none()) {
            None => (Clock::monotonic(), None),
            Some(obj) => {
                let manual = obj.cast::<PyManualClock>().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "clock: must be None or a ManualClock, got {}",
                        obj.get_type()
                    ))
                })?;
                (
                    Clock::Manual(manual.get().inner.clone()),
                    Some(manual.clone().unbind()),
                )
            }
        };
        let defaults = ReservationPolicy::default();
        let policy = ReservationPolicy {
            ttl: args::number(reservation_ttl, "reservation_ttl")?.unwrap_or(defaults.ttl),
            max: match args::integer(max_reservations, "max_reservations", ">= 1")? {
                None => defaults.max,
                Some(n) => usize::try_from(n).map_err(|_| {
                    PyValueError::new_err(format!("max_reservations: must be an int >= 1, got {n}"))
                })?,
            },
        };
        let core = RateLimiter::with_reservations(quota, core_clock, policy).map_err(to_py)?;
        Ok(Self {
            core,
            default_hash: PyString::new(py, "default").hash()? as u64,
            max_wait,
            clock,
        })
    }

    /// Takes `count` tokens for `key` now, or says when to retry. Never waits.
    #[pyo3(signature = (key=None, count=None), text_signature = "($self, key='default', count=1)")]
    fn try_acquire(
        slf: &Bound<'_, Self>,
        key: Option<&Bound<'_, PyAny>>,
        count: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyRateLimitResult> {
        let this = slf.get();
        let decision = this
            .core
            .try_acquire_hashed(this.hash(key)?, args::count(count)?)
            .map_err(to_py)?;
        Ok(PyRateLimitResult::new(decision, 0.0))
    }

    #[pyo3(signature = (key, count, budget, turn=false))]
    fn _reserve<'py>(
        slf: &Bound<'py, Self>,
        key: Option<&Bound<'py, PyAny>>,
        count: Option<&Bound<'py, PyAny>>,
        budget: f64,
        turn: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let (hash, count) = (this.hash(key)?, args::count(count)?);
        let booking = if turn {
            this.core.reserve_turn(hash, count, budget)
        } else {
            this.core.reserve(hash, count, budget)
        }
        .map_err(to_py)?;
        match booking {
            Booking::Reserved(reservation) => {
                let key = match key.filter(|k| !k.is_none()) {
                    Some(key) => key.clone().unbind(),
                    None => PyString::new(py, "default").into_any().unbind(),
                };
                Bound::new(py, PyTokenReservation::new(slf, key, reservation)).map(Bound::into_any)
            }
            Booking::Refused(decision) => {
                Bound::new(py, PyRateLimitResult::new(decision, 0.0)).map(Bound::into_any)
            }
        }
    }

    /// Admits a reservation once its slot has come; charges nothing more. Refused with
    /// `not_ready` (and `retry_after`), `expired`, `cancelled`, `already_executed` or
    /// `unknown_reservation`.
    fn execute_reservation(
        slf: &Bound<'_, Self>,
        reservation_id: &Bound<'_, PyAny>,
    ) -> PyResult<PyRateLimitResult> {
        Self::_execute(slf, reservation_id, 0.0)
    }

    /// `execute_reservation` for a caller that waited `waited` seconds for the slot.
    fn _execute(
        slf: &Bound<'_, Self>,
        reservation_id: &Bound<'_, PyAny>,
        waited: f64,
    ) -> PyResult<PyRateLimitResult> {
        let id = args::reservation_id(reservation_id)?;
        let decision = slf.get().core.execute_reservation(id.to_str()?);
        Ok(PyRateLimitResult::new(decision, waited))
    }

    /// Gives a reservation's tokens back; `True` once, `False` after that or for an id that
    /// is unknown, expired or executed.
    fn _cancel(&self, reservation_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = args::reservation_id(reservation_id)?;
        Ok(self.core.cancel_reservation(id.to_str()?))
    }

    /// Whether `count` tokens were taken from this limiter and `other` together (or from
    /// neither), on the default key: the compatibility shim's hot path, without a result.
    #[pyo3(signature = (other, count=None))]
    fn _admit_with(
        &self,
        other: &Bound<'_, PyShardedRateLimiter>,
        count: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let count = args::count(count)?;
        let other = other.get();
        let parts = [
            (&self.core, self.default_hash, count),
            (&other.core, other.default_hash, count),
        ];
        Ok(RateLimiter::try_acquire_all(&parts).map_err(to_py)?.is_ok())
    }

    /// The wait bound for a call: its own `max_wait`, else the limiter's, checked.
    #[pyo3(signature = (max_wait=None))]
    fn _wait_budget(&self, max_wait: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        validate_max_wait(args::number(max_wait, "max_wait")?.or(self.max_wait)).map_err(to_py)
    }

    /// Seconds on the limiter's clock, for measuring waits.
    fn _now(&self) -> f64 {
        self.core.clock().now() as f64 / 1e9
    }

    /// Tokens available now in the budget `key` draws on, without taking any.
    #[pyo3(signature = (key=None))]
    fn peek(&self, key: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        self.hash(key)?;
        Ok(self.core.peek())
    }

    /// Refills the budget and clears the per-shard counters.
    fn reset(&self) {
        self.core.reset()
    }

    /// Changes rate, period and burst at run time; the tokens available now carry over,
    /// capped at the new burst. The algorithm and the shard count stay as made.
    #[pyo3(signature = (rate, period=None, burst_size=None))]
    fn set_rate(
        &self,
        rate: &Bound<'_, PyAny>,
        period: Option<&Bound<'_, PyAny>>,
        burst_size: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let current = self.core.quota();
        let rate = args::number(Some(rate), "rate")?
            .ok_or_else(|| PyTypeError::new_err("rate: must be a number > 0, got None"))?;
        let quota = Quota::new(
            rate,
            args::number(period, "period")?.unwrap_or(current.period),
            args::number(burst_size, "burst_size")?,
            current.algorithm,
            Some(current.shards),
        )
        .map_err(to_py)?;
        self.core.set_quota(quota).map_err(to_py)
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
        "global"
    }

    #[getter]
    fn max_wait(&self) -> Option<f64> {
        self.max_wait
    }

    #[getter]
    fn clock(&self, py: Python<'_>) -> Option<Py<PyManualClock>> {
        self.clock.as_ref().map(|c| c.clone_ref(py))
    }

    /// Configuration and live state of the budget.
    fn get_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let quota = self.core.quota();
        let status = PyDict::new(py);
        status.set_item("algorithm", quota.algorithm.name())?;
        status.set_item("scope", "global")?;
        status.set_item("rate", quota.rate)?;
        status.set_item("period", quota.period)?;
        status.set_item("burst_size", quota.burst)?;
        status.set_item("shards", quota.shards)?;
        status.set_item("max_wait", self.max_wait)?;
        status.set_item("tokens_remaining", self.core.peek())?;
        status.set_item("shard_tokens", self.core.shard_tokens())?;
        status.set_item("requests_allowed", self.core.served().iter().sum::<u64>())?;
        status.set_item("reservations", self.core.reservations())?;
        Ok(status)
    }

    /// How evenly the shards serve: always the same keys, traffic or not.
    fn get_shard_balance<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let balance = self.core.balance();
        let view = PyDict::new(py);
        view.set_item("balanced", balance.balanced())?;
        view.set_item("imbalance_ratio", balance.imbalance_ratio)?;
        view.set_item("threshold", Balance::THRESHOLD)?;
        view.set_item("most_loaded_shard", balance.most_loaded)?;
        view.set_item("least_loaded_shard", balance.least_loaded)?;
        view.set_item("distribution", balance.distribution)?;
        view.set_item("shard_tokens", self.core.shard_tokens())?;
        Ok(view)
    }

    fn __repr__(&self) -> String {
        let q = self.core.quota();
        format!(
            "ShardedRateLimiter(rate={:?}, period={:?}, shards={}, algorithm={:?}, burst_size={:?})",
            q.rate,
            q.period,
            q.shards,
            q.algorithm.name(),
            q.burst
        )
    }
}

/// One part of `try_acquire_all`: `(limiter, key, count)`.
type Part<'py> = (
    Bound<'py, PyShardedRateLimiter>,
    Option<Bound<'py, PyAny>>,
    Option<Bound<'py, PyAny>>,
);

/// Takes from every `(limiter, key, count)` part or from none (the compatibility shim's
/// minute bucket and hourly window, and its composite limiter). Returns the refusal of the
/// first part that refused, after giving back what the others took, or the last admission.
/// A refusal whose wait exceeds `max_wait` says `max_wait_exceeded`.
#[pyfunction]
#[pyo3(signature = (parts, max_wait=f64::INFINITY))]
pub(crate) fn try_acquire_all(parts: Vec<Part<'_>>, max_wait: f64) -> PyResult<PyRateLimitResult> {
    if parts.is_empty() {
        return Err(PyValueError::new_err(
            "parts: must name at least one limiter",
        ));
    }
    let mut checked = Vec::with_capacity(parts.len());
    for (limiter, key, count) in &parts {
        let this = limiter.get();
        checked.push((
            this.core(),
            this.hash(key.as_ref())?,
            args::count(count.as_ref())?,
        ));
    }
    match RateLimiter::try_acquire_all(&checked).map_err(to_py)? {
        Ok(admitted) => {
            let decision = *admitted.last().expect("one decision per part");
            Ok(PyRateLimitResult::new(decision, 0.0))
        }
        Err((_, mut refusal)) => {
            if refusal.retry_after.is_some_and(|wait| wait > max_wait) {
                refusal.reason = Some(Refusal::MaxWaitExceeded);
            }
            Ok(PyRateLimitResult::new(refusal, 0.0))
        }
    }
}
