//! The one mapping from core errors to Python exceptions.

use pyo3::exceptions::PyValueError;
use pyo3::PyErr;
use ratelimit_core::Error;

/// Every core error is a bad argument: `ValueError("<argument>: <what is allowed>")`.
pub(crate) fn to_py(err: Error) -> PyErr {
    match err {
        Error::InvalidArgument { .. } => PyValueError::new_err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::Python;

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
}
