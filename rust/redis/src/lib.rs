//! One `ratelimit-core` budget shared by processes and hosts through Redis or Valkey.
//!
//! Every decision is one atomic script in the server (`bucket.lua`) that reads the server's
//! clock, so the clients' clocks never matter; it applies the in-memory limiter's token
//! bucket rule in the same integer units, and `tests/model.rs` checks it against the core's
//! pure transitions. Key layout: [`layout`]. Connection and failure handling: [`budget`].

pub mod budget;
pub mod layout;
pub mod price;

pub use budget::{Booked, Health, Options, RedisBudget, Reservation, Reserved, Turn, MAX_BOOKINGS};
pub use layout::{Layout, MAX_NAMESPACE_LEN};
pub use price::{Price, Rule, MAX_REDIS_WINDOW_LIMIT};
