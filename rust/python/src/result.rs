//! `RateLimitResult`: one decision, truthy when allowed and awaitable as itself.

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use ratelimit_core::{Decision, Refusal};

use crate::args::{Allowed, ReasonArg, RetryAfter, ShardId, TokensRemaining};

/// `tokens_remaining` in the 16 bytes it always took: the decision's free units and units
/// per token (`unit >= 1`), divided only when read, so the hot path does no division; or,
/// in a result made by hand (`unit == 0`), the given value's bits, `None` as `NONE_BITS`.
#[derive(Clone, Copy)]
struct Tokens {
    units: u64,
    unit: u64,
}

impl Tokens {
    /// A NaN: never a given value, which is finite.
    const NONE_BITS: u64 = f64::NAN.to_bits();

    fn decided(units: u64, unit: u64) -> Self {
        Self {
            units,
            unit: unit.max(1),
        }
    }

    fn given(tokens: Option<f64>) -> Self {
        Self {
            units: tokens.map_or(Self::NONE_BITS, f64::to_bits),
            unit: 0,
        }
    }

    fn get(self) -> Option<f64> {
        match (self.unit, self.units) {
            (0, Self::NONE_BITS) => None,
            (0, bits) => Some(f64::from_bits(bits)),
            (unit, units) => Some(units as f64 / unit as f64),
        }
    }
}

/// A result made by hand without a shard: `shard_id` is `None`. Never a shard index, which
/// is below `MAX_SHARDS` (the engine's, and `ShardId`'s range).
const NO_SHARD: usize = usize::MAX;

/// `reason`: a refusal of the engine (a byte, its code a static str), or a caller's text.
enum Reason {
    Code(Refusal),
    Text(Py<PyString>),
}

/// The answer to one request.
///
/// `bool(result)` is `result.allowed`. Awaiting a result gives the result itself, so
/// `await limiter.try_acquire()` and `limiter.try_acquire()` both work.
///
/// Results made by a limiter always carry a number in `tokens_remaining` and `shard_id`,
/// and `reason` is `None` or one of the engine's codes. Results made by calling the class,
/// `RateLimitResult(allowed, retry_after=None, tokens_remaining=None, shard_id=None,
/// reason=None)` as the previous version's dataclass was, keep what they were given
/// (`None` included, any `reason` text) and have `waited` 0.0.
///
/// Results compare equal, as dataclasses do, when `allowed`, `retry_after`,
/// `tokens_remaining`, `shard_id`, `reason` and `waited` are equal; they are immutable, so
/// they hash by the same fields.
#[pyclass(
    frozen,
    freelist = 64,
    module = "flashcard_pipeline._native",
    name = "RateLimitResult"
)]
pub(crate) struct PyRateLimitResult {
    #[pyo3(get)]
    allowed: bool,
    tokens: Tokens,
    #[pyo3(get)]
    retry_after: Option<f64>,
    /// `NO_SHARD` in a result made by hand without one.
    shard: usize,
    reason: Option<Reason>,
    /// Seconds the call waited before this answer.
    #[pyo3(get)]
    waited: f64,
}

impl PyRateLimitResult {
    pub(crate) fn new(decision: Decision, waited: f64) -> Self {
        Self {
            allowed: decision.allowed,
            // Every decision the binding asks for is tallied; a check would say 0 here.
            tokens: Tokens::decided(decision.remaining_units.unwrap_or(0), decision.unit),
            retry_after: decision.retry_after,
            shard: decision.shard,
            reason: decision.reason.map(Reason::Code),
            waited,
        }
    }

    /// The fields `==` and `hash()` look at, in the dataclass's order, then `waited`.
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        (
            self.allowed,
            self.retry_after,
            self.tokens_remaining(),
            self.shard_id(),
            self.reason(py),
            self.waited,
        )
            .into_pyobject(py)
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
    /// A result made by hand, as the previous version's dataclass was: `allowed` a bool,
    /// `retry_after` and `tokens_remaining` None or a finite number >= 0, `shard_id` None or
    /// a shard index, `reason` None or any str. `waited` is 0.0.
    #[new]
    #[pyo3(
        signature = (allowed, retry_after=None, tokens_remaining=None, shard_id=None, reason=None),
        text_signature = "(allowed, retry_after=None, tokens_remaining=None, shard_id=None, \
                          reason=None)"
    )]
    fn py_new(
        allowed: Allowed,
        retry_after: Option<RetryAfter>,
        tokens_remaining: Option<TokensRemaining>,
        shard_id: Option<ShardId>,
        reason: Option<ReasonArg>,
    ) -> Self {
        Self {
            allowed: allowed.0,
            tokens: Tokens::given(tokens_remaining.map(|t| t.0)),
            retry_after: retry_after.map(|r| r.0),
            shard: shard_id.map_or(NO_SHARD, |s| s.0),
            reason: reason.map(|r| Reason::Text(r.0)),
            waited: 0.0,
        }
    }

    /// Tokens a `try_acquire` could take right after the decision, fixed with it (`None`
    /// only in a result made by hand without it).
    #[getter]
    fn tokens_remaining(&self) -> Option<f64> {
        self.tokens.get()
    }

    /// The shard that served (or would have served) the request (`None` only in a result
    /// made by hand without it).
    #[getter]
    fn shard_id(&self) -> Option<usize> {
        (self.shard != NO_SHARD).then_some(self.shard)
    }

    /// Why the request was refused: `None` when allowed, else one of the engine's codes
    /// (`rate_limited`, `max_wait_exceeded`, ...), or the text a result made by hand was given.
    #[getter]
    fn reason<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        self.reason.as_ref().map(|reason| match reason {
            Reason::Code(refusal) => PyString::new(py, refusal.code()),
            Reason::Text(text) => text.bind(py).clone(),
        })
    }

    fn __bool__(&self) -> bool {
        self.allowed
    }

    fn __await__(slf: Bound<'_, Self>) -> Ready {
        Ready::new(slf.into_any())
    }

    /// Equal fields, as a dataclass compares; any other type is `NotImplemented`.
    fn __eq__(&self, other: &Self, py: Python<'_>) -> PyResult<bool> {
        self.fields(py)?.eq(other.fields(py)?)
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.fields(py)?.hash()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "None".into());
        format!(
            "RateLimitResult(allowed={}, tokens_remaining={}, retry_after={}, shard_id={}, \
             reason={}, waited={:?})",
            if self.allowed { "True" } else { "False" },
            opt(self.tokens_remaining().map(|t| format!("{t:?}"))),
            opt(self.retry_after.map(|r| format!("{r:?}"))),
            opt(self.shard_id().map(|s| s.to_string())),
            opt(self
                .reason(py)
                .map(|r| r.repr().map_or_else(|_| "?".into(), |r| r.to_string()))),
            self.waited
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_a_decisions_units_and_a_given_value() {
        assert_eq!(Tokens::decided(3, 2).get(), Some(1.5));
        assert_eq!(Tokens::decided(0, 7).get(), Some(0.0));
        assert_eq!(Tokens::given(None).get(), None);
        assert_eq!(Tokens::given(Some(0.0)).get(), Some(0.0));
        assert_eq!(Tokens::given(Some(99.25)).get(), Some(99.25));
        assert_eq!(std::mem::size_of::<Tokens>(), 16);
        assert_eq!(std::mem::size_of::<Option<Reason>>(), 16);
    }
}
