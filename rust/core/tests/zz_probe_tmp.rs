use ratelimit_core::*;
use std::sync::Arc;
#[test]
fn probe() {
    for shards in [4usize] {
        let m = Arc::new(ManualClock::new(0.0));
        let q = Quota::new(100.0, 1.0, Some(100.0), Algorithm::TokenBucket, Some(shards)).unwrap();
        let l = RateLimiter::new(q, Clock::Manual(m.clone())).unwrap();
        for i in 0..5 { let k = format!("k{i}"); let h = l.hash_key(&k).unwrap(); println!("{k}: {:?}", (0..1).map(|_| l.try_acquire_hashed(h, 0).is_err()).collect::<Vec<_>>()); }
        let mut k = 0; loop { k+=1; let d = l.try_acquire(&format!("k{}", k%5),1).unwrap(); if k % 10 == 0 || !d.allowed { println!("k={k} t={} shard={} {:?} peek={}", m.now()/1_000_000, d.shard, l.shard_tokens(), l.peek()); } if !d.allowed {break;} m.advance(7_000_000);}
    }
}
