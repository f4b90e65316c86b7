//! `TokenReservation`: tokens held for a slot, awaitable as itself.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyString;
use ratelimit_core::{Clock, Nanos, Reservation};

use crate::args::{Delay, ExecuteAt, ExpiresAt, IdArg, Key, ReservedAt, ReservedCount, ShardId};
use crate::result::Ready;

/// The limiter's booking behind a reservation it made: its slot and expiry on the
/// limiter's clock (a budget shared through a store places them on its own).
struct Booking {
    clock: Clock,
    slot: Nanos,
    expires: Nanos,
}

/// Tokens held now for a slot at `execute_at`.
///
/// Times are epoch seconds, comparable with `time.time()`. Pass `id` to
/// `execute_reservation` once the slot has come, or to `cancel_reservation` to give the
/// tokens back.
///
/// A reservation made by calling the class, `TokenReservation(id=None, key="", count=1,
/// reserved_at=None, execute_at=None, expires_at=None, shard_id=None)` as the previous
/// version's dataclass was, belongs to no limiter: it holds no tokens, a limiter answers
/// its `id` with `unknown_reservation`, and `is_ready()`, `is_expired()` and `wait_time()`
/// compare `time.time()` with its epoch fields. Only such a reservation can
/// `delay_execution(seconds)`.
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
    shard_id: Option<usize>,
    #[pyo3(get)]
    reserved_at: f64,
    /// Epoch seconds as `f64` bits: moved only by `delay_execution`, which only a
    /// reservation made by hand (no `booking`) allows.
    execute_at: AtomicU64,
    #[pyo3(get)]
    expires_at: f64,
    /// `None` for a reservation made by hand.
    booking: Option<Booking>,
}

/// `time.time()`, looked up at each call as the old dataclass did (so it can be patched).
fn epoch_now(py: Python<'_>) -> PyResult<f64> {
    py.import(intern!(py, "time"))?
        .call_method0(intern!(py, "time"))?
        .extract()
}

impl PyTokenReservation {
    /// A limiter's reservation, its times on `clock`, the limiter's.
    pub(crate) fn new(clock: &Clock, key: Py<PyAny>, reservation: Reservation) -> Self {
        let epochs = [
            reservation.reserved_at,
            reservation.execute_at,
            reservation.expires_at,
        ]
        .map(|t| clock.to_epoch(t));
        Self::with_epochs(clock, key, reservation, epochs)
    }

    /// [`PyTokenReservation::new`] whose epoch times are the store's (a shared budget's
    /// server clock: every process shows the same ones).
    pub(crate) fn with_epochs(
        clock: &Clock,
        key: Py<PyAny>,
        reservation: Reservation,
        [reserved_at, execute_at, expires_at]: [f64; 3],
    ) -> Self {
        Self {
            key,
            count: reservation.count,
            shard_id: Some(reservation.shard),
            reserved_at,
            execute_at: AtomicU64::new(execute_at.to_bits()),
            expires_at,
            booking: Some(Booking {
                clock: clock.clone(),
                slot: reservation.execute_at,
                expires: reservation.expires_at,
            }),
            id: reservation.id,
        }
    }

    /// The booking's clock now, with the booking.
    fn on_clock(&self) -> Option<(Nanos, &Booking)> {
        self.booking.as_ref().map(|b| (b.clock.now(), b))
    }
}

#[pymethods]
impl PyTokenReservation {
    /// A reservation made by hand, as the previous version's dataclass was: `id` a new
    /// `uuid4` string when None, `key` a str, `count` an int >= 1, times finite epoch
    /// seconds (`reserved_at` and `execute_at` default to `time.time()`, `expires_at` to
    /// `time.time() + 60`), `shard_id` None or a shard index. No order among the times is
    /// required, as before.
    #[new]
    #[pyo3(
        signature = (
            id=None, key=Key::Default, count=ReservedCount(1), reserved_at=None,
            execute_at=None, expires_at=None, shard_id=None,
        ),
        text_signature = "(id=None, key='', count=1, reserved_at=None, execute_at=None, \
                          expires_at=None, shard_id=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        py: Python<'_>,
        id: Option<IdArg>,
        key: Key<'_>,
        count: ReservedCount,
        reserved_at: Option<ReservedAt>,
        execute_at: Option<ExecuteAt>,
        expires_at: Option<ExpiresAt>,
        shard_id: Option<ShardId>,
    ) -> PyResult<Self> {
        let id = match id {
            Some(id) => id.0,
            None => py
                .import(intern!(py, "uuid"))?
                .call_method0(intern!(py, "uuid4"))?
                .str()?
                .to_str()?
                .to_owned(),
        };
        let key = match key {
            Key::Given(key) => key.into_any().unbind(),
            Key::Default => PyString::new(py, "").into_any().unbind(),
        };
        let now = match (&reserved_at, &execute_at, &expires_at) {
            (Some(_), Some(_), Some(_)) => f64::NAN, // not read
            _ => epoch_now(py)?,
        };
        Ok(Self {
            id,
            key,
            count: count.0,
            shard_id: shard_id.map(|s| s.0),
            reserved_at: reserved_at.map_or(now, |t| t.0),
            execute_at: AtomicU64::new(execute_at.map_or(now, |t| t.0).to_bits()),
            expires_at: expires_at.map_or(now + 60.0, |t| t.0),
            booking: None,
        })
    }

    /// When the slot comes, in epoch seconds.
    #[getter]
    fn execute_at(&self) -> f64 {
        f64::from_bits(self.execute_at.load(Ordering::Acquire))
    }

    /// Whether the slot has come: on the limiter's clock, or for a reservation made by
    /// hand, `time.time() >= execute_at`.
    fn is_ready(&self, py: Python<'_>) -> PyResult<bool> {
        match self.on_clock() {
            Some((now, booking)) => Ok(now >= booking.slot),
            None => Ok(epoch_now(py)? >= self.execute_at()),
        }
    }

    /// Whether the reservation can no longer be executed or cancelled: on the limiter's
    /// clock, or for a reservation made by hand, `time.time() > expires_at`.
    fn is_expired(&self, py: Python<'_>) -> PyResult<bool> {
        match self.on_clock() {
            Some((now, booking)) => Ok(now >= booking.expires),
            None => Ok(epoch_now(py)? > self.expires_at),
        }
    }

    /// Seconds until the slot (0 once it has come): on the limiter's clock, or for a
    /// reservation made by hand, against `time.time()`.
    fn wait_time(&self, py: Python<'_>) -> PyResult<f64> {
        match self.on_clock() {
            Some((now, booking)) => Ok(booking.slot.saturating_sub(now) as f64 / 1e9),
            None => Ok((self.execute_at() - epoch_now(py)?).max(0.0)),
        }
    }

    /// Moves a reservation made by hand `seconds` later, from its slot or from now if that
    /// has passed: `execute_at = max(execute_at, time.time()) + seconds`, as before.
    /// A limiter's reservation refuses (`RuntimeError`): its slot is the limiter's booking,
    /// which this cannot move; cancel it and reserve again instead.
    fn delay_execution(&self, py: Python<'_>, seconds: Delay) -> PyResult<()> {
        if self.booking.is_some() {
            return Err(PyRuntimeError::new_err(
                "delay_execution: this reservation's slot is booked in its limiter, which \
                 keeps it; cancel_reservation(id) and reserve again to take a later slot",
            ));
        }
        let now = epoch_now(py)?;
        let moved = |bits: u64| {
            let at = f64::from_bits(bits).max(now) + seconds.0;
            at.is_finite().then(|| at.to_bits())
        };
        self.execute_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, moved)
            .map(drop)
            .map_err(|_| {
                PyValueError::new_err(format!(
                    "seconds: moves execute_at past any finite time, got {:?}",
                    seconds.0
                ))
            })
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
            self.execute_at(),
            self.expires_at,
            self.shard_id
                .map_or_else(|| "None".into(), |s| s.to_string())
        )
    }
}
