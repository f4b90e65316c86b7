//! Exact, sharded rate limiting: token bucket (GCRA) and sliding window, with reservations
//! and waiting turns on one account of admission. No Python here; `rust/python` binds it.

mod backend;
mod balance;
mod book;
mod budget;
mod clock;
mod decision;
mod error;
mod feedback;
mod gcra;
mod key_window;
mod keyed;
mod limiter;
pub mod model;
mod params;
mod quota;
mod schedule;
mod shard;
mod sliding_window;

pub use backend::{Backend, RateLimiter, Undo, MAX_KEY_LEN};
pub use balance::{Balance, Shares};
pub use clock::{Clock, ManualClock, Nanos};
pub use decision::{
    validate_max_wait, Booking, Decision, Holder, Refusal, Reservation, ReservationCounts,
    ReservationPolicy,
};
pub use error::{Error, Result};
pub use feedback::{Decrease, DEFAULT_INCREASE};
pub use quota::{
    auto_shards, default_key_stripes, key_stripes, Algorithm, Quota, Scope, DEFAULT_MAX_KEYS,
    MAX_SHARDS, MAX_WINDOW_LIMIT,
};
