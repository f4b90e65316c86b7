//! The scripts against the core's admission model (`ratelimit_core::model`), for the token
//! bucket and the sliding window: random interleavings of every operation (takes, callers'
//! reservations, waiters' turns, executions and cancels of any booking at any time,
//! back-offs, peeks) with clock advances, on Redis and on Valkey. Time is a manual clock
//! passed to the script in microseconds; the model runs in the same units (for the bucket a
//! token costs `price.token` units and a microsecond refills `price.tick`), so every answer
//! must be the model's exactly: allowed, reason, waits, slots, expiries and peeks. One allowance: the server forgets a finished reservation's
//! outcome a ttl after it expired (the model never does), and answers `unknown_reservation`.

mod common;

use std::sync::Arc;

use common::{binaries, unique, Server};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use ratelimit_core::model::{Answer, Budget, Model, Op, SlidingWindow, State, TokenBucket};
use ratelimit_core::{Algorithm, Decision, ManualClock, Refusal};
use ratelimit_redis::{Booked, RedisBudget, Reserved, Rule, Turn};

#[derive(Debug, Clone)]
enum Step {
    Take(u64),
    /// `try_acquire_many` of these counts: the model takes them one after another.
    Takes(Vec<u64>),
    /// A caller's reservation (`waiter` false) or a waiting caller's turn, with a bound in
    /// microseconds.
    Book {
        count: u64,
        max_wait: u64,
        waiter: bool,
    },
    /// Waiters' turns asked for by tasks at once (the I/O thread joins those that reach it
    /// together into one `books` call): the model books them one after another.
    TurnsTogether(Vec<u64>),
    Execute(Index),
    Cancel(Index),
    /// Turns given back by tasks at once (joined into `cancels`), in order.
    GiveBacksTogether(Vec<Index>),
    Peek,
    BackOff(u64),
    Advance(u64),
}

fn steps(burst: u64) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            4 => (1..=burst + 1).prop_map(Step::Take),
            1 => prop::collection::vec(1..=burst + 1, 1..6).prop_map(Step::Takes),
            4 => (
                1..=burst + 1,
                prop::sample::select(vec![0u64, 100_000, 1_000_000, 1 << 40]),
                any::<bool>()
            )
                .prop_map(|(count, max_wait, waiter)| Step::Book { count, max_wait, waiter }),
            1 => prop::collection::vec(1..=burst + 1, 1..6).prop_map(Step::TurnsTogether),
            4 => any::<Index>().prop_map(Step::Execute),
            1 => any::<Index>().prop_map(Step::Cancel),
            1 => prop::collection::vec(any::<Index>(), 1..6).prop_map(Step::GiveBacksTogether),
            1 => Just(Step::Peek),
            1 => (0..1_500_000u64).prop_map(Step::BackOff),
            5 => prop::sample::select(vec![0u64, 1, 999, 1_000, 50_000, 100_000, 250_001, 333_333, 1_000_000])
                .prop_map(Step::Advance),
        ],
        1..60,
    )
}

/// What the server gave for a booking.
enum Given {
    Reservation(String),
    Turn(Turn),
    /// A turn admitted at once.
    Done,
}

fn answer(decision: &Decision) -> Answer {
    match (decision.allowed, decision.reason) {
        (true, _) => Answer::Admitted,
        (false, Some(reason)) => Answer::Refused {
            reason,
            retry_after: decision.retry_after.map(|s| (s * 1e6).round() as u64),
        },
        _ => unreachable!(),
    }
}

fn compare(
    budget: &RedisBudget,
    clock: &ManualClock,
    burst: u64,
    ttl: u64,
    grace: u64,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let rule = Rule::of(&budget.quota()).unwrap();
    match rule {
        Rule::Bucket(price) => {
            let bucket = TokenBucket::new(price.tick, price.token, burst, 0);
            against(Model::new(bucket, ttl, grace), budget, clock, rule, steps)
        }
        Rule::Window { limit, window } => {
            let window = SlidingWindow::new(limit, window);
            against(Model::new(window, ttl, grace), budget, clock, rule, steps)
        }
    }
}

fn against<B: Budget>(
    mut model: Model<B>,
    budget: &RedisBudget,
    clock: &ManualClock,
    rule: Rule,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let ttl = model.ttl;
    model.recheck = 1_000;
    let mut now: u64 = 0;
    // Every booking made, by the model's id.
    let mut given: Vec<(Given, u64)> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let context = || format!("step {i} {step:?} at {now} us; steps {steps:?}");
        match step.clone() {
            Step::Advance(by) => {
                now += by;
                clock.set(now * 1_000);
            }
            Step::Take(count) => {
                let expected = model.apply(now, &Op::Take { count });
                let got = answer(&budget.try_acquire("k", count).unwrap());
                prop_assert_eq!(got, expected, "{}", context());
            }
            Step::Takes(counts) => {
                let requests: Vec<(&str, u64)> = counts.iter().map(|&c| ("k", c)).collect();
                let got = budget.try_acquire_many(&requests).unwrap();
                for (count, decision) in counts.iter().zip(&got) {
                    let expected = model.apply(now, &Op::Take { count: *count });
                    prop_assert_eq!(answer(decision), expected, "{}", context());
                }
            }
            Step::Book {
                count,
                max_wait,
                waiter,
            } => {
                let op = Op::Book {
                    count,
                    max_wait_ns: Some(max_wait),
                    waiter,
                };
                let expected = model.apply(now, &op);
                let bound = max_wait as f64 / 1e6;
                if waiter {
                    match (budget.book_turn("k", count, bound).unwrap(), expected) {
                        (Booked::Admitted(_), Answer::Booked { id, slot, .. }) => {
                            let held = matches!(model.book.bookings[id].state, State::Held { .. });
                            prop_assert!(slot == now && held, "admitted at once: {}", context());
                            let executed = model.apply(now, &Op::Execute { id });
                            prop_assert_eq!(executed, Answer::Admitted, "{}", context());
                            given.push((Given::Done, slot));
                        }
                        (Booked::Turn(turn), Answer::Booked { id, slot, .. }) => {
                            prop_assert_eq!(
                                (turn.wait * 1e6).round() as u64,
                                slot - now,
                                "{}",
                                context()
                            );
                            prop_assert_eq!(id, given.len(), "{}", context());
                            given.push((Given::Turn(turn), slot));
                        }
                        (Booked::Refused(refusal), expected) => {
                            prop_assert_eq!(answer(&refusal), expected, "{}", context());
                        }
                        (_, expected) => {
                            prop_assert!(false, "booked vs the model's {expected:?}: {}", context())
                        }
                    }
                } else {
                    match (budget.reserve("k", count, bound).unwrap(), expected) {
                        (Reserved::Reservation(r), Answer::Booked { id, slot, expires }) => {
                            prop_assert_eq!(
                                (r.execute_at, r.expires_at),
                                (slot, expires),
                                "{}",
                                context()
                            );
                            prop_assert_eq!(id, given.len(), "{}", context());
                            given.push((Given::Reservation(r.id), slot));
                        }
                        (Reserved::Refused(refusal), expected) => {
                            prop_assert_eq!(answer(&refusal), expected, "{}", context());
                        }
                        (_, expected) => {
                            prop_assert!(
                                false,
                                "reserved vs the model's {expected:?}: {}",
                                context()
                            )
                        }
                    }
                }
            }
            Step::Execute(index) | Step::Cancel(index) if !given.is_empty() => {
                let id = index.index(given.len());
                let cancel = matches!(step, Step::Cancel(_));
                let op = if cancel {
                    Op::Cancel { id }
                } else {
                    Op::Execute { id }
                };
                let expected = model.apply(now, &op);
                let got = match (&given[id].0, cancel) {
                    (Given::Reservation(rid), false) => {
                        answer(&budget.execute_reservation(rid).unwrap())
                    }
                    (Given::Reservation(rid), true) => {
                        Answer::Cancelled(budget.cancel_reservation(rid).unwrap())
                    }
                    (Given::Turn(turn), false) => {
                        answer(&budget.execute_turn(turn, f64::INFINITY).unwrap())
                    }
                    (Given::Turn(turn), true) => Answer::Cancelled(budget.give_back(turn).unwrap()),
                    // Finished in the model too (a waiter's finished turn is unknown): the
                    // server is asked something that changes nothing, so that both bring
                    // their book up to now at the same moments.
                    (Given::Done, _) => {
                        budget.peek("k").unwrap();
                        expected
                    }
                };
                let forgotten =
                    got == Answer::Refused {
                        reason: Refusal::UnknownReservation,
                        retry_after: None,
                    } && now >= given[id].1 + 2 * ttl
                        && matches!(
                            expected,
                            Answer::Refused {
                                reason: Refusal::Expired
                                    | Refusal::Cancelled
                                    | Refusal::AlreadyExecuted,
                                ..
                            }
                        );
                if !forgotten {
                    prop_assert_eq!(got, expected, "{}", context());
                }
            }
            Step::Execute(_) | Step::Cancel(_) => {}
            Step::TurnsTogether(counts) => {
                let answers = together(counts.iter().map(|&count| {
                    move |done: Box<dyn FnOnce(Booked) + Send>| {
                        budget.spawn_book_turn("k", count, f64::INFINITY, move |booked| {
                            done(booked.unwrap())
                        })
                    }
                }));
                for (count, booked) in counts.into_iter().zip(answers) {
                    let op = Op::Book {
                        count,
                        max_wait_ns: None,
                        waiter: true,
                    };
                    match (booked, model.apply(now, &op)) {
                        (Booked::Admitted(_), Answer::Booked { id, slot, .. }) => {
                            prop_assert_eq!(slot, now, "admitted at once: {}", context());
                            let executed = model.apply(now, &Op::Execute { id });
                            prop_assert_eq!(executed, Answer::Admitted, "{}", context());
                            given.push((Given::Done, slot));
                        }
                        (Booked::Turn(turn), Answer::Booked { id, slot, .. }) => {
                            let wait = (turn.wait * 1e6).round() as u64;
                            prop_assert_eq!((id, wait), (given.len(), slot - now), "{}", context());
                            given.push((Given::Turn(turn), slot));
                        }
                        (Booked::Refused(refusal), expected) => {
                            prop_assert_eq!(answer(&refusal), expected, "{}", context());
                        }
                        (_, expected) => {
                            prop_assert!(false, "booked vs the model's {expected:?}: {}", context())
                        }
                    }
                }
            }
            Step::GiveBacksTogether(indices) => {
                let turns: Vec<(usize, &Turn)> = indices
                    .iter()
                    .filter_map(|index| {
                        let id = index.index(given.len().max(1));
                        match given.get(id) {
                            Some((Given::Turn(turn), _)) => Some((id, turn)),
                            _ => None,
                        }
                    })
                    .collect();
                let answers = together(turns.iter().map(|&(_, turn)| {
                    move |done: Box<dyn FnOnce(bool) + Send>| {
                        budget.spawn_give_back(turn, move |live| done(live.unwrap()))
                    }
                }));
                for ((id, _), live) in turns.into_iter().zip(answers) {
                    let expected = model.apply(now, &Op::Cancel { id });
                    prop_assert_eq!(Answer::Cancelled(live), expected, "{}", context());
                }
            }
            Step::Peek => {
                let Answer::Peeked { units } = model.apply(now, &Op::Peek) else {
                    unreachable!()
                };
                let tokens = budget.peek("k").unwrap();
                prop_assert_eq!(tokens, units as f64 / rule.unit() as f64, "{}", context());
            }
            Step::BackOff(micros) => {
                model.apply(now, &Op::BackOff { ns: micros });
                budget.back_off("k", micros as f64 / 1e6).unwrap();
            }
        }
    }
    Ok(())
}

/// Starts every call before waiting for any (as tasks would), and their answers in order.
fn together<T: Send + 'static, Call>(calls: impl Iterator<Item = Call>) -> Vec<T>
where
    Call: FnOnce(Box<dyn FnOnce(T) + Send>),
{
    let receivers: Vec<_> = calls
        .map(|call| {
            let (send, receive) = std::sync::mpsc::channel();
            call(Box::new(move |answer| drop(send.send(answer))));
            receive
        })
        .collect();
    receivers.into_iter().map(|r| r.recv().unwrap()).collect()
}

#[test]
fn the_token_bucket_script_keeps_the_models_book() {
    check(Algorithm::TokenBucket);
}

#[test]
fn the_sliding_window_script_keeps_the_models_book() {
    check(Algorithm::SlidingWindow);
}

fn check(algorithm: Algorithm) {
    let cases = std::env::var("PROPTEST_CASES").map_or(300, |n| n.parse().unwrap());
    for (name, binary) in binaries() {
        let server = Server::start(&binary);
        let mut runner = TestRunner::new(Config {
            cases,
            ..Config::default()
        });
        let setup = (
            prop::sample::select(vec![1u64, 3, 7, 10, 50]),
            1..=5u64,
            prop::sample::select(vec![100_000u64, 300_000, 1_000_000]),
            prop::sample::select(vec![0u64, 50_000, 250_000]),
        );
        let window = algorithm == Algorithm::SlidingWindow;
        let result = runner.run(
            &setup.prop_flat_map(move |(r, b, ttl, grace)| {
                // A window's capacity is its rate.
                let b = if window { r } else { b };
                (Just(r), Just(b), Just(ttl), Just(grace), steps(b))
            }),
            |(rate, burst, ttl, grace, steps)| {
                let clock = Arc::new(ManualClock::new(0.0));
                let budget = server.budget_in(
                    &format!("t{}", unique()),
                    algorithm,
                    rate as f64,
                    burst as f64,
                    Some(Arc::clone(&clock)),
                    ttl,
                    grace,
                );
                compare(&budget, &clock, burst, ttl, grace, &steps)
            },
        );
        if let Err(error) = result {
            panic!("on {name}: {error}");
        }
    }
}
