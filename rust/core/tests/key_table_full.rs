//! A full key table (`scope="key"` with `max_keys` keys kept, every one in use): a new key is
//! refused at the cost of a look-up, not of a pass over every key; each stripe is swept for
//! room at most once a period, one stripe at a time, so a key that has become droppable makes
//! room for a new one at most a period after its stripe's last sweep.

use ratelimit_core::{
    Algorithm, Clock, ManualClock, Nanos, Quota, RateLimiter, Refusal, ReservationPolicy,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MS: Nanos = 1_000_000;

/// `keys` keys kept of `keys` at most, each with its budget of one token per second taken:
/// full again at 1 s, droppable at 2 s.
fn full(algorithm: Algorithm, keys: usize, stripes: usize) -> (RateLimiter, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(0.0));
    let quota = Quota::new(1.0, 1.0, None, algorithm, Some(stripes)).unwrap();
    let policy = ReservationPolicy::default();
    let limiter = RateLimiter::keyed(quota, Clock::Manual(clock.clone()), policy, keys).unwrap();
    for key in 0..keys as u64 {
        assert!(limiter.try_acquire_key(key, 1).unwrap().allowed);
    }
    (limiter, clock)
}

fn reason(limiter: &RateLimiter, key: u64) -> Option<Refusal> {
    limiter.try_acquire_key(key, 1).unwrap().reason
}

fn best_of_three(mut run: impl FnMut(u64)) -> Duration {
    (0..3)
        .map(|round| {
            let start = Instant::now();
            run(round);
            start.elapsed()
        })
        .min()
        .unwrap()
}

/// Timed against one pass over the table (`keys()` sweeps every stripe), so that the bound
/// holds on a slow or busy machine: a pass per refusal would take about 1,000 passes.
#[test]
fn refusing_new_keys_costs_a_look_up_not_a_pass_over_the_table() {
    const KEYS: usize = 1 << 16;
    const NEW: u64 = 1_000;
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow] {
        let (limiter, _clock) = full(algorithm, KEYS, 16);
        let pass = best_of_three(|_| assert_eq!(limiter.keys().unwrap(), KEYS));
        let refusals = best_of_three(|round| {
            for key in 0..NEW {
                let key = (2 + round) * KEYS as u64 + key;
                assert_eq!(reason(&limiter, key), Some(Refusal::TooManyKeys));
            }
        });
        println!("{algorithm:?}: {NEW} new keys refused in {refusals:?}, one pass {pass:?}");
        assert!(
            refusals < 10 * pass,
            "{algorithm:?}: {refusals:?} against {pass:?}"
        );
        assert_eq!(reason(&limiter, 0), Some(Refusal::RateLimited), "kept");
    }
}

#[test]
fn a_droppable_key_makes_room_at_most_a_period_after_the_last_sweep_for_room() {
    let (limiter, clock) = full(Algorithm::TokenBucket, 3, 1);
    clock.set(1_900 * MS);
    // Key 0 is in use again (till 3.9 s); a sweep for room finds keys 1 and 2 not droppable
    // before 2 s.
    assert!(limiter.try_acquire_key(0, 1).unwrap().allowed);
    assert_eq!(reason(&limiter, 10), Some(Refusal::TooManyKeys));
    clock.set(2_500 * MS);
    assert_eq!(reason(&limiter, 11), Some(Refusal::TooManyKeys));
    // A period after that sweep, the next one drops them.
    clock.set(2_900 * MS);
    assert!(limiter.try_acquire_key(11, 1).unwrap().allowed);
    assert!(limiter.try_acquire_key(12, 1).unwrap().allowed);
    assert_eq!(reason(&limiter, 13), Some(Refusal::TooManyKeys));
    // Key 0's state was kept throughout: its token comes back at 2.9 s.
    assert!(limiter.try_acquire_key(0, 1).unwrap().allowed);
    assert_eq!(limiter.keys().unwrap(), 3);
}

#[test]
fn after_a_sweep_of_every_stripe_the_next_sweeps_come_one_stripe_at_a_time() {
    const KEYS: usize = 64;
    let (limiter, clock) = full(Algorithm::TokenBucket, KEYS, 2);
    clock.set(1_900 * MS);
    // Both stripes swept (nothing droppable before 2 s): next due at 2.4 s and 2.9 s.
    assert_eq!(reason(&limiter, 1_000), Some(Refusal::TooManyKeys));
    let mut new_keys = 2_000..;
    let mut admit_while_room = || {
        new_keys
            .by_ref()
            .take_while(|&key| limiter.try_acquire_key(key, 1).unwrap().allowed)
            .count()
    };
    clock.set(2_399 * MS);
    assert_eq!(admit_while_room(), 0);
    clock.set(2_400 * MS);
    // One stripe's keys (each key lands on either with odds 1/2; none or all: odds 2^-63).
    let first = admit_while_room();
    assert!(0 < first && first < KEYS, "{first} of {KEYS}");
    clock.set(2_899 * MS);
    assert_eq!(admit_while_room(), 0);
    clock.set(2_900 * MS);
    assert_eq!(first + admit_while_room(), KEYS, "the other stripe's keys");
}
