//! `flashcard_pipeline._native`: the Python face of `ratelimit-core`. Only conversions
//! live here; every decision is the core's.

use pyo3::prelude::*;

mod args;
mod clock;
mod engine;
mod error;
mod redis_budget;
mod reservation;
mod result;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_KEY_LEN", ratelimit_core::MAX_KEY_LEN)?;
    m.add("ALGORITHMS", ratelimit_core::Algorithm::NAMES.to_vec())?;
    m.add("REBALANCE_THRESHOLD", ratelimit_core::Balance::THRESHOLD)?;
    m.add_class::<clock::PyManualClock>()?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<result::PyRateLimitResult>()?;
    m.add_class::<reservation::PyTokenReservation>()?;
    m.add_class::<engine::PyEngineGroup>()?;
    m.add_class::<redis_budget::PyRedisEngine>()?;
    m.add_class::<redis_budget::PyRedisTurn>()?;
    m.add_class::<redis_budget::PyCompletions>()?;
    m.add_function(wrap_pyfunction!(clock::sleep, m)?)?;
    m.add_function(wrap_pyfunction!(redis_budget::check_namespace, m)?)?;
    Ok(())
}
