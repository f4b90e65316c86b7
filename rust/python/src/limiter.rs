//! `ShardedRateLimiter`'s native base: construction, the non-blocking calls and the
//! status views. Waiting (asyncio or threads) is done by the Python subclass.

use pyo3::exceptions::{PyNotImplementedError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use ratelimit_core::{
    validate_max_wait, Algorithm, Balance, Clock, Error, Quota, RateLimiter, MAX_KEY_LEN,
};

use crate::clock::PyManualClock;
use crate::error::to_py;
use crate::result::PyRateLimitResult;

/// How often a blocked thread wakes to check for signals.
const SIGNAL_CHECK_NANOS: u64 = 50_000_000;

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
    /// The shard-choosing hash of a key: Python's own string hash, cached in the string.
    #[inline]
    fn hash(&self, key: Option<&Bound<'_, PyString>>) -> PyResult<u64> {
        match key {
            None => Ok(self.default_hash),
            Some(key) => {
                if key.len()? > MAX_KEY_LEN {
                    return Err(PyValueError::new_err(format!(
                        "key: must be at most {MAX_KEY_LEN} characters, got {}",
                        key.len()?
                    )));
                }
                Ok(key.hash()? as u64)
            }
        }
    }

    fn quota_with(
        &self,
        rate: f64,
        period: Option<f64>,
        burst_size: Option<f64>,
        shards: Option<usize>,
    ) -> PyResult<Quota> {
        let current = self.core.quota();
        Quota::new(
            rate,
            period.unwrap_or(current.period),
            burst_size,
            current.algorithm,
            Some(shards.unwrap_or(current.shards)),
        )
        .map_err(to_py)
    }
}

fn count(count: i64) -> PyResult<u64> {
    u64::try_from(count)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| to_py(Error::invalid_count(&count)))
}

#[pymethods]
impl PyShardedRateLimiter {
    #[new]
    #[pyo3(signature = (
        rate=None, period=60.0, shards=None, algorithm="token_bucket", burst_size=None,
        *, scope="global", max_wait=None, clock=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        rate: Option<f64>,
        period: f64,
        shards: Option<i64>,
        algorithm: &str,
        burst_size: Option<f64>,
        scope: &str,
        max_wait: Option<f64>,
        clock: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rate = rate.ok_or_else(|| {
            PyTypeError::new_err("rate: required (tokens per period, a number > 0)")
        })?;
        match scope {
            "global" => {}
            "key" => {
                return Err(PyNotImplementedError::new_err(
                    "scope=\"key\" (one budget per key) is not available yet; use \
                     scope=\"global\" (one budget shared by all keys)",
                ))
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "scope: must be \"global\" or \"key\", got {other:?}"
                )))
            }
        }
        let shards = shards
            .map(|n| {
                usize::try_from(n).map_err(|_| {
                    PyValueError::new_err(format!(
                        "shards: must be between 1 and {}, got {n}",
                        ratelimit_core::MAX_SHARDS
                    ))
                })
            })
            .transpose()?;
        validate_max_wait(max_wait).map_err(to_py)?;
        let algorithm = Algorithm::parse(algorithm).map_err(to_py)?;
        let quota = Quota::new(rate, period, burst_size, algorithm, shards).map_err(to_py)?;
        let (core_clock, clock) = match clock {
            None => (Clock::monotonic(), None),
            Some(obj) => {
                let manual = obj.cast_into::<PyManualClock>().map_err(|e| {
                    PyTypeError::new_err(format!(
                        "clock: must be None or a ManualClock, got {}",
                        e.into_inner()
                            .get_type()
                            .name()
                            .map_or("?".into(), |n| n.to_string())
                    ))
                })?;
                (
                    Clock::Manual(manual.get().inner.clone()),
                    Some(manual.unbind()),
                )
            }
        };
        Ok(Self {
            core: RateLimiter::new(quota, core_clock).map_err(to_py)?,
            default_hash: PyString::new(py, "default").hash()? as u64,
            max_wait,
            clock,
        })
    }

    /// Takes `count` tokens for `key` now, or says when to retry. Never waits.
    #[pyo3(signature = (key=None, count=1))]
    fn try_acquire(
        &self,
        key: Option<&Bound<'_, PyString>>,
        count: i64,
    ) -> PyResult<PyRateLimitResult> {
        let decision = self
            .core
            .try_acquire_hashed(self.hash(key)?, self::count(count)?)
            .map_err(to_py)?;
        Ok(PyRateLimitResult::from_decision(decision, 0.0))
    }

    /// One step of a waiting acquire: admitted, refused for good, or refused with
    /// reason "rate_limited" and `retry_after` within `budget` seconds (wait, then ask again).
    #[pyo3(signature = (key, count, budget, waited))]
    fn _acquire_step(
        &self,
        key: Option<&Bound<'_, PyString>>,
        count: i64,
        budget: f64,
        waited: f64,
    ) -> PyResult<PyRateLimitResult> {
        let decision = self
            .core
            .try_acquire_within(self.hash(key)?, self::count(count)?, budget - waited)
            .map_err(to_py)?;
        Ok(PyRateLimitResult::from_decision(decision, waited))
    }

    /// A whole waiting acquire for a thread: decides and sleeps with the GIL released,
    /// waking every 50 ms to let Ctrl-C (or any signal handler's exception) through.
    #[pyo3(signature = (key, count, budget))]
    fn _acquire_blocking(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyString>>,
        count: i64,
        budget: f64,
    ) -> PyResult<PyRateLimitResult> {
        let (hash, count) = (self.hash(key)?, self::count(count)?);
        let mut interrupted = None;
        let outcome = py.detach(|| {
            self.core
                .acquire_blocking(hash, count, budget, SIGNAL_CHECK_NANOS, || {
                    Python::attach(|py| py.check_signals())
                        .map_err(|err| interrupted = Some(err))
                        .is_ok()
                })
        });
        match (outcome.map_err(to_py)?, interrupted) {
            (Some((decision, waited)), _) => Ok(PyRateLimitResult::from_decision(decision, waited)),
            (None, Some(err)) => Err(err),
            (None, None) => unreachable!("a wait stops early only when interrupted"),
        }
    }

    /// The wait bound for a call: its own `max_wait`, else the limiter's, checked.
    #[pyo3(signature = (max_wait=None))]
    fn _wait_budget(&self, max_wait: Option<f64>) -> PyResult<f64> {
        validate_max_wait(max_wait.or(self.max_wait)).map_err(to_py)
    }

    /// Seconds on the limiter's clock, for measuring waits.
    fn _now(&self) -> f64 {
        self.core.clock().now() as f64 / 1e9
    }

    /// Tokens available now in the budget `key` draws on, without taking any.
    #[pyo3(signature = (key=None))]
    fn peek(&self, key: Option<&Bound<'_, PyString>>) -> PyResult<f64> {
        self.hash(key)?;
        Ok(self.core.peek())
    }

    /// Refills the budget and clears the per-shard counters.
    fn reset(&self) {
        self.core.reset()
    }

    /// Changes the rate (and optionally period, burst and shard count) at run time; the
    /// tokens available now carry over, capped at the new burst.
    #[pyo3(signature = (rate, period=None, burst_size=None, shards=None))]
    fn set_rate(
        &self,
        rate: f64,
        period: Option<f64>,
        burst_size: Option<f64>,
        shards: Option<usize>,
    ) -> PyResult<()> {
        let quota = self.quota_with(rate, period, burst_size, shards)?;
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
