//! `RateLimitResult`: one decision, truthy when allowed and awaitable as itself.

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use ratelimit_core::Decision;

/// The answer to one request.
///
/// `bool(result)` is `result.allowed`. Awaiting a result gives the result itself, so
/// `await limiter.try_acquire()` and `limiter.try_acquire()` both work.
#[pyclass(
    frozen,
    freelist = 64,
    module = "flashcard_pipeline._native",
    name = "RateLimitResult"
)]
pub(crate) struct PyRateLimitResult {
    #[pyo3(get)]
    allowed: bool,
    /// The decision's free units and units per token (`tokens_remaining`), fixed with it.
    remaining_units: u64,
    unit: u64,
    #[pyo3(get)]
    retry_after: Option<f64>,
    #[pyo3(get)]
    shard_id: usize,
    #[pyo3(get)]
    reason: Option<&'static str>,
    /// Seconds the call waited before this answer.
    #[pyo3(get)]
    waited: f64,
}

impl PyRateLimitResult {
    pub(crate) fn new(decision: Decision, waited: f64) -> Self {
        Self {
            allowed: decision.allowed,
            // Every decision the binding asks for is tallied; a check would say 0 here.
            remaining_units: decision.remaining_units.unwrap_or(0),
            unit: decision.unit,
            retry_after: decision.retry_after,
            shard_id: decision.shard,
            reason: decision.reason.map(|r| r.code()),
            waited,
        }
    }
}

/// The iterator behind `await result` (and `await reservation`): it finishes at once with
/// the object as its value, and is iterable too, so `asyncio.gather`, `wait_for` and
/// `ensure_future` accept it.
#[pyclass(frozen, freelist = 16, module = "flashcard_pipeline._native")]
pub(crate) struct Ready {
    value: Py<PyAny>,
}

impl Ready {
    pub(crate) fn new(value: Bound<'_, PyAny>) -> Self {
        Self {
            value: value.unbind(),
        }
    }
}

#[pymethods]
impl Ready {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<()>> {
        Err(PyStopIteration::new_err(self.value.clone_ref(py)))
    }
}

#[pymethods]
impl PyRateLimitResult {
    /// Tokens a `try_acquire` could take right after the decision, fixed with it.
    #[getter]
    fn tokens_remaining(&self) -> f64 {
        self.remaining_units as f64 / self.unit as f64
    }

    fn __bool__(&self) -> bool {
        self.allowed
    }

    fn __await__(slf: Bound<'_, Self>) -> Ready {
        Ready::new(slf.into_any())
    }

    fn __repr__(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "None".into());
        format!(
            "RateLimitResult(allowed={}, tokens_remaining={:?}, retry_after={}, shard_id={}, \
             reason={}, waited={:?})",
            if self.allowed { "True" } else { "False" },
            self.tokens_remaining(),
            opt(self.retry_after.map(|r| format!("{r:?}"))),
            self.shard_id,
            opt(self.reason.map(|r| format!("'{r}'"))),
            self.waited
        )
    }
}
