//! The limiter against the admission model (`ratelimit_core::model`): random interleavings of
//! takes, callers' reservations, waiters' turns, executions, cancels, back-offs and peeks,
//! with clock advances (some to the very moments the model says an answer changes, give or
//! take a nanosecond), on a one-shard global limiter at rates its clock prices exactly. Every
//! answer must be the model's: allowed, reason, `retry_after` and slots to the nanosecond,
//! peeks to 1e-9 of a token.

use proptest::prelude::*;
use proptest::sample::Index;
mod common;
use common::cases;
use ratelimit_core::model::{self, Answer, Budget, Model, Op};
use ratelimit_core::{
    Algorithm, Booking, Clock, Decision, ManualClock, Nanos, Quota, RateLimiter, Refusal,
    ReservationPolicy,
};
use std::sync::Arc;

const SEC: Nanos = 1_000_000_000;
const MS: Nanos = 1_000_000;
/// Any key: one shard serves them all.
const KEY: u64 = 7;

/// Rates per second up to 50 whose token time, `1e9 / rate` ns, has a denominator of at
/// most 32: the limiter's clock scale prices them exactly (DESIGN, "Token bucket as GCRA").
fn exact_rates() -> Vec<u64> {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    (1..=50).filter(|&r| r / gcd(r, SEC) <= 32).collect()
}

#[derive(Debug, Clone, Copy)]
struct Setup {
    algorithm: Algorithm,
    rate: u64,
    /// Token bucket only (the sliding window's limit is the rate).
    burst: u64,
    ttl_ms: u64,
    grace_ms: u64,
}

fn setup(algorithm: Algorithm) -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(exact_rates()),
        any::<Index>(),
        prop::sample::select(vec![100u64, 300, 500, 1000]),
        prop::sample::select(vec![0u64, 50, 250]),
    )
        .prop_map(move |(rate, burst, ttl_ms, grace_ms)| Setup {
            algorithm,
            rate,
            burst: 1 + burst.index(2 * rate as usize) as u64,
            ttl_ms,
            grace_ms,
        })
}

/// A token count: small, or anywhere up to one past the capacity.
#[derive(Debug, Clone, Copy)]
enum Count {
    Small(u64),
    Any(Index),
}

#[derive(Debug, Clone)]
enum Step {
    /// Moves the clock on by this many nanoseconds.
    Advance(Nanos),
    /// Moves the clock on by this many token times.
    Tokens(u8),
    /// Moves the clock to a moment at which the model says an answer changes (or to when
    /// the last refusal said to retry), plus this many nanoseconds (-1, 0 or 1).
    Jump(Index, i8),
    Take(Count),
    Book {
        count: Count,
        max_wait: Option<Nanos>,
        waiter: bool,
    },
    /// Callers' reservations or waiters' turns booked one after the other, with no bound.
    Queue {
        bookings: u8,
        count: Count,
        waiter: bool,
    },
    Execute(Pick),
    Cancel(Pick),
    BackOff(Nanos),
    Peek,
}

/// A booking: one still in the book, or any made so far or one past them (an id never
/// issued).
#[derive(Debug, Clone, Copy)]
struct Pick {
    index: Index,
    live: bool,
}

fn pick() -> impl Strategy<Value = Pick> {
    (any::<Index>(), prop::bool::weighted(0.75)).prop_map(|(index, live)| Pick { index, live })
}

fn count() -> impl Strategy<Value = Count> {
    prop_oneof![
        4 => (1u64..=3).prop_map(Count::Small),
        1 => any::<Index>().prop_map(Count::Any),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        2 => prop_oneof![1..=1_000u64, MS..=300 * MS].prop_map(Step::Advance),
        2 => (0u8..=3).prop_map(Step::Tokens),
        3 => (any::<Index>(), -1i8..=1).prop_map(|(i, d)| Step::Jump(i, d)),
        4 => count().prop_map(Step::Take),
        4 => (
            count(),
            prop_oneof![Just(None), Just(Some(0)), (1..=2 * SEC).prop_map(Some)],
            any::<bool>(),
        )
            .prop_map(|(count, max_wait, waiter)| Step::Book {
                count,
                max_wait,
                waiter,
            }),
        1 => (2u8..=12, count(), any::<bool>()).prop_map(|(bookings, count, waiter)| {
            Step::Queue {
                bookings,
                count,
                waiter,
            }
        }),
        4 => pick().prop_map(Step::Execute),
        1 => pick().prop_map(Step::Cancel),
        1 => prop_oneof![1..=1_000u64, MS..=1_500 * MS].prop_map(Step::BackOff),
        2 => Just(Step::Peek),
    ];
    prop::collection::vec(step, 1..80)
}

/// Seconds that the limiter rounds up to exactly `ns` nanoseconds (`ns / 1e9` may be a
/// hair over).
fn seconds_rounding_up_to(ns: Nanos) -> f64 {
    let mut seconds = ns as f64 / 1e9;
    while (seconds * 1e9).ceil() > ns as f64 {
        seconds = f64::from_bits(seconds.to_bits() - 1);
    }
    while (seconds * 1e9).ceil() < ns as f64 {
        seconds = f64::from_bits(seconds.to_bits() + 1);
    }
    seconds
}

/// The limiter and the model side by side.
struct Pair<B> {
    limiter: RateLimiter,
    clock: Arc<ManualClock>,
    model: Model<B>,
    /// The limiter's ids, in booking order (the model's ids are the indexes).
    ids: Vec<String>,
    /// When the last refusal said to retry.
    retry_at: Option<Nanos>,
    capacity: u64,
    rate: u64,
}

/// A refusal's `retry_after` in nanoseconds (the limiter's are whole nanoseconds in f64
/// seconds, which round back exactly).
fn nanos(seconds: f64) -> Nanos {
    (seconds * 1e9).round() as Nanos
}

fn answer(decision: &Decision) -> Answer {
    match decision.reason {
        None => Answer::Admitted,
        Some(reason) => Answer::Refused {
            reason,
            retry_after: decision.retry_after.map(nanos),
        },
    }
}

impl<B: Budget> Pair<B> {
    fn new(setup: Setup, budget: B) -> Self {
        let burst = (setup.algorithm == Algorithm::TokenBucket).then_some(setup.burst as f64);
        let quota = Quota::new(setup.rate as f64, 1.0, burst, setup.algorithm, Some(1)).unwrap();
        let policy = ReservationPolicy {
            ttl: setup.ttl_ms as f64 / 1e3,
            grace: setup.grace_ms as f64 / 1e3,
            ..ReservationPolicy::default()
        };
        let clock = Arc::new(ManualClock::new(0.0));
        let limiter =
            RateLimiter::with_reservations(quota, Clock::Manual(clock.clone()), policy).unwrap();
        let ttl = (policy.ttl * 1e9).ceil() as Nanos;
        let grace = (policy.grace * 1e9).ceil() as Nanos;
        Self {
            limiter,
            clock,
            model: Model::new(budget, ttl, grace),
            ids: Vec::new(),
            retry_at: None,
            capacity: match setup.algorithm {
                Algorithm::TokenBucket => setup.burst,
                Algorithm::SlidingWindow => setup.rate,
            },
            rate: setup.rate,
        }
    }

    fn count(&self, count: Count) -> u64 {
        match count {
            Count::Small(n) => n,
            Count::Any(i) => 1 + i.index(self.capacity as usize + 1) as u64,
        }
    }

    fn advance_to(&self, target: Nanos) {
        let now = self.clock.now();
        if target > now {
            self.clock.advance(target - now);
        }
    }

    fn pick(&self, pick: Pick) -> model::Id {
        let bookings = &self.model.book.bookings;
        let live: Vec<model::Id> = (0..bookings.len())
            .filter(|&id| bookings[id].is_live())
            .collect();
        if pick.live && !live.is_empty() {
            return live[pick.index.index(live.len())];
        }
        pick.index.index(bookings.len() + 1)
    }

    /// The operations a step asks for (none for a move of the clock, which it makes).
    fn ops(&mut self, step: &Step) -> Vec<Op> {
        let now = self.clock.now();
        let op = match *step {
            Step::Advance(ns) => {
                self.clock.advance(ns);
                return vec![];
            }
            Step::Tokens(k) => {
                self.clock.advance(u64::from(k) * SEC / self.rate);
                return vec![];
            }
            Step::Jump(ref index, offset) => {
                let mut moments = self.model.moments();
                moments.extend(self.retry_at);
                moments.retain(|&m| m > now && m < now + 100 * SEC);
                moments.sort_unstable();
                moments.dedup();
                if !moments.is_empty() {
                    let moment = moments[index.index(moments.len())];
                    self.advance_to(moment.saturating_add_signed(offset.into()));
                }
                return vec![];
            }
            Step::Take(count) => Op::Take {
                count: self.count(count),
            },
            Step::Book {
                count,
                max_wait,
                waiter,
            } => Op::Book {
                count: self.count(count),
                max_wait_ns: max_wait,
                waiter,
            },
            Step::Queue {
                bookings,
                count,
                waiter,
            } => {
                let book = Op::Book {
                    count: self.count(count),
                    max_wait_ns: None,
                    waiter,
                };
                return vec![book; bookings.into()];
            }
            Step::Execute(pick) => Op::Execute {
                id: self.pick(pick),
            },
            Step::Cancel(pick) => Op::Cancel {
                id: self.pick(pick),
            },
            Step::BackOff(ns) => Op::BackOff { ns },
            Step::Peek => Op::Peek,
        };
        vec![op]
    }

    /// `op` on both at the clock's time: the limiter's answer, as the model states answers,
    /// and the model's.
    fn run(&mut self, op: &Op) -> (Answer, Answer) {
        let now = self.clock.now();
        let observed = match *op {
            Op::Take { count } => answer(&self.limiter.try_acquire_key(KEY, count).unwrap()),
            Op::Book {
                count,
                max_wait_ns,
                waiter,
            } => {
                let seconds = max_wait_ns.map_or(f64::INFINITY, |ns| ns as f64 / 1e9);
                let booking = if waiter {
                    self.limiter.reserve_turn(KEY, count, seconds)
                } else {
                    self.limiter.reserve(KEY, count, seconds)
                };
                match booking.unwrap() {
                    Booking::Reserved(reservation) => {
                        self.ids.push(reservation.id);
                        Answer::Booked {
                            id: self.ids.len() - 1,
                            slot: reservation.execute_at,
                            expires: reservation.expires_at,
                        }
                    }
                    Booking::Decided(decision) => answer(&decision),
                }
            }
            Op::Execute { id } => answer(&self.limiter.execute_reservation(&self.key(id)).unwrap()),
            Op::Cancel { id } => {
                Answer::Cancelled(self.limiter.cancel_reservation(&self.key(id)).unwrap())
            }
            Op::BackOff { ns } => {
                self.limiter
                    .back_off(KEY, seconds_rounding_up_to(ns))
                    .unwrap();
                Answer::BackedOff
            }
            Op::Peek => {
                let tokens = self.limiter.peek(KEY).unwrap();
                let unit = self.model.budget.unit() as f64;
                let units = (tokens * unit).round() as i128;
                // Within 1e-9 of a token of the model's is the model's.
                match self.model.step(now, op).0 {
                    Answer::Peeked { units: expected }
                        if (tokens - expected as f64 / unit).abs() <= 1e-9 =>
                    {
                        Answer::Peeked { units: expected }
                    }
                    _ => Answer::Peeked { units },
                }
            }
        };
        let expected = self.model.apply(now, op);
        if let Answer::Refused {
            retry_after: Some(wait),
            ..
        } = expected
        {
            self.retry_at = Some(now + wait);
        }
        (observed, expected)
    }

    /// The limiter's id for the model's: one it issued, or one it never did.
    fn key(&self, id: model::Id) -> String {
        let issued = self.ids.get(id).cloned();
        issued.unwrap_or_else(|| "ffffffff-0000000000000000".into())
    }
}

fn play<B: Budget>(setup: Setup, budget: B, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut pair = Pair::new(setup, budget);
    for (i, step) in steps.iter().enumerate() {
        let now = pair.clock.now();
        for op in pair.ops(step) {
            let (observed, expected) = pair.run(&op);
            prop_assert_eq!(
                observed,
                expected,
                "step {} at {} ns: {:?}\nmodel after it: {:?}",
                i,
                now,
                op,
                pair.model
            );
        }
    }
    Ok(())
}

fn token_bucket(setup: Setup) -> model::TokenBucket {
    model::TokenBucket::new(setup.rate, SEC, setup.burst, 0)
}

fn sliding_window(setup: Setup) -> model::SlidingWindow {
    model::SlidingWindow::new(setup.rate, SEC)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn the_token_bucket_answers_as_the_model(
        setup in setup(Algorithm::TokenBucket),
        steps in steps(),
    ) {
        play(setup, token_bucket(setup), &steps)?;
    }

    #[test]
    fn the_sliding_window_answers_as_the_model(
        setup in setup(Algorithm::SlidingWindow),
        steps in steps(),
    ) {
        play(setup, sliding_window(setup), &steps)?;
    }
}

/// Plays `ops`, each at its time, on both; returns the answers (limiter's, model's).
fn replay<B: Budget>(setup: Setup, budget: B, ops: &[(Nanos, Op)]) -> Vec<(Answer, Answer)> {
    let mut pair = Pair::new(setup, budget);
    ops.iter()
        .map(|(at, op)| {
            pair.advance_to(*at);
            pair.run(op)
        })
        .collect()
}

fn caller(count: u64) -> Op {
    Op::Book {
        count,
        max_wait_ns: None,
        waiter: false,
    }
}

/// The minimal case for each disagreement found: the limiter's answer must be the model's.
fn agrees<B: Budget>(setup: Setup, budget: B, ops: &[(Nanos, Op)]) {
    for (i, (observed, expected)) in replay(setup, budget, ops).into_iter().enumerate() {
        assert_eq!(observed, expected, "op {i}: {:?}", ops[i]);
    }
}

/// A queued booking executed early waits until it could be taken beside the other
/// promises: for the window, the slot a booking would get beside them, never before the
/// last other queued promise's (1.000000021 s here). When the booking is itself the last
/// queued one, the limiter leaves that out and answers when the log alone makes room.
#[test]
fn the_last_queued_booking_waits_for_the_promise_before_it() {
    let setup = Setup {
        algorithm: Algorithm::SlidingWindow,
        rate: 8,
        burst: 1,
        ttl_ms: 1000,
        grace_ms: 250,
    };
    let ops = [
        (0, Op::Take { count: 2 }),
        (20, Op::Take { count: 3 }),
        (20, caller(3)),
        // Counted behind the 3 held: its slot is when the third logged admission leaves.
        (20, caller(3)),
        (20, Op::Cancel { id: 0 }),
        (20, caller(1)),
        (20, Op::Execute { id: 2 }),
    ];
    agrees(setup, sliding_window(setup), &ops);
}

/// DESIGN: the window counts the log, then each promise at its slot. A cancelled booking is
/// no promise, but the limiter (and so the model, which copies its count) still counts every
/// booking from the oldest live one on: here the take could be admitted when the held
/// reservation's tokens leave the window, a window after they are spent at 0, yet it is
/// told to retry a window later than that (behind the cancelled booking's slot).
#[test]
fn a_cancelled_booking_is_no_longer_counted_by_the_window() {
    let setup = Setup {
        algorithm: Algorithm::SlidingWindow,
        rate: 2,
        burst: 1,
        ttl_ms: 1000,
        grace_ms: 250,
    };
    let mut pair = Pair::new(setup, sliding_window(setup));
    let held = pair.run(&caller(2)).0;
    assert!(matches!(held, Answer::Booked { slot: 0, .. }), "{held:?}");
    let behind = pair.run(&caller(2)).0;
    assert!(
        matches!(behind, Answer::Booked { slot, .. } if slot == SEC + 1),
        "{behind:?}"
    );
    assert_eq!(pair.run(&Op::Cancel { id: 1 }).0, Answer::Cancelled(true));
    let take = pair.run(&Op::Take { count: 1 }).0;
    let after_the_held = Answer::Refused {
        reason: Refusal::RateLimited,
        retry_after: Some(SEC + 1),
    };
    assert_eq!(take, after_the_held);
}
