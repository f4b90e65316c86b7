use ratelimit_core::*;
use std::sync::Arc;
#[test]
fn probe() {
    for (rate, period, shards) in [(7.0, 86400.0, 4usize), (10.0, 86400.0, 4), (3.0, 86400.0, 16), (100.0,1.0,16)] {
        let m = Arc::new(ManualClock::new(0.0));
        let q = Quota::new(rate, period, None, Algorithm::TokenBucket, Some(shards)).unwrap();
        let l = RateLimiter::new(q, Clock::Manual(m.clone())).unwrap();
        let d = l.try_acquire("k", rate as u64).unwrap();
        println!("{rate} {period} {shards}: peek before? {:?}", d);
        let l = RateLimiter::new(q, Clock::Manual(m.clone())).unwrap();
        let mut n = 0; while l.try_acquire("k",1).unwrap().allowed { n+=1; }
        println!("  singles admitted {n}, peek {}", l.peek());
    }
}
