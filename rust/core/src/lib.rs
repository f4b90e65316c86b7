//! Exact, sharded rate limiting: token bucket (GCRA) and sliding window over one budget
//! split across cache-line-padded shards. No Python here; `rust/python` binds it.

mod balance;
mod booking;
mod clock;
mod error;
mod gcra;
mod limiter;
mod quota;
mod reservation;
mod shard;
mod sliding_window;

pub use balance::Balance;
pub use booking::{Booking, Reservation, ReservationPolicy};
pub use clock::{Clock, ManualClock, Nanos};
pub use error::{Error, Result};
pub use limiter::{validate_max_wait, Decision, RateLimiter, Refusal, MAX_KEY_LEN};
pub use quota::{auto_shards, Algorithm, Quota, MAX_SHARDS, MAX_WINDOW_LIMIT};
pub use reservation::RESERVATION_BYTES;
