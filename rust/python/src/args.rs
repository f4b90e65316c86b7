//! Arguments as typed values: each newtype converts one argument and, when it cannot,
//! raises an error that names the argument and says what it accepts.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};
use ratelimit_core::{Algorithm, Error, Scope, MAX_KEY_LEN, MAX_SHARDS};

use crate::clock::PyManualClock;
use crate::error::Failure;

fn type_name(obj: &Borrowed<'_, '_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

fn wrong_type(argument: &str, accepts: &str, obj: &Borrowed<'_, '_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "{argument}: must be {accepts}, got {}",
        type_name(obj)
    ))
}

/// A real number (int, float or anything with `__float__`), not a bool.
fn number(obj: Borrowed<'_, '_, PyAny>, argument: &str) -> PyResult<f64> {
    if obj.is_instance_of::<PyBool>() {
        return Err(wrong_type(argument, "a number", &obj));
    }
    obj.extract::<f64>()
        .map_err(|_| wrong_type(argument, "a number", &obj))
}

/// An int (not a bool, not a float) that fits `T`; `range` says which values are allowed.
fn integer<T: TryFrom<i64>>(
    obj: Borrowed<'_, '_, PyAny>,
    argument: &str,
    range: &str,
) -> PyResult<T> {
    if !obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyBool>() {
        return Err(wrong_type(argument, &format!("an int {range}"), &obj));
    }
    obj.extract::<i64>()
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| {
            PyValueError::new_err(format!("{argument}: must be an int {range}, got {}", &*obj))
        })
}

/// A finite number at least `min` (not a bool): what `accepts` says, or an error naming
/// `argument` and showing what was given.
fn finite(obj: Borrowed<'_, '_, PyAny>, argument: &str, accepts: &str, min: f64) -> PyResult<f64> {
    if obj.is_instance_of::<PyBool>() {
        return Err(wrong_type(argument, accepts, &obj));
    }
    match obj.extract::<f64>() {
        Ok(value) if value.is_finite() && value >= min => Ok(value),
        Ok(_) => Err(PyValueError::new_err(format!(
            "{argument}: must be {accepts}, got {}",
            &*obj
        ))),
        Err(_) if obj.is_instance_of::<PyInt>() => Err(PyValueError::new_err(format!(
            "{argument}: must be {accepts}, got an int too large for a float"
        ))),
        Err(_) => Err(wrong_type(argument, accepts, &obj)),
    }
}

/// A `str` argument.
fn string<'a, 'py>(
    obj: Borrowed<'a, 'py, PyAny>,
    argument: &str,
) -> PyResult<Borrowed<'a, 'py, PyString>> {
    obj.cast::<PyString>()
        .map_err(|_| wrong_type(argument, "a str", &obj))
}

/// Newtypes over `f64` for arguments that take a number; the core checks the range.
macro_rules! numbers {
    ($($name:ident = $argument:literal),* $(,)?) => {$(
        #[doc = concat!("`", $argument, "`: a number.")]
        pub(crate) struct $name(pub(crate) f64);

        impl<'a, 'py> FromPyObject<'a, 'py> for $name {
            type Error = PyErr;

            fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                number(obj, $argument).map(Self)
            }
        }
    )*};
}

numbers!(
    Rate = "rate",
    Period = "period",
    BurstSize = "burst_size",
    MaxWait = "max_wait",
    ReservationTtl = "reservation_ttl",
    ReservationGrace = "reservation_grace",
    Waited = "waited",
    Seconds = "seconds",
    DecreaseFactor = "decrease",
    MinRate = "min_rate",
    Increase = "increase",
    Start = "start",
    RebalanceThreshold = "rebalance_threshold",
    RebalanceInterval = "rebalance_interval",
);

/// `shards`: an int from 1 to `MAX_SHARDS`.
pub(crate) struct Shards(pub(crate) usize);

impl<'a, 'py> FromPyObject<'a, 'py> for Shards {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        integer(obj, "shards", &format!("between 1 and {MAX_SHARDS}")).map(Self)
    }
}

/// `max_reservations`: an int >= 1.
pub(crate) struct MaxReservations(pub(crate) usize);

impl<'a, 'py> FromPyObject<'a, 'py> for MaxReservations {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        integer(obj, "max_reservations", ">= 1").map(Self)
    }
}

/// `max_keys`: an int >= 1.
pub(crate) struct MaxKeys(pub(crate) usize);

impl<'a, 'py> FromPyObject<'a, 'py> for MaxKeys {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        integer(obj, "max_keys", ">= 1").map(Self)
    }
}

/// A token count given as `argument`: an int >= 1. Counts too large for 64 bits exceed any
/// burst, so they become `u64::MAX` and are refused as `exceeds_capacity` like any count
/// above it.
#[inline]
fn token_count(obj: Borrowed<'_, '_, PyAny>, argument: &str) -> PyResult<u64> {
    // The core's complaint about a count, under the caller's name for it.
    let refuse = |got: &dyn std::fmt::Display| match Error::invalid_count(got) {
        Error::InvalidArgument { message, .. } => {
            PyValueError::new_err(format!("{argument}: {message}"))
        }
        other => Failure::from(other).into(),
    };
    let int = obj
        .cast::<PyInt>()
        .ok()
        .filter(|_| !obj.is_instance_of::<PyBool>())
        .ok_or_else(|| wrong_type(argument, "an int >= 1", &obj))?;
    match int.extract::<i64>() {
        Ok(n) if n >= 1 => Ok(n as u64),
        Ok(n) => Err(refuse(&n)),
        Err(_) if int.gt(0)? => Ok(u64::MAX),
        Err(_) => Err(refuse(&*int)),
    }
}

/// `count`: a token count (see [`token_count`]).
#[derive(Clone, Copy)]
pub(crate) struct Count(pub(crate) u64);

impl Count {
    pub(crate) const ONE: Count = Count(1);
}

impl<'a, 'py> FromPyObject<'a, 'py> for Count {
    type Error = PyErr;

    #[inline]
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        token_count(obj, "count").map(Self)
    }
}

/// `tokens`: the previous API's name for a count.
#[derive(Clone, Copy)]
pub(crate) struct Tokens(pub(crate) u64);

impl<'a, 'py> FromPyObject<'a, 'py> for Tokens {
    type Error = PyErr;

    #[inline]
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        token_count(obj, "tokens").map(Self)
    }
}

/// `key`: a `str` of at most `MAX_KEY_LEN` characters; when left out, the default key.
pub(crate) enum Key<'py> {
    Default,
    Given(Bound<'py, PyString>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Key<'py> {
    type Error = PyErr;

    #[inline]
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let key = string(obj, "key")?;
        let len = key.len()?;
        if len > MAX_KEY_LEN {
            return Err(PyValueError::new_err(format!(
                "key: must be at most {MAX_KEY_LEN} characters, got {len}"
            )));
        }
        Ok(Key::Given(key.to_owned()))
    }
}

/// `algorithm`: one of `ALGORITHMS`.
pub(crate) struct AlgorithmArg(pub(crate) Algorithm);

impl<'a, 'py> FromPyObject<'a, 'py> for AlgorithmArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let name = string(obj, "algorithm")?;
        Ok(Self(
            Algorithm::parse(name.to_str()?).map_err(Failure::from)?,
        ))
    }
}

/// `scope`: `"global"` (or `"key"`, not yet available).
pub(crate) struct ScopeArg(pub(crate) Scope);

impl<'a, 'py> FromPyObject<'a, 'py> for ScopeArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let name = string(obj, "scope")?;
        Ok(Self(Scope::parse(name.to_str()?).map_err(Failure::from)?))
    }
}

/// `clock`: a `ManualClock`.
pub(crate) struct ClockArg<'py>(pub(crate) Bound<'py, PyManualClock>);

impl<'a, 'py> FromPyObject<'a, 'py> for ClockArg<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.cast::<PyManualClock>()
            .map(|clock| Self(clock.to_owned()))
            .map_err(|_| wrong_type("clock", "None or a ManualClock", &obj))
    }
}

/// `reservation_id`: the `str` a `TokenReservation` carries.
pub(crate) struct ReservationId<'a, 'py>(pub(crate) Borrowed<'a, 'py, PyString>);

impl<'a, 'py> FromPyObject<'a, 'py> for ReservationId<'a, 'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        string(obj, "reservation_id")
            .map(Self)
            .map_err(|_| wrong_type("reservation_id", "a str (a TokenReservation's id)", &obj))
    }
}

/// Newtypes over `f64` for arguments that take a finite number of at least a minimum; each
/// says what it accepts (`None` too, where the parameter has a `None` default).
macro_rules! finite_numbers {
    ($($name:ident = $argument:literal, $accepts:literal, $min:expr);* $(;)?) => {$(
        #[doc = concat!("`", $argument, "`: ", $accepts, ".")]
        pub(crate) struct $name(pub(crate) f64);

        impl<'a, 'py> FromPyObject<'a, 'py> for $name {
            type Error = PyErr;

            fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                finite(obj, $argument, $accepts, $min).map(Self)
            }
        }
    )*};
}

finite_numbers!(
    RetryAfter = "retry_after", "None or a finite number >= 0", 0.0;
    TokensRemaining = "tokens_remaining", "None or a finite number >= 0", 0.0;
    ReservedAt = "reserved_at", "None or a finite number (epoch seconds)", f64::NEG_INFINITY;
    ExecuteAt = "execute_at", "None or a finite number (epoch seconds)", f64::NEG_INFINITY;
    ExpiresAt = "expires_at", "None or a finite number (epoch seconds)", f64::NEG_INFINITY;
    Delay = "seconds", "a finite number >= 0", 0.0;
);

/// `allowed`: a bool (not an int or any other truthy value).
pub(crate) struct Allowed(pub(crate) bool);

impl<'a, 'py> FromPyObject<'a, 'py> for Allowed {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.cast::<PyBool>()
            .map(|b| Self(b.is_true()))
            .map_err(|_| wrong_type("allowed", "a bool", &obj))
    }
}

/// `shard_id` of a result or reservation made by hand: `None` or a shard index.
pub(crate) struct ShardId(pub(crate) usize);

impl<'a, 'py> FromPyObject<'a, 'py> for ShardId {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let range = format!("between 0 and {}", MAX_SHARDS - 1);
        if !obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyBool>() {
            return Err(wrong_type(
                "shard_id",
                &format!("None or an int {range}"),
                &obj,
            ));
        }
        let shard: usize = integer(obj, "shard_id", &range)?;
        match shard < MAX_SHARDS {
            true => Ok(Self(shard)),
            false => Err(PyValueError::new_err(format!(
                "shard_id: must be an int {range}, got {shard}"
            ))),
        }
    }
}

/// `reason` of a result made by hand: `None` or any `str`, kept as given.
pub(crate) struct ReasonArg(pub(crate) Py<PyString>);

impl<'a, 'py> FromPyObject<'a, 'py> for ReasonArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.cast::<PyString>()
            .map(|text| Self(text.to_owned().unbind()))
            .map_err(|_| wrong_type("reason", "None or a str", &obj))
    }
}

/// `id` of a reservation made by hand: `None` (a new `uuid4` string) or a `str`.
pub(crate) struct IdArg(pub(crate) String);

impl<'a, 'py> FromPyObject<'a, 'py> for IdArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let id = obj
            .cast::<PyString>()
            .map_err(|_| wrong_type("id", "None or a str", &obj))?;
        Ok(Self(id.to_str()?.to_owned()))
    }
}

/// `count` of a reservation made by hand: the tokens it stands for, an int from 1 to
/// `u64::MAX` (kept exactly, unlike a request's count, which any burst refuses above that).
pub(crate) struct ReservedCount(pub(crate) u64);

impl<'a, 'py> FromPyObject<'a, 'py> for ReservedCount {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let int = obj
            .cast::<PyInt>()
            .ok()
            .filter(|_| !obj.is_instance_of::<PyBool>())
            .ok_or_else(|| wrong_type("count", "an int >= 1", &obj))?;
        match int.extract::<u64>() {
            Ok(n) if n >= 1 => Ok(Self(n)),
            Err(_) if int.gt(0)? => Err(PyValueError::new_err(format!(
                "count: must be an int from 1 to {}, got {}",
                u64::MAX,
                &*int
            ))),
            _ => Err(PyValueError::new_err(format!(
                "count: must be an int >= 1, got {}",
                &*int
            ))),
        }
    }
}
