//! `RedisEngine`: a budget shared through Redis or Valkey (`ratelimit-redis`) behind a
//! Python `DistributedRateLimiter`. Every round trip runs with the GIL released; the
//! `*_async` calls run on the client's I/O thread and queue the answer for the event loop
//! (`Completions`), which resolves its futures, so the loop never blocks.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyList};
use ratelimit_core::{
    validate_max_wait, Algorithm, Backend, Decision, Quota, ReservationPolicy, Scope,
};
use ratelimit_redis::{after_answers, Booked, Layout, Options, Owed, RedisBudget, Reserved, Turn};

use crate::args::{
    AlgorithmArg, BurstSize, ClockArg, Count, Key, MaxWait, Period, Rate, ReservationGrace,
    ReservationId, ReservationTtl, ScopeArg, Seconds,
};
use crate::error::{Failure, Result};
use crate::reservation::PyTokenReservation;
use crate::result::PyRateLimitResult;

#[pyclass(frozen, module = "flashcard_pipeline._native", name = "RedisEngine")]
pub(crate) struct PyRedisEngine {
    /// Shared with the I/O thread's answers, which give back an abandoned booking's turn.
    budget: Arc<RedisBudget>,
    namespace: String,
    scope: Scope,
}

/// A waiting caller's booked turn (see `RedisEngine.book_turn`).
#[pyclass(frozen, module = "flashcard_pipeline._native", name = "RedisTurn")]
pub(crate) struct PyRedisTurn {
    turn: Turn,
}

#[pymethods]
impl PyRedisTurn {
    /// Seconds from the booking until the turn's slot.
    #[getter]
    fn wait(&self) -> f64 {
        self.turn.wait
    }
}

/// Raises `ValueError` unless `namespace` is one a budget can live under.
#[pyfunction]
pub(crate) fn check_namespace(namespace: &str) -> Result<()> {
    Layout::new(namespace, Scope::Global)?;
    Ok(())
}

fn text(key: &Key<'_>) -> PyResult<String> {
    match key {
        Key::Default => Ok("default".to_owned()),
        Key::Given(key) => Ok(key.to_str()?.to_owned()),
    }
}

/// A reservation policy's seconds as a duration, named when out of range.
fn seconds(argument: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{argument}: must be a finite number of seconds >= 0, got {value}"
        ))
        .into()
    })
}

/// `max_wait` in seconds, checked; `None` is any wait.
fn wait_bound(max_wait: Option<MaxWait>) -> Result<f64> {
    Ok(validate_max_wait(max_wait.map(|w| w.0))?)
}

fn into_py(py: Python<'_>, booked: Booked) -> Result<Bound<'_, PyAny>> {
    Ok(match booked {
        Booked::Turn(turn) => Bound::new(py, PyRedisTurn { turn })?.into_any(),
        Booked::Admitted(decision) => {
            Bound::new(py, PyRateLimitResult::new(decision, 0.0))?.into_any()
        }
        Booked::Refused(decision) => {
            Bound::new(py, PyRateLimitResult::new(decision, 0.0))?.into_any()
        }
    })
}

/// What an `*_async` call answered, kept as Rust values until the loop drains it.
enum Answer {
    /// With the seconds the caller waited before it.
    Decided(ratelimit_core::Result<Decision>, f64),
    Booked(ratelimit_core::Result<Booked>),
    /// Whether a turn was still live when it was given back.
    GaveBack(ratelimit_core::Result<bool>),
}

impl Answer {
    /// The answer as Python sees it: a result, a turn, or the exception the call raised.
    fn into_py(self, py: Python<'_>) -> Bound<'_, PyAny> {
        let made = match self {
            Answer::Decided(decided, waited) => decided
                .map_err(Failure::from)
                .and_then(|d| Ok(Bound::new(py, PyRateLimitResult::new(d, waited))?.into_any())),
            Answer::Booked(booked) => booked.map_err(Failure::from).and_then(|b| into_py(py, b)),
            Answer::GaveBack(live) => live
                .map_err(Failure::from)
                .map(|live| PyBool::new(py, live).to_owned().into_any()),
        };
        made.unwrap_or_else(|failure| {
            PyErr::from(failure)
                .into_value(py)
                .into_bound(py)
                .into_any()
        })
    }
}

/// Where the I/O thread leaves the answers of one event loop's `*_async` calls. It never
/// takes the GIL: it queues the answer and, when the queue was empty, writes a byte to a
/// socket the loop watches (`loop.add_reader(completions.fileno(), ...)`); the loop then
/// takes every answer queued with one `drain()`.
#[pyclass(frozen, module = "flashcard_pipeline._native", name = "Completions")]
pub(crate) struct PyCompletions {
    queue: Arc<Queue>,
}

struct Queue {
    answers: Mutex<Answers>,
    wake: UnixStream,
    woken: UnixStream,
}

#[derive(Default)]
struct Answers {
    queued: Vec<(u64, Answer)>,
    /// Bookings whose task was cancelled before their answer came, by call id.
    abandoned: HashMap<u64, Owed>,
}

impl Queue {
    /// Queues a booking's answer, unless its task abandoned it: then the debt comes back
    /// with the answer, for the turn to be given back.
    fn push_booked(
        self: &Arc<Self>,
        id: u64,
        booked: ratelimit_core::Result<Booked>,
    ) -> Option<(Owed, ratelimit_core::Result<Booked>)> {
        let mut answers = self.answers.lock();
        match answers.abandoned.remove(&id) {
            Some(abandoned) => Some((abandoned, booked)),
            None => {
                self.queue(&mut answers, id, Answer::Booked(booked));
                None
            }
        }
    }

    fn push(self: &Arc<Self>, id: u64, answer: Answer) {
        self.queue(&mut self.answers.lock(), id, answer);
    }

    fn queue(self: &Arc<Self>, answers: &mut Answers, id: u64, answer: Answer) {
        answers.queued.push((id, answer));
        if answers.queued.len() == 1 {
            // The first answer since the loop last drained wakes it, once the I/O thread
            // has handed over the other answers it holds (more than one went unwoken).
            let queue = Arc::clone(self);
            after_answers(move || {
                let _ = (&queue.wake).write(&[1]);
            });
        }
    }
}

#[pymethods]
impl PyCompletions {
    #[new]
    fn new() -> PyResult<Self> {
        let (wake, woken) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        woken.set_nonblocking(true)?;
        Ok(Self {
            queue: Arc::new(Queue {
                answers: Mutex::default(),
                wake,
                woken,
            }),
        })
    }

    /// The socket to watch for answers.
    fn fileno(&self) -> i32 {
        self.queue.woken.as_raw_fd()
    }

    /// Every answer queued, as `(id, answer)` pairs (the wake-up bytes are read first, so
    /// an answer queued meanwhile is taken now or wakes the loop again).
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut bytes = [0u8; 64];
        while matches!((&self.queue.woken).read(&mut bytes), Ok(n) if n > 0) {}
        let answers = std::mem::take(&mut self.queue.answers.lock().queued);
        let pairs = answers
            .into_iter()
            .map(|(id, answer)| (id, answer.into_py(py)));
        PyList::new(py, pairs)
    }
}

#[pymethods]
impl PyRedisEngine {
    #[new]
    #[pyo3(
        signature = (
            rate, period, burst_size, *, algorithm=None, url, namespace, scope=None, timeout,
            clock=None, reservation_ttl=None, reservation_grace=None,
        ),
        text_signature = "(rate, period, burst_size, *, algorithm='token_bucket', url, namespace, \
                          scope='global', timeout, clock=None, reservation_ttl=60.0, \
                          reservation_grace=0.25)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        rate: Rate,
        period: Period,
        burst_size: Option<BurstSize>,
        algorithm: Option<AlgorithmArg>,
        url: String,
        namespace: String,
        scope: Option<ScopeArg>,
        timeout: Seconds,
        clock: Option<ClockArg<'_>>,
        reservation_ttl: Option<ReservationTtl>,
        reservation_grace: Option<ReservationGrace>,
    ) -> Result<Self> {
        let defaults = ReservationPolicy::default();
        let policy = ReservationPolicy {
            ttl: reservation_ttl.map_or(defaults.ttl, |t| t.0),
            grace: reservation_grace.map_or(defaults.grace, |g| g.0),
            ..defaults
        };
        let scope = scope.map_or(Scope::Global, |s| s.0);
        let quota = Quota::new(
            rate.0,
            period.0,
            burst_size.map(|b| b.0),
            algorithm.map_or(Algorithm::TokenBucket, |a| a.0),
            Some(1),
        )?;
        let timeout = Duration::try_from_secs_f64(timeout.0)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "timeout: must be a finite number of seconds > 0, got {}",
                    timeout.0
                ))
            })?;
        let options = Options {
            url,
            namespace: namespace.clone(),
            scope,
            timeout,
            clock: clock.map(|c| c.0.get().inner.clone()),
            reservation_ttl: seconds("reservation_ttl", policy.ttl)?,
            reservation_grace: seconds("reservation_grace", policy.grace)?,
        };
        Ok(Self {
            budget: Arc::new(RedisBudget::new(quota, options)?),
            namespace,
            scope,
        })
    }

    #[pyo3(signature = (key=Key::Default, count=Count::ONE), text_signature = "($self, key='default', count=1)")]
    fn try_acquire(&self, py: Python<'_>, key: Key<'_>, count: Count) -> Result<PyRateLimitResult> {
        let key = text(&key)?;
        let decision = py.detach(|| self.budget.try_acquire(&key, count.0))?;
        Ok(PyRateLimitResult::new(decision, 0.0))
    }

    /// `try_acquire` on the I/O thread: its answer is queued in `completions` under `id`.
    #[pyo3(signature = (key, count, completions, id))]
    fn try_acquire_async(
        &self,
        key: Key<'_>,
        count: Count,
        completions: &PyCompletions,
        id: u64,
    ) -> PyResult<()> {
        let key = text(&key)?;
        let queue = Arc::clone(&completions.queue);
        self.budget.spawn_try_acquire(&key, count.0, move |answer| {
            queue.push(id, Answer::Decided(answer, 0.0))
        });
        Ok(())
    }

    /// `book_turn` on the I/O thread, answering as `try_acquire_async` does.
    #[pyo3(signature = (key, count, max_wait, completions, id))]
    fn book_turn_async(
        &self,
        key: Key<'_>,
        count: Count,
        max_wait: Option<MaxWait>,
        completions: &PyCompletions,
        id: u64,
    ) -> Result<()> {
        let key = text(&key)?;
        let bound = wait_bound(max_wait)?;
        let queue = Arc::clone(&completions.queue);
        let budget = Arc::clone(&self.budget);
        self.budget
            .spawn_book_turn(&key, count.0, bound, move |answer| {
                if let Some((abandoned, answer)) = queue.push_booked(id, answer) {
                    budget.give_back_abandoned(abandoned, answer);
                }
            });
        Ok(())
    }

    /// The task that asked `book_turn_async` (call `id`) was cancelled before the answer
    /// reached it: the turn it got is given back from here, and every later call of this
    /// process on the budget waits until it is back.
    fn abandon(&self, completions: &PyCompletions, id: u64) {
        let mut answers = completions.queue.answers.lock();
        match answers.queued.iter().position(|(queued, _)| *queued == id) {
            Some(at) => {
                let (_, answer) = answers.queued.remove(at);
                drop(answers);
                if let Answer::Booked(booked) = answer {
                    self.budget
                        .give_back_abandoned(self.budget.abandon(), booked);
                }
            }
            None => {
                answers.abandoned.insert(id, self.budget.abandon());
            }
        }
    }

    /// Whether a turn this process gave back on the I/O thread, or abandoned, is still on
    /// its way back.
    fn owes(&self) -> bool {
        self.budget.owes()
    }

    /// Returns once no such turn is on its way back (within the timeout), the GIL
    /// released.
    fn settled(&self, py: Python<'_>) {
        py.detach(|| self.budget.settled());
    }

    /// `settled` on the I/O thread, answering `True`.
    fn settled_async(&self, completions: &PyCompletions, id: u64) {
        let queue = Arc::clone(&completions.queue);
        self.budget
            .spawn_settled(move || queue.push(id, Answer::GaveBack(Ok(true))));
    }

    /// Turns and reservations this process has given back on this budget (a waiter that
    /// sees the count change asks again).
    fn given_back(&self) -> u64 {
        self.budget.given_back()
    }

    /// Decides every `(key, count)` pair in one round trip: a list of `RateLimitResult`s.
    fn try_acquire_many<'py>(
        &self,
        py: Python<'py>,
        requests: Vec<(String, Count)>,
    ) -> Result<Bound<'py, PyList>> {
        let pairs: Vec<(&str, u64)> = requests.iter().map(|(k, c)| (k.as_str(), c.0)).collect();
        let decisions = py.detach(|| self.budget.try_acquire_many(&pairs))?;
        let results: Vec<PyRateLimitResult> = decisions
            .into_iter()
            .map(|decision| PyRateLimitResult::new(decision, 0.0))
            .collect();
        Ok(PyList::new(py, results)?)
    }

    /// Books a waiting caller's turn within `max_wait` seconds (`None`: any wait): a
    /// `RedisTurn` (sleep `turn.wait`, then the tokens are the caller's) or the refusal.
    #[pyo3(signature = (key, count, max_wait))]
    fn book_turn<'py>(
        &self,
        py: Python<'py>,
        key: Key<'py>,
        count: Count,
        max_wait: Option<MaxWait>,
    ) -> Result<Bound<'py, PyAny>> {
        let key = text(&key)?;
        let bound = wait_bound(max_wait)?;
        let answer = py.detach(|| self.budget.book_turn(&key, count.0, bound))?;
        into_py(py, answer)
    }

    /// Admits a turn that is due (`RedisTurn.wait` after its booking): a `RateLimitResult`,
    /// `not_ready` with the wait when someone ahead is late, or `max_wait_exceeded` (the
    /// turn given back) when that wait is more than `max_wait` seconds.
    #[pyo3(signature = (turn, waited, max_wait))]
    fn execute_turn(
        &self,
        py: Python<'_>,
        turn: PyRef<'_, PyRedisTurn>,
        waited: Seconds,
        max_wait: Option<MaxWait>,
    ) -> Result<PyRateLimitResult> {
        let bound = wait_bound(max_wait)?;
        let turn = turn.turn.clone();
        let decision = py.detach(|| self.budget.execute_turn(&turn, bound))?;
        Ok(PyRateLimitResult::new(decision, waited.0))
    }

    /// `execute_turn` on the I/O thread, answering as `try_acquire_async` does.
    #[pyo3(signature = (turn, waited, max_wait, completions, id))]
    fn execute_turn_async(
        &self,
        turn: PyRef<'_, PyRedisTurn>,
        waited: Seconds,
        max_wait: Option<MaxWait>,
        completions: &PyCompletions,
        id: u64,
    ) -> Result<()> {
        let bound = wait_bound(max_wait)?;
        let queue = Arc::clone(&completions.queue);
        let waited = waited.0;
        self.budget
            .spawn_execute_turn(&turn.turn, bound, move |answer| {
                queue.push(id, Answer::Decided(answer, waited))
            });
        Ok(())
    }

    /// Books a caller's reservation: a `TokenReservation` whose `key` is `shown_key`, or the
    /// refusal as a `RateLimitResult`.
    #[pyo3(signature = (key, count, max_wait, shown_key))]
    fn reserve<'py>(
        &self,
        py: Python<'py>,
        key: Key<'py>,
        count: Count,
        max_wait: Option<MaxWait>,
        shown_key: Py<PyAny>,
    ) -> Result<Bound<'py, PyAny>> {
        let key = text(&key)?;
        let bound = wait_bound(max_wait)?;
        Ok(
            match py.detach(|| self.budget.reserve(&key, count.0, bound))? {
                Reserved::Reservation(r) => {
                    let epochs =
                        [r.reserved_at, r.execute_at, r.expires_at].map(|t| self.budget.epoch(t));
                    let placed = self.budget.placed(&r);
                    let clock = Backend::clock(&*self.budget);
                    Bound::new(
                        py,
                        PyTokenReservation::with_epochs(clock, shown_key, placed, epochs),
                    )?
                    .into_any()
                }
                Reserved::Refused(decision) => {
                    Bound::new(py, PyRateLimitResult::new(decision, 0.0))?.into_any()
                }
            },
        )
    }

    fn execute_reservation(
        &self,
        py: Python<'_>,
        reservation_id: ReservationId<'_, '_>,
    ) -> Result<PyRateLimitResult> {
        let id = reservation_id.0.to_str()?;
        let decision = py.detach(|| self.budget.execute_reservation(id))?;
        Ok(PyRateLimitResult::new(decision, 0.0))
    }

    fn cancel_reservation(
        &self,
        py: Python<'_>,
        reservation_id: ReservationId<'_, '_>,
    ) -> Result<bool> {
        let id = reservation_id.0.to_str()?;
        Ok(py.detach(|| self.budget.cancel_reservation(id))?)
    }

    /// Gives a turn's tokens back if nothing was decided on its budget since: whether it did.
    fn give_back(&self, py: Python<'_>, turn: PyRef<'_, PyRedisTurn>) -> Result<bool> {
        let turn = turn.turn.clone();
        Ok(py.detach(|| self.budget.give_back(&turn))?)
    }

    /// `give_back` on the I/O thread, answering as `try_acquire_async` does (for a turn
    /// whose waiter is gone: a task cancelled while its booking was on its way).
    #[pyo3(signature = (turn, completions, id))]
    fn give_back_async(&self, turn: PyRef<'_, PyRedisTurn>, completions: &PyCompletions, id: u64) {
        let queue = Arc::clone(&completions.queue);
        self.budget.spawn_give_back(&turn.turn, move |answer| {
            queue.push(id, Answer::GaveBack(answer))
        });
    }

    #[pyo3(signature = (key=Key::Default), text_signature = "($self, key='default')")]
    fn peek(&self, py: Python<'_>, key: Key<'_>) -> Result<f64> {
        let key = text(&key)?;
        Ok(py.detach(|| self.budget.peek(&key))?)
    }

    #[pyo3(signature = (seconds, key=Key::Default), text_signature = "($self, seconds, key='default')")]
    fn back_off(&self, py: Python<'_>, seconds: Seconds, key: Key<'_>) -> Result<()> {
        let key = text(&key)?;
        Ok(py.detach(|| self.budget.back_off(&key, seconds.0))?)
    }

    /// Forgets the budget `key` draws on; with `None`, every budget of the namespace.
    #[pyo3(signature = (key=None))]
    fn reset(&self, py: Python<'_>, key: Option<Key<'_>>) -> Result<()> {
        let key = key.map(|k| text(&k)).transpose()?;
        Ok(py.detach(|| self.budget.reset(key.as_deref()))?)
    }

    #[pyo3(signature = (rate, period=None, burst_size=None))]
    fn set_rate(
        &self,
        rate: Rate,
        period: Option<Period>,
        burst_size: Option<BurstSize>,
    ) -> Result<()> {
        let quota =
            self.budget
                .quota()
                .rerated(rate.0, period.map(|p| p.0), burst_size.map(|b| b.0))?;
        Ok(self.budget.set_quota(quota)?)
    }

    /// `(healthy, latency)`: how the last call to the server went.
    fn health(&self) -> (bool, f64) {
        let health = self.budget.health();
        (health.healthy, health.latency)
    }

    #[getter]
    fn rate(&self) -> f64 {
        self.budget.quota().rate
    }

    #[getter]
    fn period(&self) -> f64 {
        self.budget.quota().period
    }

    #[getter]
    fn burst_size(&self) -> f64 {
        self.budget.quota().burst
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.budget.quota().algorithm.name()
    }

    #[getter]
    fn namespace(&self) -> &str {
        &self.namespace
    }

    #[getter]
    fn scope(&self) -> &'static str {
        self.scope.name()
    }

    #[getter]
    fn timeout(&self) -> f64 {
        self.budget.timeout().as_secs_f64()
    }

    /// The ACL key pattern that covers this namespace's keys.
    #[getter]
    fn key_pattern(&self) -> String {
        self.budget.pattern()
    }

    fn __repr__(&self) -> String {
        let quota = self.budget.quota();
        format!(
            "RedisEngine(rate={}, period={}, burst_size={}, algorithm={:?}, namespace={:?}, \
             scope={:?})",
            quota.rate,
            quota.period,
            quota.burst,
            quota.algorithm.name(),
            self.namespace,
            self.scope.name()
        )
    }
}
