//! Exact, sharded rate limiting: token bucket (GCRA) and sliding window, with reservations
//! and waiting turns on one account of admission. No Python here; `rust/python` binds it.

mod balance;
mod clock;
mod decision;
mod error;
mod feedback;
mod memory;
pub mod model;
mod quota;
mod rate_limiter;
mod seam;

pub use balance::{Balance, Shares};
pub use clock::{Clock, ManualClock, Nanos};
pub use decision::{
    validate_max_wait, Booking, Decision, Holder, Refusal, Reservation, ReservationCounts,
    ReservationPolicy,
};
pub use error::{Error, Result};
pub use feedback::{Decrease, DEFAULT_INCREASE};
pub use memory::hot::HotKey;
pub use memory::rebalance::Rebalancing;
pub use quota::{
    auto_shards, default_key_stripes, key_stripes, Algorithm, Quota, Scope, DEFAULT_MAX_KEYS,
    MAX_SHARDS, MAX_WINDOW_LIMIT,
};
pub use rate_limiter::{RateLimiter, MAX_KEY_LEN};
pub use seam::{Backend, Key, ShardViews, Undo};
