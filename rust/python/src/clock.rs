//! `ManualClock`: time that tests move by hand; `sleep`: real time waited on time.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use ratelimit_core::{Clock, ManualClock};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{Seconds, Start};
use crate::error::Result;

/// A clock that stands still until advanced, for tests that must not sleep.
///
/// Limiters made with `clock=ManualClock()` read it instead of the monotonic clock, and
/// their waits advance it instead of sleeping.
#[pyclass(frozen, module = "flashcard_pipeline._native", name = "ManualClock")]
pub(crate) struct PyManualClock {
    pub(crate) inner: Arc<ManualClock>,
}

#[pymethods]
impl PyManualClock {
    /// `start` is the epoch time (as `time.time()` counts) that the clock's zero stands for.
    #[new]
    #[pyo3(signature = (start=Start(0.0)), text_signature = "(start=0.0)")]
    fn new(start: Start) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(ManualClock::starting_at(start.0)?),
        })
    }

    /// Seconds since the clock was made.
    fn monotonic(&self) -> f64 {
        self.inner.now() as f64 / 1e9
    }

    /// Epoch seconds: `start` plus the time advanced so far.
    fn time(&self) -> f64 {
        Clock::Manual(self.inner.clone()).to_epoch(self.inner.now())
    }

    /// Moves the clock forward by `seconds` (rounded up to a nanosecond).
    fn advance(&self, seconds: Seconds) -> Result<()> {
        Ok(self.inner.advance_seconds(seconds.0)?)
    }

    fn __repr__(&self) -> String {
        format!("ManualClock(monotonic={})", self.monotonic())
    }
}

/// The last stretch of a real-clock wait that is spun rather than slept: the OS wakes a
/// sleeper tens of microseconds late, and with a small burst every microsecond a waiter
/// comes late is refill nobody can use.
const SPIN: Duration = Duration::from_micros(200);

/// Sleeps `seconds` with the GIL released and wakes on time: the OS sleeps all but the last
/// 200 µs, which are spun.
#[pyfunction]
#[pyo3(text_signature = "(seconds)")]
pub(crate) fn sleep(py: Python<'_>, seconds: Seconds) -> PyResult<()> {
    let wait = Duration::try_from_secs_f64(seconds.0).map_err(|_| {
        PyValueError::new_err(format!(
            "seconds: must be a finite number >= 0, got {}",
            seconds.0
        ))
    })?;
    py.detach(|| {
        let until = Instant::now() + wait;
        if let Some(sleep) = wait.checked_sub(SPIN) {
            std::thread::sleep(sleep);
        }
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    });
    Ok(())
}
