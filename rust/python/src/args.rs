//! Argument conversion with errors that name the argument and say what it accepts.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};
use ratelimit_core::{Error, MAX_KEY_LEN};

use crate::error::to_py;

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

/// A real number (int, float or anything with `__float__`); `None` stays `None`.
pub(crate) fn number(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<f64>> {
    match obj {
        Some(obj) if !obj.is_none() => obj.extract::<f64>().map(Some).map_err(|_| {
            PyTypeError::new_err(format!("{name}: must be a number, got {}", type_name(obj)))
        }),
        _ => Ok(None),
    }
}

/// An int (no floats); `None` stays `None`. Out-of-range values are a `ValueError` that
/// states `range`.
pub(crate) fn integer(
    obj: Option<&Bound<'_, PyAny>>,
    name: &str,
    range: &str,
) -> PyResult<Option<i64>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if !obj.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{name}: must be an int {range}, got {}",
            type_name(obj)
        )));
    }
    obj.extract::<i64>()
        .map(Some)
        .map_err(|_| PyValueError::new_err(format!("{name}: must be an int {range}, got {obj}")))
}

/// A key: a `str` of at most `MAX_KEY_LEN` characters; `None` is the default key.
#[inline]
pub(crate) fn key<'a, 'py>(
    obj: Option<&'a Bound<'py, PyAny>>,
) -> PyResult<Option<&'a Bound<'py, PyString>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let key = obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("key: must be a str, got {}", type_name(obj))))?;
    let len = key.len()?;
    if len > MAX_KEY_LEN {
        return Err(PyValueError::new_err(format!(
            "key: must be at most {MAX_KEY_LEN} characters, got {len}"
        )));
    }
    Ok(Some(key))
}

/// A token count: an int >= 1. Counts too large for 64 bits exceed any burst, so they
/// become `u64::MAX` and are refused as `exceeds_capacity` like any count above the burst.
#[inline]
pub(crate) fn count(obj: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
    let Some(obj) = obj else { return Ok(1) };
    let int = obj.cast::<PyInt>().map_err(|_| {
        PyTypeError::new_err(format!(
            "count: must be an int >= 1, got {}",
            type_name(obj)
        ))
    })?;
    match int.extract::<i64>() {
        Ok(n) if n >= 1 => Ok(n as u64),
        Ok(n) => Err(to_py(Error::invalid_count(&n))),
        Err(_) if int.gt(0)? => Ok(u64::MAX),
        Err(_) => Err(to_py(Error::invalid_count(int))),
    }
}

/// A reservation id: the `str` a `TokenReservation` carries.
pub(crate) fn reservation_id<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
) -> PyResult<&'a Bound<'py, PyString>> {
    obj.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "reservation_id: must be a str (a TokenReservation's id), got {}",
            type_name(obj)
        ))
    })
}
