//! Time sources. Every limiter reads time through a [`Clock`]: the real monotonic clock in
//! production, a [`ManualClock`] that tests advance by hand so that no test needs to sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Nanoseconds since the clock's origin.
pub type Nanos = u64;

pub const NANOS_PER_SEC: f64 = 1e9;

/// A clock shared by any number of limiters.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The CPU's invariant time-stamp counter through `quanta` (half the cost of
    /// `Instant::now()`; quanta falls back to the OS monotonic clock where the TSC is not
    /// reliable), counted from when the clock was made.
    Monotonic {
        source: quanta::Clock,
        origin: u64,
        wall: Arc<WallAnchor>,
    },
    /// Time that moves only when a test says so.
    Manual(Arc<ManualClock>),
}

impl Clock {
    pub fn monotonic() -> Self {
        let source = quanta::Clock::new();
        let clock = Clock::Monotonic {
            origin: source.raw(),
            source,
            wall: Arc::new(WallAnchor(AtomicU64::new(0))),
        };
        if let Clock::Monotonic { wall, .. } = &clock {
            let origin = (0..5)
                .find_map(|_| WallAnchor::measure(&clock))
                .unwrap_or_else(|| unix_now() - clock.now() as f64 / NANOS_PER_SEC);
            wall.0.store(origin.to_bits(), Ordering::Relaxed);
        }
        clock
    }

    #[inline]
    pub fn now(&self) -> Nanos {
        match self {
            // u64 nanoseconds last 584 years.
            Clock::Monotonic { source, origin, .. } => source.delta_as_nanos(*origin, source.raw()),
            Clock::Manual(manual) => manual.now(),
        }
    }

    /// Converts a reading of this clock to seconds since the Unix epoch, comparable with
    /// Python's `time.time()`. Readings in order convert to epoch times in order; for the
    /// monotonic clock `to_epoch(t) - time.time()` stays within [`WALL_STEP`] of `t - now()`
    /// however the two clocks drift apart or the wall clock is set.
    pub fn to_epoch(&self, t: Nanos) -> f64 {
        match self {
            Clock::Monotonic { wall, .. } => wall.origin(self) + t as f64 / NANOS_PER_SEC,
            Clock::Manual(manual) => manual.epoch_origin + t as f64 / NANOS_PER_SEC,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::monotonic()
    }
}

/// How far the wall clock may stray from a monotonic clock's conversion before the
/// conversion follows it (a jump, so kept below the 2 ms a reservation may be executed early).
pub const WALL_STEP: f64 = 1e-3;

/// The wall-clock time of a monotonic clock's zero, in epoch seconds (`f64` bits). Kept, not
/// measured at each conversion: a fresh measure jitters by however long the thread was held
/// up between its two readings, and two reservations made a microsecond apart would swap
/// order. It is measured again at each conversion and replaced only when the measure
/// disagrees by more than [`WALL_STEP`].
#[derive(Debug)]
pub struct WallAnchor(AtomicU64);

impl WallAnchor {
    /// The wall clock read between two readings of `clock`, taken as of their midpoint;
    /// `None` when the readings are more than 20 µs apart (the thread was held up).
    fn measure(clock: &Clock) -> Option<f64> {
        let before = clock.now();
        let wall = unix_now();
        let after = clock.now();
        let midpoint = before as f64 + (after - before) as f64 / 2.0;
        (after - before <= 20_000).then(|| wall - midpoint / NANOS_PER_SEC)
    }

    fn origin(&self, clock: &Clock) -> f64 {
        let kept = f64::from_bits(self.0.load(Ordering::Relaxed));
        match Self::measure(clock) {
            Some(fresh) if (fresh - kept).abs() > WALL_STEP => {
                self.0.store(fresh.to_bits(), Ordering::Relaxed);
                fresh
            }
            _ => kept,
        }
    }
}

/// A clock that stands still until advanced. Cheap to share: limiters hold an `Arc` of it.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
    epoch_origin: f64,
}

impl ManualClock {
    /// A clock at zero whose zero is `epoch_origin` seconds after the Unix epoch.
    pub fn new(epoch_origin: f64) -> Self {
        Self {
            now: AtomicU64::new(0),
            epoch_origin,
        }
    }

    #[inline]
    pub fn now(&self) -> Nanos {
        self.now.load(Ordering::Acquire)
    }

    /// Moves time forward; time never goes back.
    pub fn advance(&self, by: Nanos) {
        self.now.fetch_add(by, Ordering::AcqRel);
    }

    /// Sets the reading, if it is later than the current one.
    pub fn set(&self, to: Nanos) {
        self.now.fetch_max(to, Ordering::AcqRel);
    }

    /// A clock at zero whose zero is `start` epoch seconds, checked.
    pub fn starting_at(start: f64) -> Result<Self> {
        if !start.is_finite() {
            return Err(Error::invalid(
                "start",
                format!("must be a finite number of seconds, got {start}"),
            ));
        }
        Ok(Self::new(start))
    }

    /// Moves time forward by `seconds`, rounded up to a nanosecond; refuses a negative or
    /// non-finite step, or one that would run the clock past `u64::MAX` nanoseconds.
    pub fn advance_seconds(&self, seconds: f64) -> Result<()> {
        let refuse = || {
            Error::invalid(
                "seconds",
                format!(
                    "must be a finite number >= 0 that keeps the clock in range, got {seconds}"
                ),
            )
        };
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(refuse());
        }
        let step = (seconds * 1e9).ceil();
        if step >= u64::MAX as f64 {
            return Err(refuse());
        }
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                now.checked_add(step as Nanos)
            })
            .map(drop)
            .map_err(|_| refuse())
    }

    pub fn epoch_origin(&self) -> f64 {
        self.epoch_origin
    }
}

impl Default for ManualClock {
    /// A clock whose zero is the Unix epoch.
    fn default() -> Self {
        Self::new(0.0)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let manual = Arc::new(ManualClock::new(1000.0));
        let clock = Clock::Manual(manual.clone());
        assert_eq!(clock.now(), 0);
        manual.advance(1_500_000_000);
        assert_eq!(clock.now(), 1_500_000_000);
        manual.set(10);
        assert_eq!(clock.now(), 1_500_000_000);
        assert_eq!(clock.to_epoch(clock.now()), 1001.5);
    }

    #[test]
    fn manual_clock_refuses_steps_and_origins_out_of_range() {
        assert_eq!(
            ManualClock::starting_at(f64::NAN).unwrap_err().argument(),
            "start"
        );
        let manual = ManualClock::starting_at(5.0).unwrap();
        manual.advance_seconds(0.25).unwrap();
        assert_eq!(manual.now(), 250_000_000);
        for bad in [-1.0, f64::NAN, f64::INFINITY, 2e10] {
            assert_eq!(
                manual.advance_seconds(bad).unwrap_err().argument(),
                "seconds",
                "{bad}"
            );
        }
        // Two steps that each fit, but not together: the second is refused, not wrapped.
        manual.advance_seconds(9e9).unwrap();
        let before = manual.now();
        assert!(manual.advance_seconds(9.5e9).is_err());
        assert_eq!(manual.now(), before);
    }

    #[test]
    fn monotonic_readings_convert_to_wall_clock_time() {
        let clock = Clock::monotonic();
        let in_a_second = clock.to_epoch(clock.now() + 1_000_000_000);
        assert!(
            (in_a_second - unix_now() - 1.0).abs() < 1e-3,
            "{in_a_second}"
        );
    }

    #[test]
    fn readings_in_order_convert_to_epoch_times_in_order() {
        // Reservations made one after another are sorted by `execute_at` in the order made.
        let clock = Clock::monotonic();
        let mut last = f64::MIN;
        for _ in 0..200_000 {
            let epoch = clock.to_epoch(clock.now());
            assert!(epoch >= last, "{epoch} after {last}");
            last = epoch;
        }
    }

    #[test]
    fn a_wall_clock_that_was_set_is_followed() {
        let clock = Clock::monotonic();
        let Clock::Monotonic { wall, .. } = &clock else {
            unreachable!()
        };
        // As if the wall clock had been set back a second since the clock was made.
        let kept = f64::from_bits(wall.0.load(Ordering::Relaxed));
        wall.0.store((kept + 1.0).to_bits(), Ordering::Relaxed);
        let now = (0..100)
            .map(|_| clock.to_epoch(clock.now()) - unix_now())
            .fold(f64::MAX, |a, b| a.min(b.abs()));
        assert!(now < WALL_STEP, "{now}");
    }

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let clock = Clock::monotonic();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }
}
