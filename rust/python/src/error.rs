//! The one mapping from core errors to Python exceptions.

use pyo3::exceptions::PyValueError;
use pyo3::PyErr;
use ratelimit_core::Error;

pyo3::import_exception!(flashcard_pipeline.exceptions, RateLimitError);

/// A bad argument is `ValueError("<argument>: <what is allowed>")`; a full reservation book
/// is the package's `RateLimitError`, like any other refusal that raises.
pub(crate) fn to_py(err: Error) -> PyErr {
    match err {
        Error::InvalidArgument { .. } => PyValueError::new_err(err.to_string()),
        Error::TooManyReservations { .. } => RateLimitError::new_err((err.to_string(),)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::prelude::*;

    /// Makes the package's pure-Python modules importable in the test interpreter.
    fn with_package(py: Python<'_>) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../python");
        py.import("sys")
            .and_then(|sys| sys.getattr("path"))
            .and_then(|p| p.call_method1("insert", (0, path)))
            .unwrap();
    }

    #[test]
    fn invalid_argument_is_a_value_error_naming_the_argument() {
        Python::initialize();
        Python::attach(|py| {
            let err = to_py(ratelimit_core::validate_max_wait(Some(-1.0)).unwrap_err());
            assert!(err.is_instance_of::<PyValueError>(py));
            assert!(
                err.to_string().starts_with("ValueError: max_wait: "),
                "{err}"
            );
        });
    }

    #[test]
    fn a_full_reservation_book_is_a_rate_limit_error() {
        Python::initialize();
        Python::attach(|py| {
            with_package(py);
            let err = to_py(Error::TooManyReservations { max: 3 });
            assert!(err.is_instance_of::<RateLimitError>(py), "{err}");
            assert!(err.to_string().contains("max_reservations"), "{err}");
        });
    }
}
