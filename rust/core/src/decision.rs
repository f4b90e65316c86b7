//! What a limiter answers: decisions, refusals, reservations.

use crate::clock::Nanos;
use crate::error::{Error, Result};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not enough tokens now; `retry_after` says when there will be.
    RateLimited,
    /// More tokens than the burst: it can never succeed.
    ExceedsCapacity,
    /// Admission would need a longer wait than the caller allows.
    MaxWaitExceeded,
    /// A reservation whose tokens the budget does not hold yet.
    NotReady,
    /// A reservation past its time to live.
    Expired,
    /// A reservation that was cancelled.
    Cancelled,
    /// A reservation executed before: it admits once.
    AlreadyExecuted,
    /// An id this limiter never issued, or one it no longer remembers.
    UnknownReservation,
    /// A new key while the limiter already keeps `max_keys` keys (`scope="key"`).
    TooManyKeys,
    /// A waiting `acquire` while the limiter already keeps `max_reservations` bookings.
    TooManyReservations,
}

impl Refusal {
    /// The stable short code of SPEC §2.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::ExceedsCapacity => "exceeds_capacity",
            Refusal::MaxWaitExceeded => "max_wait_exceeded",
            Refusal::NotReady => "not_ready",
            Refusal::Expired => "expired",
            Refusal::Cancelled => "cancelled",
            Refusal::AlreadyExecuted => "already_executed",
            Refusal::UnknownReservation => "unknown_reservation",
            Refusal::TooManyKeys => "too_many_keys",
            Refusal::TooManyReservations => "too_many_reservations",
        }
    }
}

/// The answer to one request, fully computed when it is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Option<Refusal>,
    /// The shard that served (or would have served) the request.
    pub shard: usize,
    /// Seconds until the request could be admitted; `None` when admitted or never.
    pub retry_after: Option<f64>,
    /// When it was decided, on the limiter's clock.
    pub at: Nanos,
    /// Units a `try_acquire` could take right after this decision (`None` from
    /// [`crate::Backend::check`], which does not look), and units per token: kept
    /// as integers so the decision costs no division (see [`Decision::remaining`]).
    pub remaining_units: Option<u64>,
    pub unit: u64,
    /// An adaptive limiter sampled this decision's key for its hot-key sketch: the caller
    /// may name the key (`RateLimiter::name_key`), so that the report shows it by name.
    pub sampled: bool,
}

impl Decision {
    /// A waiter's turn not ready whose next chance is more than `max_wait` seconds away:
    /// the waiter gives it up, and is answered [`Decision::past_max_wait`].
    pub fn not_ready_past(&self, max_wait: f64) -> bool {
        self.reason == Some(Refusal::NotReady) && self.retry_after.is_some_and(|w| w > max_wait)
    }

    /// This refusal as `max_wait_exceeded`, with the same wait.
    pub fn past_max_wait(self) -> Decision {
        Decision {
            reason: Some(Refusal::MaxWaitExceeded),
            ..self
        }
    }

    /// Tokens a `try_acquire` could take right after this decision.
    pub fn remaining(&self) -> Option<f64> {
        self.remaining_units
            .map(|units| units as f64 / self.unit as f64)
    }
}

/// Tokens held for a slot (see [`crate::Backend::book`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Opaque; valid only with the limiter that issued it.
    pub id: String,
    pub count: u64,
    pub shard: usize,
    /// Times on the limiter's clock.
    pub reserved_at: Nanos,
    pub execute_at: Nanos,
    pub expires_at: Nanos,
}

/// The answer to a reservation request.
#[derive(Debug, Clone, PartialEq)]
pub enum Booking {
    Reserved(Reservation),
    /// Answered at once: refused (`exceeds_capacity`, or `max_wait_exceeded` with the wait
    /// the slot would have needed), or a waiter's turn that a shared store funded in the
    /// booking's round trip, admitted.
    Decided(Decision),
}

/// Who a booking is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A caller's reservation: `reset()` forgets it.
    Caller,
    /// A waiting `acquire`'s turn: `reset()` keeps it in line on the fresh budget.
    Waiter,
}

impl Holder {
    /// When a booking with this `slot` expires. A caller's reservation lives `ttl` past its
    /// slot; a waiter's turn never expires: its waiter is there (it gives the turn back when
    /// it stops waiting), and `back_off`, `set_rate` or `reset` may fund it later than any
    /// ttl after the slot it was first given.
    pub(crate) fn expires(self, slot: Nanos, ttl: Nanos) -> Nanos {
        match self {
            Holder::Caller => slot.saturating_add(ttl),
            Holder::Waiter => Nanos::MAX,
        }
    }
}

/// Longest reservation TTL (100 years): its nanoseconds fit a u64 with room to spare.
const MAX_TTL_SECONDS: f64 = 100.0 * 365.0 * 86_400.0;

/// How long reservations live, how many a limiter keeps, and how long a call waits by default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReservationPolicy {
    /// Seconds after its slot during which a reservation can be executed or cancelled.
    pub ttl: f64,
    /// Seconds a caller's reservation holds its tokens past its slot before they go back
    /// to the budget (it stays executable, as a new request, until `ttl`).
    pub grace: f64,
    /// Live reservations (queued or held) kept at once.
    pub max: usize,
    /// The wait bound in seconds for a call that gives none; `None` waits as long as it takes.
    pub max_wait: Option<f64>,
}

impl Default for ReservationPolicy {
    fn default() -> Self {
        Self {
            ttl: 60.0,
            grace: crate::model::GRACE as f64 / crate::clock::NANOS_PER_SEC,
            max: 10_000,
            max_wait: None,
        }
    }
}

impl ReservationPolicy {
    pub(crate) fn validate(self) -> Result<Self> {
        if !(self.ttl > 0.0 && self.ttl <= MAX_TTL_SECONDS) {
            return Err(Error::invalid(
                "reservation_ttl",
                format!(
                    "must be a number of seconds > 0 and at most {MAX_TTL_SECONDS:e} (100 \
                     years), got {}",
                    self.ttl
                ),
            ));
        }
        if !(self.grace >= 0.0 && self.grace <= MAX_TTL_SECONDS) {
            return Err(Error::invalid(
                "reservation_grace",
                format!(
                    "must be a number of seconds >= 0 and at most {MAX_TTL_SECONDS:e} (100 \
                     years), got {}",
                    self.grace
                ),
            ));
        }
        if self.max == 0 {
            return Err(Error::invalid(
                "max_reservations",
                "must be an int >= 1, got 0".to_string(),
            ));
        }
        validate_max_wait(self.max_wait)?;
        Ok(self)
    }
}

/// Checks a wait bound in seconds: `None` or infinity waits as long as it takes.
/// Callers' reservations: live now (waiting turns too), and made and expired since the
/// limiter was made or reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReservationCounts {
    pub active: usize,
    pub created: u64,
    pub expired: u64,
}

impl std::ops::Add for ReservationCounts {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            active: self.active + other.active,
            created: self.created + other.created,
            expired: self.expired + other.expired,
        }
    }
}

pub fn validate_max_wait(max_wait: Option<f64>) -> Result<f64> {
    match max_wait {
        None => Ok(f64::INFINITY),
        Some(wait) if wait >= 0.0 => Ok(wait),
        Some(wait) => Err(Error::invalid(
            "max_wait",
            format!("must be None or a number of seconds >= 0, got {wait}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_wait_must_be_a_non_negative_number() {
        assert_eq!(validate_max_wait(None), Ok(f64::INFINITY));
        assert_eq!(validate_max_wait(Some(0.0)), Ok(0.0));
        for bad in [-1.0, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(
                validate_max_wait(Some(bad)).unwrap_err().argument(),
                "max_wait"
            );
        }
    }
}
