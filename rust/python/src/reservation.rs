//! `TokenReservation`: tokens held for a slot, awaitable as itself.

use pyo3::prelude::*;
use ratelimit_core::{Clock, Nanos, Reservation};

use crate::engine::PyEngine;
use crate::result::Ready;

/// Tokens held now for a slot at `execute_at`.
///
/// Times are epoch seconds, comparable with `time.time()`. Pass `id` to
/// `execute_reservation` once the slot has come, or to `cancel_reservation` to give the
/// tokens back.
#[pyclass(
    frozen,
    module = "flashcard_pipeline._native",
    name = "TokenReservation"
)]
pub(crate) struct PyTokenReservation {
    #[pyo3(get)]
    id: String,
    #[pyo3(get)]
    key: Py<PyAny>,
    #[pyo3(get)]
    count: u64,
    #[pyo3(get)]
    shard_id: usize,
    #[pyo3(get)]
    reserved_at: f64,
    #[pyo3(get)]
    execute_at: f64,
    #[pyo3(get)]
    expires_at: f64,
    limiter: Py<PyEngine>,
    slot: Nanos,
    expires: Nanos,
}

impl PyTokenReservation {
    pub(crate) fn new(
        limiter: &Bound<'_, PyEngine>,
        key: Py<PyAny>,
        reservation: Reservation,
    ) -> Self {
        let clock: &Clock = limiter.get().core().clock();
        Self {
            key,
            count: reservation.count,
            shard_id: reservation.shard,
            reserved_at: clock.to_epoch(reservation.reserved_at),
            execute_at: clock.to_epoch(reservation.execute_at),
            expires_at: clock.to_epoch(reservation.expires_at),
            limiter: limiter.clone().unbind(),
            slot: reservation.execute_at,
            expires: reservation.expires_at,
            id: reservation.id,
        }
    }

    fn now(&self) -> Nanos {
        self.limiter.get().core().clock().now()
    }
}

#[pymethods]
impl PyTokenReservation {
    /// Whether the slot has come (on the limiter's clock).
    fn is_ready(&self) -> bool {
        self.now() >= self.slot
    }

    /// Whether the reservation can no longer be executed or cancelled.
    fn is_expired(&self) -> bool {
        self.now() >= self.expires
    }

    /// Seconds until the slot, on the limiter's clock (0 once it has come).
    fn wait_time(&self) -> f64 {
        self.slot.saturating_sub(self.now()) as f64 / 1e9
    }

    fn __await__(slf: Bound<'_, Self>) -> Ready {
        Ready::new(slf.into_any())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "TokenReservation(id={:?}, key={}, count={}, execute_at={:?}, expires_at={:?}, \
             shard_id={})",
            self.id,
            self.key
                .bind(py)
                .repr()
                .map_or_else(|_| "?".into(), |r| r.to_string()),
            self.count,
            self.execute_at,
            self.expires_at,
            self.shard_id
        )
    }
}
