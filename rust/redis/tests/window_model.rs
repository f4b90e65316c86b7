//! The sliding window's script against the core's admission model
//! (`ratelimit_core::model`): random interleavings of takes, waiters' turns (charged at their
//! slots when booked, and executed by the model at their slots, as a waiter that sleeps to
//! its slot is), back-offs (while no turn is pending: see below) and peeks, with clock
//! advances, on Redis and on Valkey. Time is a manual clock passed to the script in
//! microseconds and the model runs in microseconds, so every answer must be the model's
//! exactly: allowed, reason, waits, slots and peeks. (The token bucket's script keeps the
//! model's whole book: `bucket_model.rs`.)

mod common;

use std::sync::Arc;

use common::{binaries, Server};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ratelimit_core::model::{Answer, Budget, Model, Op, SlidingWindow, TokenBucket, GRACE};
use ratelimit_core::{Algorithm, ManualClock, Refusal};
use ratelimit_redis::{Booked, Rule};

#[derive(Debug, Clone, Copy)]
enum Step {
    Take(u64),
    /// A waiter's turn with a bound in microseconds.
    Turn(u64, u64),
    Peek,
    BackOff(u64),
    Advance(u64),
}

fn steps(burst: u64) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            4 => (1..=burst + 1).prop_map(Step::Take),
            3 => (1..=burst + 1, prop::sample::select(vec![0u64, 100_000, 1_000_000, 1 << 40]))
                .prop_map(|(c, w)| Step::Turn(c, w)),
            1 => Just(Step::Peek),
            1 => (0..1_500_000u64).prop_map(Step::BackOff),
            5 => prop::sample::select(vec![0u64, 1, 999, 50_000, 100_000, 333_333, 1_000_000])
                .prop_map(Step::Advance),
        ],
        1..60,
    )
}

/// Runs `steps` on the model and on `server`'s script side by side.
fn compare(
    server: &Server,
    algorithm: Algorithm,
    rate: u64,
    burst: u64,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new(0.0));
    let budget = server.budget(
        algorithm,
        rate as f64,
        burst as f64,
        Some(Arc::clone(&clock)),
    );
    let rule = Rule::of(&budget.quota()).unwrap();
    match rule {
        Rule::Bucket(price) => {
            let bucket = TokenBucket::new(price.tick, price.token, burst, 0);
            against(
                Model::new(bucket, u64::MAX / 4, GRACE),
                &budget,
                &clock,
                rule,
                steps,
            )
        }
        Rule::Window { limit, window } => {
            let window = SlidingWindow::new(limit, window);
            against(
                Model::new(window, u64::MAX / 4, GRACE),
                &budget,
                &clock,
                rule,
                steps,
            )
        }
    }
}

fn against<B: Budget>(
    mut model: Model<B>,
    budget: &ratelimit_redis::RedisBudget,
    clock: &ManualClock,
    rule: Rule,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let mut now: u64 = 0;
    // Turns booked and not yet executed: (slot, id).
    let mut pending: Vec<(u64, usize)> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let context = || format!("step {i} {step:?} at {now} us; steps {steps:?}");
        match *step {
            Step::Advance(by) => {
                let until = now + by;
                pending.sort();
                while let Some(&(slot, id)) = pending.first().filter(|(slot, _)| *slot <= until) {
                    let answer = model.apply(slot.max(now), &Op::Execute { id });
                    prop_assert_eq!(answer, Answer::Admitted, "turn at its slot: {}", context());
                    pending.remove(0);
                }
                now = until;
                clock.set(now * 1_000);
            }
            Step::Take(count) => {
                let expected = model.apply(now, &Op::Take { count });
                let got = budget.try_acquire("k", count).unwrap();
                let answer = match (got.allowed, got.reason) {
                    (true, _) => Answer::Admitted,
                    (false, Some(reason)) => Answer::Refused {
                        reason,
                        retry_after: got.retry_after.map(|s| (s * 1e6).round() as u64),
                    },
                    _ => unreachable!(),
                };
                prop_assert_eq!(answer, expected, "{}", context());
            }
            Step::Turn(count, max_wait) => {
                let expected = model.apply(
                    now,
                    &Op::Book {
                        count,
                        max_wait_ns: Some(max_wait),
                        waiter: true,
                    },
                );
                match (
                    budget.book_turn("k", count, max_wait as f64 / 1e6).unwrap(),
                    expected,
                ) {
                    (Booked::Turn(turn), Answer::Booked { id, slot, .. }) => {
                        prop_assert_eq!(
                            (turn.wait * 1e6).round() as u64,
                            slot - now,
                            "{}",
                            context()
                        );
                        if slot == now {
                            let answer = model.apply(now, &Op::Execute { id });
                            prop_assert_eq!(answer, Answer::Admitted, "turn now: {}", context());
                        } else {
                            pending.push((slot, id));
                        }
                    }
                    (
                        Booked::Refused(refusal),
                        Answer::Refused {
                            reason,
                            retry_after,
                        },
                    ) => {
                        prop_assert_eq!(refusal.reason, Some(reason), "{}", context());
                        let wait = refusal.retry_after.map(|s| (s * 1e6).round() as u64);
                        if reason == Refusal::MaxWaitExceeded {
                            prop_assert_eq!(wait, retry_after, "{}", context());
                        }
                    }
                    (got, expected) => {
                        prop_assert!(false, "{got:?} vs the model's {expected:?}: {}", context())
                    }
                }
            }
            // With a turn booked ahead, the model's bucket counts fractions of a token
            // refilled before the turn's slot as free; the script's charge already holds them.
            Step::Peek if !pending.is_empty() && matches!(rule, Rule::Bucket(_)) => {}
            Step::Peek => {
                let Answer::Peeked { units } = model.apply(now, &Op::Peek) else {
                    unreachable!()
                };
                let tokens = budget.peek("k").unwrap();
                prop_assert_eq!(tokens, units as f64 / rule.unit() as f64, "{}", context());
            }
            // On Redis a turn's tokens are charged when it is booked, so a back-off does not
            // move turns booked before it (the model's would wait): compared without them.
            Step::BackOff(_) if !pending.is_empty() => {}
            Step::BackOff(micros) => {
                model.apply(now, &Op::BackOff { ns: micros });
                budget.back_off("k", micros as f64 / 1e6).unwrap();
            }
        }
    }
    Ok(())
}

#[test]
fn the_sliding_window_script_answers_as_the_model_does() {
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
        let setup = (prop::sample::select(vec![1u64, 3, 7, 10, 50]), 1..=5u64);
        // A window's capacity is its rate.
        let window = algorithm == Algorithm::SlidingWindow;
        let result = runner.run(
            &setup.prop_flat_map(move |(r, b)| {
                let b = if window { r } else { b };
                (Just(r), Just(b), steps(b))
            }),
            |(rate, burst, steps)| compare(&server, algorithm, rate, burst, &steps),
        );
        if let Err(error) = result {
            panic!("on {name}: {error}");
        }
    }
}
