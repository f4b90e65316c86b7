//! One `ratelimit-core` budget shared by processes and hosts through Redis or Valkey.
//!
//! Every decision is one atomic script in the server (`scripts/`) that reads the server's
//! clock, so the clients' clocks never matter; it applies the core's admission model (the
//! token bucket or the sliding window, and the book of promises) in the same integer units,
//! and `tests/book_model.rs` checks it against the model's pure transitions. Key layout:
//! [`layout`]. Connection and failure handling: [`budget`].

pub mod budget;
pub mod layout;
pub mod price;
mod settling;
mod sync_connection;

pub use budget::{
    after_answers, Booked, Health, Options, RedisBudget, Reservation, Reserved, Turn, MAX_BOOKINGS,
};
pub use layout::{Layout, MAX_NAMESPACE_LEN};
pub use price::{Price, Rule, MAX_REDIS_WINDOW_LIMIT};
pub use settling::Owed;
