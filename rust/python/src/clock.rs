//! `ManualClock`: time that tests move by hand.

use pyo3::prelude::*;
use ratelimit_core::{Clock, ManualClock};
use std::sync::Arc;

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
