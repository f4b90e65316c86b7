//! The one mapping from errors to Python exceptions.

use pyo3::exceptions::{PyConnectionError, PyPermissionError, PyValueError};
use pyo3::PyErr;
use ratelimit_core::Error;

pyo3::import_exception!(flashcard_pipeline.exceptions, RateLimitError);

/// Why a call failed: the core refused an argument or a request, or Python raised.
/// Every binding call returns it, so `?` works on both and Python sees one mapping.
#[derive(Debug)]
pub(crate) enum Failure {
    Core(Error),
    Py(PyErr),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Core(err)
    }
}

impl From<PyErr> for Failure {
    fn from(err: PyErr) -> Self {
        Failure::Py(err)
    }
}

/// A bad argument is `ValueError("<argument>: <what is allowed>")`, a full reservation book
/// is the package's `RateLimitError`, like any other refusal that raises, and a store that
/// did not answer is a `ConnectionError`.
impl From<Failure> for PyErr {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Py(err) => err,
            Failure::Core(err @ Error::InvalidArgument { .. }) => {
                PyValueError::new_err(err.to_string())
            }
            Failure::Core(err @ Error::TooManyReservations { .. }) => {
                RateLimitError::new_err((err.to_string(),))
            }
            Failure::Core(err @ Error::Unavailable { .. }) => {
                PyConnectionError::new_err(err.to_string())
            }
            Failure::Core(err @ Error::Denied { .. }) => {
                PyPermissionError::new_err(err.to_string())
            }
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, Failure>;

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
            let err = PyErr::from(Failure::from(
                ratelimit_core::validate_max_wait(Some(-1.0)).unwrap_err(),
            ));
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
            let err = PyErr::from(Failure::from(Error::TooManyReservations { max: 3 }));
            assert!(err.is_instance_of::<RateLimitError>(py), "{err}");
            assert!(err.to_string().contains("max_reservations"), "{err}");
        });
    }

    #[test]
    fn a_store_that_did_not_answer_is_a_connection_error() {
        Python::initialize();
        Python::attach(|py| {
            let cause = "timed out after 50 ms".to_string();
            let err = PyErr::from(Failure::from(Error::Unavailable { cause }));
            assert!(err.is_instance_of::<PyConnectionError>(py), "{err}");
            assert!(
                err.to_string().contains("did not answer: timed out"),
                "{err}"
            );
        });
    }
}
