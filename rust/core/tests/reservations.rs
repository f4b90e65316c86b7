//! Reservations (SPEC I4) against the public API, on a manual clock.

use ratelimit_core::{
    Algorithm, Booking, Clock, Error, ManualClock, Quota, RateLimiter, Refusal, Reservation,
    ReservationPolicy,
};
use std::sync::Arc;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

fn limiter(
    algorithm: Algorithm,
    rate: f64,
    burst: Option<f64>,
    shards: usize,
) -> (RateLimiter, Arc<ManualClock>) {
    let quota = Quota::new(rate, 1.0, burst, algorithm, Some(shards)).unwrap();
    let manual = Arc::new(ManualClock::new(0.0));
    (
        RateLimiter::new(quota, Clock::Manual(manual.clone())).unwrap(),
        manual,
    )
}

/// 10 per second, burst 10.
fn ten_per_second(shards: usize) -> (RateLimiter, Arc<ManualClock>) {
    limiter(Algorithm::TokenBucket, 10.0, Some(10.0), shards)
}

/// [`ten_per_second`] with its own reservation policy.
fn with_policy(shards: usize, policy: ReservationPolicy) -> (RateLimiter, Arc<ManualClock>) {
    let quota = Quota::new(10.0, 1.0, Some(10.0), Algorithm::TokenBucket, Some(shards)).unwrap();
    let manual = Arc::new(ManualClock::new(0.0));
    let clock = Clock::Manual(manual.clone());
    (
        RateLimiter::with_reservations(quota, clock, policy).unwrap(),
        manual,
    )
}

fn reserve(limiter: &RateLimiter, key: u64, count: u64) -> Reservation {
    reserved(limiter.reserve(key, count, f64::INFINITY).unwrap())
}

fn reserved(booking: Booking) -> Reservation {
    match booking {
        Booking::Reserved(reservation) => reservation,
        Booking::Decided(decision) => panic!("refused: {decision:?}"),
    }
}

#[test]
fn reservations_made_together_get_successive_slots() {
    for shards in [1, 4, 16] {
        let (limiter, _manual) = ten_per_second(shards);
        let slots: Vec<u64> = (0..15)
            .map(|i| reserve(&limiter, i, 1).execute_at)
            .collect();
        // The burst now, then one every 100 ms, each after the one before it.
        let expected: Vec<u64> = (0..15u64)
            .map(|i| if i < 10 { 0 } else { (i - 9) * 100 * MS })
            .collect();
        assert_eq!(slots, expected, "shards={shards}");
    }
}

#[test]
fn held_tokens_count_against_the_budget_at_once() {
    for shards in [1, 4] {
        let (limiter, _manual) = ten_per_second(shards);
        reserve(&limiter, 1, 10);
        assert_eq!(limiter.peek(0).unwrap(), 0.0);
        let pending = reserve(&limiter, 2, 1);
        assert_eq!(pending.execute_at, 100 * MS);
        // Immediate requests queue behind the pending reservation.
        let decision = limiter.try_acquire("k", 1).unwrap();
        assert!(!decision.allowed);
        assert_eq!(decision.reason, Some(Refusal::RateLimited));
        assert!(
            (decision.retry_after.unwrap() - 0.2).abs() < 1e-9,
            "{decision:?}"
        );
    }
}

#[test]
fn a_reservation_executes_once_when_its_slot_has_come() {
    let (limiter, manual) = ten_per_second(4);
    let first = reserve(&limiter, 1, 10);
    assert!(limiter.execute_reservation(&first.id).unwrap().allowed);
    let r = reserve(&limiter, 2, 2);
    assert_eq!(r.execute_at, 200 * MS);
    let early = limiter.execute_reservation(&r.id).unwrap();
    assert_eq!(early.reason, Some(Refusal::NotReady));
    assert!((early.retry_after.unwrap() - 0.2).abs() < 1e-9);
    manual.advance(200 * MS);
    let on_time = limiter.execute_reservation(&r.id).unwrap();
    assert!(on_time.allowed, "{on_time:?}");
    // Charged nothing more: the budget is as the slot left it.
    assert_eq!(limiter.peek(0).unwrap(), 0.0);
    let again = limiter.execute_reservation(&r.id).unwrap();
    assert_eq!(again.reason, Some(Refusal::AlreadyExecuted));
    assert_eq!(
        limiter
            .execute_reservation("0-0000000000000000")
            .unwrap()
            .reason,
        Some(Refusal::UnknownReservation)
    );
    let (other, _) = ten_per_second(4);
    assert_eq!(
        other.execute_reservation(&r.id).unwrap().reason,
        Some(Refusal::UnknownReservation)
    );
}

#[test]
fn cancelling_returns_the_tokens_once() {
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow] {
        for shards in [1, 4] {
            let burst = (algorithm == Algorithm::TokenBucket).then_some(10.0);
            let (limiter, _manual) = limiter(algorithm, 10.0, burst, shards);
            let r = reserve(&limiter, 1, 10);
            assert!(!limiter.try_acquire("k", 1).unwrap().allowed);
            assert!(limiter.cancel_reservation(&r.id).unwrap());
            assert!(!limiter.cancel_reservation(&r.id).unwrap());
            assert_eq!(
                limiter.peek(0).unwrap(),
                10.0,
                "{algorithm:?} shards={shards}"
            );
            assert!(limiter.try_acquire("k", 10).unwrap().allowed);
            assert_eq!(
                limiter.execute_reservation(&r.id).unwrap().reason,
                Some(Refusal::Cancelled)
            );
        }
    }
}

#[test]
fn cancelled_pending_reservations_leave_the_budget_exactly_as_before() {
    for shards in [1, 4, 16] {
        let (limiter, _manual) = ten_per_second(shards);
        assert!(limiter.try_acquire("k", 10).unwrap().allowed);
        let before = limiter.peek(0).unwrap();
        let queued: Vec<Reservation> = (0..1000).map(|i| reserve(&limiter, i, 1)).collect();
        assert_eq!(queued[999].execute_at, 1000 * 100 * MS);
        // Cancel from the front, so later slots would have to move if anything did.
        for r in &queued {
            assert!(limiter.cancel_reservation(&r.id).unwrap());
        }
        assert_eq!(limiter.peek(0).unwrap(), before);
        // Nobody is queued any more: the next token comes at 100 ms, as if nothing happened.
        let decision = limiter.try_acquire("k", 1).unwrap();
        assert!(
            (decision.retry_after.unwrap() - 0.1).abs() < 1e-9,
            "{decision:?}"
        );
    }
}

#[test]
fn a_cancelled_slot_is_free_at_once_and_every_promise_keeps_its_slot() {
    for shards in [1, 4] {
        // 10/s, burst 1: every token is one slot.
        let (limiter, manual) = limiter(Algorithm::TokenBucket, 10.0, Some(1.0), shards);
        assert!(limiter.try_acquire("k", 1).unwrap().allowed);
        let a = reserve(&limiter, 1, 1);
        let b = reserve(&limiter, 2, 1);
        let c = reserve(&limiter, 3, 1);
        assert_eq!(
            (a.execute_at, b.execute_at, c.execute_at),
            (100 * MS, 200 * MS, 300 * MS)
        );
        assert!(limiter.cancel_reservation(&b.id).unwrap());
        // A new booking comes after c: two promises never share one token (d used to get
        // 300 ms too, and be admitted 100 ms late).
        let d = reserve(&limiter, 4, 1);
        assert_eq!(d.execute_at, 400 * MS);
        manual.set(100 * MS);
        assert!(limiter.execute_reservation(&a.id).unwrap().allowed);
        // b's token is free for anyone at 200 ms: taking it delays no promise.
        manual.set(150 * MS);
        let early = limiter.try_acquire("k", 1).unwrap();
        assert!(!early.allowed);
        assert_eq!(early.retry_after, Some(0.05), "shards {shards}");
        manual.set(200 * MS);
        assert!(limiter.try_acquire("k", 1).unwrap().allowed);
        for (r, at) in [(&c, 300), (&d, 400)] {
            manual.set(at * MS);
            assert!(
                limiter.execute_reservation(&r.id).unwrap().allowed,
                "shards {shards}"
            );
        }
        // 5 tokens by 400 ms: the burst and four refills, not one more.
        assert!(!limiter.try_acquire("k", 1).unwrap().allowed);
    }
}

#[test]
fn expired_reservations_leave_by_themselves() {
    let (limiter, manual) = with_policy(
        4,
        ReservationPolicy {
            ttl: 1.0,
            max: 100,
            ..Default::default()
        },
    );
    let r = reserve(&limiter, 1, 3);
    assert_eq!(limiter.reservations().unwrap(), 1);
    manual.advance(SEC);
    assert_eq!(limiter.reservations().unwrap(), 0);
    assert_eq!(
        limiter.execute_reservation(&r.id).unwrap().reason,
        Some(Refusal::Expired)
    );
    assert!(!limiter.cancel_reservation(&r.id).unwrap());
}

#[test]
fn the_reservation_cap_is_a_clear_error() {
    let (limiter, _manual) = with_policy(
        1,
        ReservationPolicy {
            ttl: 60.0,
            max: 3,
            ..Default::default()
        },
    );
    for i in 0..3 {
        reserve(&limiter, i, 1);
    }
    let err = limiter.reserve(9, 1, f64::INFINITY).unwrap_err();
    assert_eq!(err, Error::TooManyReservations { max: 3 });
    assert!(err.to_string().starts_with("max_reservations: "));
    // A waiting acquire's turn is refused instead, with the wait for the slot it would have
    // had behind the three.
    match limiter.reserve_turn(9, 8, f64::INFINITY).unwrap() {
        Booking::Decided(decision) => {
            assert_eq!(decision.reason, Some(Refusal::TooManyReservations));
            assert!(
                decision.retry_after.is_some_and(|wait| wait > 0.0),
                "{decision:?}"
            );
        }
        booked => panic!("{booked:?}"),
    }
}

#[test]
fn a_slot_beyond_max_wait_is_refused_without_holding_anything() {
    let (limiter, _manual) = ten_per_second(4);
    reserve(&limiter, 0, 10);
    match limiter.reserve(1, 5, 0.25).unwrap() {
        Booking::Decided(decision) => {
            assert_eq!(decision.reason, Some(Refusal::MaxWaitExceeded));
            assert!((decision.retry_after.unwrap() - 0.5).abs() < 1e-9);
        }
        booked => panic!("{booked:?}"),
    }
    assert_eq!(limiter.reservations().unwrap(), 1);
    match limiter.reserve(1, 11, f64::INFINITY).unwrap() {
        Booking::Decided(decision) => assert_eq!(decision.reason, Some(Refusal::ExceedsCapacity)),
        booked => panic!("{booked:?}"),
    }
}

#[test]
fn the_sliding_window_gives_slots_as_admissions_leave_the_window() {
    let (limiter, _manual) = limiter(Algorithm::SlidingWindow, 5.0, None, 2);
    let slots: Vec<u64> = (0..8).map(|i| reserve(&limiter, i, 1).execute_at).collect();
    assert_eq!(slots[..5], [0; 5]);
    assert_eq!(slots[5..], [SEC + 1; 3]);
}

#[test]
fn pending_reservations_take_their_slots_in_order_and_never_go_over() {
    // A batch larger than the burst, executed as each slot comes: admissions are exactly
    // the burst plus one per 100 ms.
    for shards in [1, 4, 16] {
        let (limiter, manual) = ten_per_second(shards);
        let batch: Vec<Reservation> = (0..30).map(|i| reserve(&limiter, i, 1)).collect();
        let mut admitted_at = Vec::new();
        for r in &batch {
            manual.set(r.execute_at);
            let decision = limiter.execute_reservation(&r.id).unwrap();
            assert!(decision.allowed, "shards={shards}: {decision:?}");
            admitted_at.push(manual.now());
        }
        for (i, &at) in admitted_at.iter().enumerate() {
            let allowed = 10 + at / (100 * MS);
            assert!((i as u64) < allowed, "shards={shards}: #{i} at {at}");
        }
        assert!(!limiter.try_acquire("k", 1).unwrap().allowed);
    }
}

#[test]
fn threads_waiting_in_acquire_are_admitted_in_the_order_they_queued() {
    let (limiter, manual) = ten_per_second(4);
    assert!(limiter.try_acquire("k", 10).unwrap().allowed);
    // Reserve in a known order, then let threads wait for them concurrently.
    let order: Vec<Reservation> = (0..20).map(|i| reserve(&limiter, i, 1)).collect();
    let finished = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (i, r) in order.iter().enumerate() {
            let (limiter, manual, finished) = (&limiter, &manual, &finished);
            scope.spawn(move || {
                while manual.now() < r.execute_at {
                    std::thread::yield_now();
                }
                assert!(limiter.execute_reservation(&r.id).unwrap().allowed);
                finished.lock().unwrap().push((r.execute_at, i));
            });
        }
        for _ in 0..20 {
            manual.advance(100 * MS);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    });
    let mut done = finished.into_inner().unwrap();
    done.sort();
    assert_eq!(
        done.iter().map(|&(_, i)| i).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
}

#[test]
fn a_waiters_turn_is_admitted_once_funded_and_leaves_the_book() {
    let (limiter, manual) = ten_per_second(4);
    let hash = limiter.key("k").unwrap();
    assert!(limiter.try_acquire("k", 10).unwrap().allowed);
    let Booking::Reserved(turn) = limiter.reserve_turn(hash, 2, f64::INFINITY).unwrap() else {
        panic!("a turn within max_wait is booked");
    };
    assert_eq!(turn.execute_at, 200 * MS);
    manual.set(150 * MS);
    let early = limiter.execute_reservation(&turn.id).unwrap();
    assert_eq!(early.reason, Some(Refusal::NotReady));
    assert!((early.retry_after.unwrap() - 0.05).abs() < 1e-9);
    manual.set(200 * MS);
    assert!(limiter.execute_reservation(&turn.id).unwrap().allowed);
    assert_eq!(limiter.reservations().unwrap(), 0);
    // A waiter that gives up: its turn is cancelled and what it held goes back.
    let Booking::Reserved(turn) = limiter.reserve_turn(hash, 5, f64::INFINITY).unwrap() else {
        panic!("a turn within max_wait is booked");
    };
    manual.set(700 * MS);
    assert_eq!(limiter.peek(0).unwrap(), 0.0);
    assert!(limiter.cancel_reservation(&turn.id).unwrap());
    assert_eq!(limiter.reservations().unwrap(), 0);
    assert_eq!(limiter.peek(0).unwrap(), 5.0);
}

#[test]
fn reservations_racing_immediate_requests_share_the_budget_exactly() {
    // Frozen clock: 100 tokens, no refill. Four threads take while the main thread holds
    // reservations it can have at once: together they get exactly the budget.
    for shards in [1, 4, 16] {
        let quota = Quota::new(100.0, 1.0, None, Algorithm::TokenBucket, Some(shards)).unwrap();
        let manual = Arc::new(ManualClock::new(0.0));
        let limiter = RateLimiter::new(quota, Clock::Manual(manual)).unwrap();
        let (taken, held) = std::thread::scope(|scope| {
            let takers: Vec<_> = (0..4)
                .map(|t| {
                    let limiter = &limiter;
                    scope.spawn(move || {
                        let key = format!("thread-{t}");
                        (0..500)
                            .filter(|_| limiter.try_acquire(&key, 1).unwrap().allowed)
                            .count()
                    })
                })
                .collect();
            let held = (0..200)
                .filter(|&i| matches!(limiter.reserve(i, 1, 0.0), Ok(Booking::Reserved(_))))
                .count();
            let taken: usize = takers.into_iter().map(|h| h.join().unwrap()).sum();
            (taken, held)
        });
        assert_eq!(
            taken + held,
            100,
            "shards={shards}: {taken} taken, {held} held"
        );
    }
}

fn turn(limiter: &RateLimiter, key: u64, count: u64) -> Reservation {
    reserved(limiter.reserve_turn(key, count, f64::INFINITY).unwrap())
}

#[test]
fn a_turn_whose_chance_moves_past_its_bound_is_given_back() {
    // Burst 1: a reservation never executed holds it; a waiter behind it has 250 ms.
    let (limiter, manual) = limiter(Algorithm::TokenBucket, 10.0, Some(1.0), 1);
    reserve(&limiter, 0, 1);
    let waiter = turn(&limiter, 0, 1);
    // The held reservation frees nothing before it expires (60 s): the waiter asks as its
    // driver would, after each wait it is told, until its bound is past.
    let mut waited = 0;
    let refused = loop {
        let answer = limiter
            .execute_turn(&waiter.id, 0.25 - waited as f64 / SEC as f64)
            .unwrap();
        if answer.reason != Some(Refusal::NotReady) {
            break answer;
        }
        let wait = (answer.retry_after.unwrap() * SEC as f64).round() as u64;
        manual.advance(wait);
        waited += wait;
    };
    assert_eq!(refused.reason, Some(Refusal::MaxWaitExceeded));
    assert!(waited <= 250 * MS, "waited {waited} ns");
    assert_eq!(
        limiter.reservations().unwrap(),
        1,
        "the turn was given back"
    );
}

#[test]
fn a_turn_never_expires_however_far_a_back_off_moves_it() {
    for shards in [1, 4] {
        let (limiter, manual) = ten_per_second(shards);
        for key in 0..10 {
            assert!(limiter.try_acquire_key(key, 1).unwrap().allowed);
        }
        let waiter = turn(&limiter, 0, 1);
        assert_eq!(waiter.expires_at, u64::MAX);
        limiter.back_off(0, 120.0).unwrap(); // longer than the 60 s reservation ttl
        manual.advance(119 * SEC);
        let early = limiter.execute_turn(&waiter.id, f64::INFINITY).unwrap();
        assert_eq!(early.reason, Some(Refusal::NotReady), "shards={shards}");
        manual.advance(SEC + 100 * MS);
        let admitted = limiter.execute_turn(&waiter.id, f64::INFINITY).unwrap();
        assert!(admitted.allowed, "shards={shards}: {admitted:?}");
    }
}

#[test]
fn a_busy_key_full_only_under_a_lowered_burst_is_not_dropped() {
    // Per key, 26 a second with a burst of 3. A waiter's turn takes the whole burst (the key
    // turns busy); 40 ms later it holds about one token, which is the whole burst once the
    // burst is lowered to 1. Dropped then, it would come back with a fresh burst of 3 after
    // the burst is raised again: 5 tokens in 40 ms, over 3 + 26 * 0.04.
    let quota = |rate: f64, burst: f64| {
        Quota::new(rate, 1.0, Some(burst), Algorithm::TokenBucket, Some(1)).unwrap()
    };
    let manual = Arc::new(ManualClock::new(0.0));
    let clock = Clock::Manual(manual.clone());
    let limiter =
        RateLimiter::keyed(quota(26.0, 3.0), clock, ReservationPolicy::default(), 10).unwrap();
    let waiter = turn(&limiter, 3, 3);
    assert!(
        limiter
            .execute_turn(&waiter.id, f64::INFINITY)
            .unwrap()
            .allowed
    );
    manual.advance(40 * MS);
    limiter.set_quota(quota(6.5, 1.0)).unwrap();
    assert_eq!(
        limiter.keys().unwrap(),
        1,
        "the key has not been full for a period"
    );
    limiter.set_quota(quota(26.0, 3.0)).unwrap();
    assert!(!limiter.try_acquire_key(3, 2).unwrap().allowed);
}
