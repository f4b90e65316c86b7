//! One behaviour suite over every backend a `RateLimiter` stands on: the in-memory budget
//! (one shard, so that it decides exactly), and a budget kept in Redis and in Valkey,
//! plugged in through `RateLimiter::with_backend`. Every test runs on each of them on a
//! manual clock (whose time the server's scripts are given) and asks the same of all:
//! admissions, refusals and their waits, reservations kept at their slot, waiters' turns,
//! back-offs, re-rating, resets, peeks and per-key budgets. Waits are compared to the
//! microsecond, the server's unit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{binaries, unique, Server};
use ratelimit_core::{
    Algorithm, Booking, Clock, Decision, Key, ManualClock, Quota, RateLimiter, Refusal,
    ReservationPolicy, Scope, DEFAULT_MAX_KEYS,
};
use ratelimit_redis::{Options, RedisBudget};

/// Makes limiters on one backend, all on one manual clock.
struct Backend {
    name: &'static str,
    server: Option<Server>,
    clock: Arc<ManualClock>,
}

impl Backend {
    /// A limiter of `rate` per second (`burst`: a token bucket's; `None`: a sliding
    /// window) with `scope`, on this backend and its clock.
    fn limiter(&self, rate: f64, burst: Option<f64>, scope: Scope) -> RateLimiter {
        let algorithm = match burst {
            Some(_) => Algorithm::TokenBucket,
            None => Algorithm::SlidingWindow,
        };
        let quota = Quota::new(rate, 1.0, burst, algorithm, Some(1)).unwrap();
        let policy = ReservationPolicy::default();
        let clock = Clock::Manual(Arc::clone(&self.clock));
        match (&self.server, scope) {
            (None, Scope::Global) => RateLimiter::with_reservations(quota, clock, policy).unwrap(),
            (None, Scope::Key) => {
                RateLimiter::keyed(quota, clock, policy, DEFAULT_MAX_KEYS).unwrap()
            }
            (Some(server), scope) => {
                let budget = RedisBudget::new(
                    quota,
                    Options {
                        url: server.url(),
                        namespace: format!("c{}", unique()),
                        scope,
                        timeout: Duration::from_secs(2),
                        clock: Some(Arc::clone(&self.clock)),
                        reservation_ttl: Duration::from_secs_f64(policy.ttl),
                        reservation_grace: Duration::from_secs_f64(policy.grace),
                    },
                )
                .unwrap();
                RateLimiter::with_backend(Box::new(budget), policy.max_wait)
            }
        }
    }

    fn advance(&self, seconds: f64) {
        self.clock.advance((seconds * 1e9).round() as u64);
    }
}

/// Runs `check` on the in-memory backend, then on Redis and on Valkey (each a server of its
/// own), each on a fresh manual clock.
fn on_every_backend(check: impl Fn(&Backend)) {
    let memory = std::iter::once(("memory", None));
    let servers = binaries()
        .into_iter()
        .map(|(name, binary)| (name, Some(Server::start(&binary))));
    for (name, server) in memory.chain(servers) {
        let backend = Backend {
            name,
            server,
            clock: Arc::new(ManualClock::new(1000.0)),
        };
        // Not at the clock's origin, where a time and a duration look alike.
        backend.advance(1.0);
        check(&backend);
    }
}

fn key(text: &str) -> Key<'_> {
    Key::new(text, text.bytes().fold(7, |h, b| h * 31 + u64::from(b)))
}

fn take(limiter: &RateLimiter, count: u64) -> Decision {
    limiter.try_acquire("k", count).unwrap()
}

/// `decision` is a refusal for `reason`, retried after `wait` seconds (to the microsecond:
/// the in-memory budget counts nanoseconds, the server microseconds).
#[track_caller]
fn assert_refused(decision: &Decision, reason: Refusal, wait: Option<f64>, on: &str) {
    assert!(!decision.allowed, "{on}: {decision:?}");
    assert_eq!(decision.reason, Some(reason), "{on}: {decision:?}");
    match (decision.retry_after, wait) {
        (Some(got), Some(want)) => assert!((got - want).abs() <= 1.5e-6, "{on}: {got} != {want}"),
        (got, want) => assert_eq!(got, want, "{on}: {decision:?}"),
    }
}

#[test]
fn a_burst_is_admitted_then_refused_with_the_wait_for_the_next_token() {
    on_every_backend(|backend| {
        let limiter = backend.limiter(10.0, Some(5.0), Scope::Global);
        for _ in 0..5 {
            assert!(take(&limiter, 1).allowed, "{}", backend.name);
        }
        assert_refused(
            &take(&limiter, 1),
            Refusal::RateLimited,
            Some(0.1),
            backend.name,
        );
        assert_refused(
            &take(&limiter, 2),
            Refusal::RateLimited,
            Some(0.2),
            backend.name,
        );
        backend.advance(0.1);
        assert!(take(&limiter, 1).allowed, "{}", backend.name);
        assert!(!take(&limiter, 1).allowed, "{}", backend.name);
    });
}

#[test]
fn more_than_the_burst_is_refused_for_good() {
    on_every_backend(|backend| {
        let limiter = backend.limiter(10.0, Some(5.0), Scope::Global);
        assert_refused(
            &take(&limiter, 6),
            Refusal::ExceedsCapacity,
            None,
            backend.name,
        );
        let window = backend.limiter(5.0, None, Scope::Global);
        assert_refused(
            &take(&window, 6),
            Refusal::ExceedsCapacity,
            None,
            backend.name,
        );
    });
}

#[test]
fn the_window_admits_its_limit_in_any_window_and_no_more() {
    on_every_backend(|backend| {
        let limiter = backend.limiter(5.0, None, Scope::Global);
        for _ in 0..3 {
            assert!(take(&limiter, 1).allowed, "{}", backend.name);
        }
        backend.advance(0.5);
        assert!(take(&limiter, 2).allowed, "{}", backend.name);
        // The first three count until a window after them, the last two until 0.5 s later.
        let refused = take(&limiter, 1);
        assert_refused(&refused, Refusal::RateLimited, Some(0.5), backend.name);
        backend.advance(refused.retry_after.unwrap());
        assert!(take(&limiter, 3).allowed, "{}", backend.name);
        assert!(!take(&limiter, 1).allowed, "{}", backend.name);
    });
}

/// A booking's reservation, or a panic naming the backend.
fn reservation(booking: Booking, on: &str) -> ratelimit_core::Reservation {
    match booking {
        Booking::Reserved(reservation) => reservation,
        Booking::Decided(decision) => panic!("{on}: not booked: {decision:?}"),
    }
}

#[test]
fn a_reservation_is_kept_at_its_slot_and_admits_once() {
    on_every_backend(|backend| {
        let on = backend.name;
        let limiter = backend.limiter(10.0, Some(1.0), Scope::Global);
        assert!(take(&limiter, 1).allowed, "{on}");
        let booked = reservation(limiter.reserve(key("k"), 1, f64::INFINITY).unwrap(), on);
        assert_eq!(booked.execute_at - booked.reserved_at, 100_000_000, "{on}");
        let early = limiter.execute_reservation(&booked.id).unwrap();
        assert_refused(&early, Refusal::NotReady, Some(0.1), on);
        backend.advance(0.1);
        // The slot's token is promised: a take at the slot does not get it.
        assert!(!take(&limiter, 1).allowed, "{on}");
        assert!(
            limiter.execute_reservation(&booked.id).unwrap().allowed,
            "{on}"
        );
        let again = limiter.execute_reservation(&booked.id).unwrap();
        assert_refused(&again, Refusal::AlreadyExecuted, None, on);
    });
}

#[test]
fn a_cancelled_reservation_frees_its_slot() {
    on_every_backend(|backend| {
        let on = backend.name;
        let limiter = backend.limiter(10.0, Some(1.0), Scope::Global);
        let booked = reservation(limiter.reserve(key("k"), 1, f64::INFINITY).unwrap(), on);
        assert_eq!(booked.execute_at, booked.reserved_at, "{on}");
        assert!(limiter.cancel_reservation(&booked.id).unwrap(), "{on}");
        assert!(!limiter.cancel_reservation(&booked.id).unwrap(), "{on}");
        let cancelled = limiter.execute_reservation(&booked.id).unwrap();
        assert_refused(&cancelled, Refusal::Cancelled, None, on);
        assert!(take(&limiter, 1).allowed, "{on}");
    });
}

#[test]
fn a_reservation_past_the_wait_bound_is_refused_with_its_wait() {
    on_every_backend(|backend| {
        let on = backend.name;
        let limiter = backend.limiter(10.0, Some(1.0), Scope::Global);
        assert!(take(&limiter, 1).allowed, "{on}");
        let Booking::Decided(refused) = limiter.reserve(key("k"), 1, 0.05).unwrap() else {
            panic!("{on}: booked past its bound");
        };
        assert_refused(&refused, Refusal::MaxWaitExceeded, Some(0.1), on);
        let unknown = limiter.execute_reservation("no-such-reservation").unwrap();
        assert_refused(&unknown, Refusal::UnknownReservation, None, on);
    });
}

#[test]
fn a_waiters_turn_is_admitted_at_its_slot_or_given_back_past_its_bound() {
    on_every_backend(|backend| {
        let on = backend.name;
        let limiter = backend.limiter(10.0, Some(1.0), Scope::Global);
        assert!(take(&limiter, 1).allowed, "{on}");
        let turn = reservation(limiter.reserve_turn(key("k"), 1, 1.0).unwrap(), on);
        assert_eq!(turn.execute_at - turn.reserved_at, 100_000_000, "{on}");
        let early = limiter.execute_turn(&turn.id, 1.0).unwrap();
        assert_refused(&early, Refusal::NotReady, Some(0.1), on);
        backend.advance(0.1);
        assert!(limiter.execute_turn(&turn.id, 0.9).unwrap().allowed, "{on}");
        // A turn whose slot comes after what is left of its waiter's bound is given back.
        let late = reservation(limiter.reserve_turn(key("k"), 1, 1.0).unwrap(), on);
        let gone = limiter.execute_turn(&late.id, 0.01).unwrap();
        assert_refused(&gone, Refusal::MaxWaitExceeded, Some(0.1), on);
        assert!(!limiter.cancel_reservation(&late.id).unwrap(), "{on}");
    });
}

#[test]
fn a_back_off_admits_nothing_until_it_ends() {
    on_every_backend(|backend| {
        let on = backend.name;
        // The bucket refills from empty once it ends (a token takes 0.2 s); the window is
        // full until then.
        for (burst, wait) in [(Some(5.0), 1.2), (None, 1.0)] {
            let limiter = backend.limiter(5.0, burst, Scope::Global);
            limiter.back_off(key("k"), 1.0).unwrap();
            let refused = take(&limiter, 1);
            assert_refused(&refused, Refusal::RateLimited, Some(wait), on);
            assert_eq!(limiter.peek(key("k")).unwrap(), 0.0, "{on}");
            backend.advance(wait - 0.001);
            assert!(!take(&limiter, 1).allowed, "{on} {burst:?}");
            backend.advance(0.001);
            assert!(take(&limiter, 1).allowed, "{on} {burst:?}");
        }
    });
}

#[test]
fn peek_set_quota_and_reset_do_what_they_say() {
    on_every_backend(|backend| {
        let on = backend.name;
        let limiter = backend.limiter(10.0, Some(5.0), Scope::Global);
        assert!(take(&limiter, 2).allowed, "{on}");
        assert_eq!(limiter.peek(key("k")).unwrap(), 3.0, "{on}");
        let faster = Quota::new(20.0, 1.0, Some(5.0), Algorithm::TokenBucket, Some(1)).unwrap();
        limiter.set_quota(faster).unwrap();
        assert_eq!(limiter.quota().rate, 20.0, "{on}");
        assert!(take(&limiter, 3).allowed, "{on}");
        assert_refused(&take(&limiter, 1), Refusal::RateLimited, Some(0.05), on);
        limiter.reset().unwrap();
        assert_eq!(limiter.peek(key("k")).unwrap(), 5.0, "{on}");
        assert!(take(&limiter, 5).allowed, "{on}");
    });
}

#[test]
fn with_scope_key_every_key_has_its_own_budget() {
    on_every_backend(|backend| {
        let on = backend.name;
        let limiter = backend.limiter(10.0, Some(2.0), Scope::Key);
        assert_eq!(limiter.scope(), Scope::Key, "{on}");
        assert!(limiter.try_acquire("a", 2).unwrap().allowed, "{on}");
        assert!(!limiter.try_acquire("a", 1).unwrap().allowed, "{on}");
        assert!(limiter.try_acquire("b", 2).unwrap().allowed, "{on}");
        assert_eq!(
            limiter.peek(limiter.key("a").unwrap()).unwrap(),
            0.0,
            "{on}"
        );
        limiter.reset_key(limiter.key("a").unwrap()).unwrap();
        assert!(limiter.try_acquire("a", 2).unwrap().allowed, "{on}");
        assert!(!limiter.try_acquire("b", 1).unwrap().allowed, "{on}");
    });
}

#[test]
fn a_group_admits_from_every_limiter_or_refuses_and_never_over() {
    on_every_backend(|backend| {
        let on = backend.name;
        let wide = backend.limiter(10.0, Some(5.0), Scope::Global);
        let narrow = backend.limiter(10.0, Some(1.0), Scope::Global);
        let both =
            || RateLimiter::try_acquire_all([(&wide, key("k"), 1), (&narrow, key("k"), 1)], 0.0);
        assert!(both().unwrap().allowed, "{on}");
        let refused = both().unwrap();
        assert_refused(&refused, Refusal::MaxWaitExceeded, Some(0.1), on);
        // In memory the wide limiter's token is given back; a store that cannot give a
        // take back keeps it charged. Either way, never more than the budget.
        let left = wide.peek(key("k")).unwrap();
        assert!(
            left == 4.0 || (on != "memory" && left == 3.0),
            "{on}: {left}"
        );
    });
}

#[test]
fn a_key_known_by_its_hash_alone_is_refused_by_a_shared_store() {
    on_every_backend(|backend| {
        let limiter = backend.limiter(10.0, Some(5.0), Scope::Global);
        let decided = limiter.try_acquire_key(42, 1);
        match backend.server {
            None => assert!(decided.unwrap().allowed),
            Some(_) => assert_eq!(decided.unwrap_err().argument(), "key", "{}", backend.name),
        }
    });
}
