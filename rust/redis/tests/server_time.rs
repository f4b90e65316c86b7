//! The server's clock may step back (an NTP correction; clients passing their own clocks in
//! tests): a budget never gives tokens for time that went backwards. Two clients of one
//! budget whose clocks disagree by 0.1 s must see one budget.

mod common;

use std::sync::Arc;

use common::{binaries, Server};
use ratelimit_core::{Algorithm, ManualClock, Refusal};

#[test]
fn a_clock_that_steps_back_gives_no_tokens() {
    for (name, binary) in binaries() {
        let server = Server::start(&binary);
        let ahead = Arc::new(ManualClock::new(0.0));
        let behind = Arc::new(ManualClock::new(0.0));
        ahead.advance(2_000_000_000);
        behind.advance(1_900_000_000);
        let one = |clock: &Arc<ManualClock>| {
            let clock = Some(Arc::clone(clock));
            server.budget_in(
                "steps",
                Algorithm::TokenBucket,
                10.0,
                2.0,
                clock,
                60_000_000,
                250_000,
            )
        };
        let (budget, late) = (one(&ahead), one(&behind));
        assert!(budget.try_acquire("k", 1).unwrap().allowed, "{name}");
        // At 2.0 s one token is left (the next comes at 2.1 s); at 1.9 s that token is not
        // there yet: it comes 0.1 s later.
        let refused = late.try_acquire("k", 1).unwrap();
        assert_eq!(
            refused.reason,
            Some(Refusal::RateLimited),
            "{name}: {refused:?}"
        );
        assert!(
            (refused.retry_after.unwrap() - 0.1).abs() < 1e-6,
            "{name}: {refused:?}"
        );
        assert!(budget.try_acquire("k", 1).unwrap().allowed, "{name}");
        assert!(!budget.try_acquire("k", 1).unwrap().allowed, "{name}");
    }
}
