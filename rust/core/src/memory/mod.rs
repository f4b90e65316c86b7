//! The in-memory stores: a process's own budgets, behind the seam (`seam.rs`). One
//! budget over shards (`limiter` with `gcra` or `sliding_window` through `budget`, on
//! `shard`), or one per key (`keyed`, `key_window`); the book of bookings and the schedule
//! of promises (`book`, `schedule`); the unit arithmetic (`params`). Each applies the rules
//! of `crate::model` and is checked against them.

pub(crate) mod book;
pub(crate) mod budget;
pub(crate) mod gcra;
pub(crate) mod hot;
pub(crate) mod key_window;
pub(crate) mod keyed;
pub(crate) mod limiter;
pub(crate) mod params;
pub(crate) mod rebalance;
pub(crate) mod schedule;
pub(crate) mod shard;
pub(crate) mod sliding_window;
pub(crate) mod weights;
