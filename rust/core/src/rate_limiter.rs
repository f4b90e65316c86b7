//! `RateLimiter`, the public handle: key hashing, wait budgets, reservations and turns,
//! all-or-nothing groups and upstream feedback, over one backend behind the seam
//! (`seam.rs`), chosen when it is made: an in-memory store, or any other
//! ([`RateLimiter::with_backend`]).

use std::fmt;
use std::ops::Deref;

use parking_lot::Mutex;

use crate::balance::Balance;
use crate::clock::Clock;
use crate::decision::{validate_max_wait, Booking, Decision, Holder, Refusal, ReservationPolicy};
use crate::error::{Error, Result};
use crate::feedback::{at_rate, decreased, increased, Decrease};
use crate::memory::budget::Budget;
use crate::memory::gcra::{TokenBucket, TokenCell};
use crate::memory::key_window::WindowCell;
use crate::memory::keyed::Keyed;
use crate::memory::limiter::{Limiter, Taken};
use crate::memory::rebalance::Rebalancing;
use crate::memory::sliding_window::SlidingWindow;
use crate::quota::{Algorithm, Quota, Scope};
use crate::seam::{Backend, Key, Undo};

/// Keys longer than this (in bytes; in characters from Python) are refused: a key is an
/// identifier, and an unbounded one is almost always a bug.
pub const MAX_KEY_LEN: usize = 1024;

/// A take that [`RateLimiter::try_acquire_all`] may still give back.
enum Held {
    TokenBucket(Taken<<TokenBucket as Budget>::Receipt>),
    SlidingWindow(Taken<<SlidingWindow as Budget>::Receipt>),
    Boxed(Undo),
}

/// A sharded rate limiter over one shared budget (SPEC `scope="global"`), in memory.
///
/// The algorithm and the shard count are fixed for the limiter's life; rate, period and
/// burst can change at run time ([`Backend::set_quota`]).
pub struct RateLimiter {
    engine: Engine,
    hasher: ahash::RandomState,
    max_wait: Option<f64>,
    /// The quota as made or last set; upstream feedback moves the rate under it. Its lock
    /// also orders re-ratings, so feedback never undoes a `set_quota` it raced.
    configured: Mutex<Quota>,
}

/// The backend a limiter stands on. The in-memory ones are named rather than boxed so that
/// a decision is a static call the compiler can inline; behind a `dyn Backend` it was an
/// opaque call and the core check took a third longer (`cargo bench -p ratelimit-core
/// --bench check`). Any other backend (a store shared by processes, whose round trip
/// dwarfs a virtual call) is boxed: a new one is a `Backend` implementation of its own and
/// [`RateLimiter::with_backend`]. Every other call goes through `Deref` to `dyn Backend`.
// One per limiter, so the size difference costs nothing; boxing would add a pointer chase.
#[allow(clippy::large_enum_variant)]
enum Engine {
    TokenBucket(Limiter<TokenBucket>),
    SlidingWindow(Limiter<SlidingWindow>),
    KeyedTokenBucket(Keyed<TokenCell>),
    KeyedSlidingWindow(Keyed<WindowCell>),
    Boxed(Box<dyn Backend>),
}

/// Runs `$body` with `$backend` bound to the limiter's backend, statically typed.
macro_rules! on_engine {
    ($engine:expr, $backend:ident => $body:expr) => {
        match $engine {
            Engine::TokenBucket($backend) => $body,
            Engine::SlidingWindow($backend) => $body,
            Engine::KeyedTokenBucket($backend) => $body,
            Engine::KeyedSlidingWindow($backend) => $body,
            Engine::Boxed(boxed) => {
                let $backend: &dyn Backend = &**boxed;
                $body
            }
        }
    };
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        on_engine!(&self.engine, backend => backend.fmt(f))
    }
}

impl Deref for RateLimiter {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        on_engine!(&self.engine, backend => backend)
    }
}

impl RateLimiter {
    pub fn new(quota: Quota, clock: Clock) -> Result<Self> {
        Self::with_reservations(quota, clock, ReservationPolicy::default())
    }

    /// A limiter whose reservations live and number as `policy` says.
    pub fn with_reservations(
        quota: Quota,
        clock: Clock,
        policy: ReservationPolicy,
    ) -> Result<Self> {
        let engine = match quota.algorithm {
            Algorithm::TokenBucket => Engine::TokenBucket(Limiter::new(quota, clock, policy)?),
            Algorithm::SlidingWindow => Engine::SlidingWindow(Limiter::new(quota, clock, policy)?),
        };
        Ok(Self {
            engine,
            hasher: ahash::RandomState::new(),
            max_wait: policy.max_wait,
            configured: Mutex::new(quota),
        })
    }

    /// A limiter that gives every key its own budget of `quota` (SPEC `scope="key"`),
    /// keeping at most `max_keys` keys. `quota.shards` is rounded up to a power of two:
    /// the keys' lock stripes.
    pub fn keyed(
        quota: Quota,
        clock: Clock,
        policy: ReservationPolicy,
        max_keys: usize,
    ) -> Result<Self> {
        let quota = Quota {
            shards: quota.shards.next_power_of_two(),
            ..quota
        };
        let engine = match quota.algorithm {
            Algorithm::TokenBucket => {
                Engine::KeyedTokenBucket(Keyed::new(quota, clock, policy, max_keys)?)
            }
            Algorithm::SlidingWindow => {
                Engine::KeyedSlidingWindow(Keyed::new(quota, clock, policy, max_keys)?)
            }
        };
        Ok(Self {
            engine,
            hasher: ahash::RandomState::new(),
            max_wait: policy.max_wait,
            configured: Mutex::new(quota),
        })
    }

    /// A limiter over `backend`, any store that implements the seam (the in-memory ones
    /// are made by [`RateLimiter::with_reservations`] and [`RateLimiter::keyed`]); calls
    /// that give no wait bound wait up to `max_wait` seconds (`None`: as long as it takes).
    pub fn with_backend(backend: Box<dyn Backend>, max_wait: Option<f64>) -> Self {
        let quota = backend.quota();
        Self {
            engine: Engine::Boxed(backend),
            hasher: ahash::RandomState::new(),
            max_wait,
            configured: Mutex::new(quota),
        }
    }

    pub fn scope(&self) -> Scope {
        on_engine!(&self.engine, backend => backend.scope())
    }

    /// Moves the shards' shares of the budget toward demand as `rebalancing` says (see
    /// `memory::rebalance`): for a token bucket over one shared budget and more than one
    /// shard; other limiters have no shares to move and are left as they are.
    pub fn rebalancing(self, rebalancing: Rebalancing) -> Self {
        let engine = match self.engine {
            Engine::TokenBucket(limiter) => Engine::TokenBucket(limiter.rebalancing(rebalancing)),
            other => other,
        };
        Self { engine, ..self }
    }

    /// Names the key with `hash` for the hot-key report: what a caller does after a decision
    /// that says `sampled` (the key's text is the caller's; the limiter keeps only hashes).
    pub fn name_key(&self, hash: u64, name: &str) {
        if let Engine::TokenBucket(limiter) = &self.engine {
            limiter.name_key(hash, name);
        }
    }

    /// Moves the shares to the demand measured since they last moved, now, if anything
    /// was asked since; whether they moved (never for a limiter without shares to move).
    pub fn rebalance(&self) -> bool {
        match &self.engine {
            Engine::TokenBucket(limiter) => limiter.rebalance(true),
            _ => false,
        }
    }

    /// The most keys kept at once (`None` where keys share one budget).
    pub fn max_keys(&self) -> Option<usize> {
        match &self.engine {
            Engine::TokenBucket(_) | Engine::SlidingWindow(_) => None,
            Engine::KeyedTokenBucket(keyed) => Some(keyed.max_keys()),
            Engine::KeyedSlidingWindow(keyed) => Some(keyed.max_keys()),
            Engine::Boxed(_) => None,
        }
    }

    /// Changes rate, period and burst at run time ([`Backend::set_quota`]); upstream
    /// feedback then moves the rate under this one.
    pub fn set_quota(&self, quota: Quota) -> Result<()> {
        let mut configured = self.configured.lock();
        on_engine!(&self.engine, backend => backend.set_quota(quota))?;
        *configured = self.quota();
        Ok(())
    }

    /// An upstream refused (an HTTP 429): the rate drops by `decrease` (see
    /// [`crate::feedback`]) at once, and with `retry_after` seconds the budget of `key`
    /// backs off that long. Returns the new rate.
    pub fn on_rate_limit<'k>(
        &self,
        key: impl Into<Key<'k>>,
        retry_after: Option<f64>,
        decrease: Decrease,
    ) -> Result<f64> {
        if let Some(seconds) = retry_after {
            if !(seconds.is_finite() && seconds >= 0.0) {
                return Err(Error::invalid(
                    "retry_after",
                    format!("must be None or a finite number of seconds >= 0, got {seconds}"),
                ));
            }
        }
        let configured = self.configured.lock();
        let current = self.quota();
        let rate = decreased(&configured, &current, decrease)?;
        if rate < current.rate {
            self.rerate(&current, rate)?;
        }
        if let Some(seconds) = retry_after.filter(|&s| s > 0.0) {
            self.back_off(key, seconds).map_err(|error| match error {
                Error::InvalidArgument { message, .. } => Error::invalid("retry_after", message),
                other => other,
            })?;
        }
        Ok(self.quota().rate)
    }

    /// An upstream call succeeded: the rate rises by `increase` of the configured rate, up
    /// to it, at once. Returns the new rate.
    pub fn on_success(&self, increase: f64) -> Result<f64> {
        let configured = self.configured.lock();
        let current = self.quota();
        let rate = increased(&configured, &current, increase)?;
        if rate > current.rate {
            self.rerate(&current, rate)?;
        }
        Ok(self.quota().rate)
    }

    /// Feedback's change: `current` at `rate`, the configured quota left as it is.
    fn rerate(&self, current: &Quota, rate: f64) -> Result<()> {
        on_engine!(&self.engine, backend => backend.set_quota(at_rate(current, rate)?))
    }

    /// The wait bound of calls that give none (`None`: as long as it takes).
    pub fn max_wait(&self) -> Option<f64> {
        self.max_wait
    }

    /// The wait bound in seconds for a call: its own `max_wait`, else the limiter's, checked.
    pub fn wait_budget(&self, max_wait: Option<f64>) -> Result<f64> {
        validate_max_wait(max_wait.or(self.max_wait))
    }

    /// [`Backend::try_acquire`], statically dispatched for the in-memory stores (the hot
    /// path).
    #[inline]
    pub fn try_acquire_key<'k>(&self, key: impl Into<Key<'k>>, count: u64) -> Result<Decision> {
        let key = key.into();
        on_engine!(&self.engine, backend => Backend::try_acquire(backend, key, count))
    }

    /// [`Backend::check`], statically dispatched for the in-memory stores (the hot path).
    #[inline]
    pub fn check_key<'k>(&self, key: impl Into<Key<'k>>, count: u64) -> Result<Decision> {
        let key = key.into();
        on_engine!(&self.engine, backend => Backend::check(backend, key, count))
    }

    /// `key` with the hash [`RateLimiter::try_acquire`] gives it.
    pub fn key<'k>(&self, key: &'k str) -> Result<Key<'k>> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::invalid(
                "key",
                format!("must be at most {MAX_KEY_LEN} bytes, got {}", key.len()),
            ));
        }
        Ok(Key::new(key, self.hasher.hash_one(key)))
    }

    /// Takes `count` tokens for `key` now, or refuses without waiting.
    pub fn try_acquire(&self, key: &str, count: u64) -> Result<Decision> {
        self.try_acquire_key(self.key(key)?, count)
    }

    /// Books a caller's reservation (see [`Backend::book`]).
    pub fn reserve<'k>(
        &self,
        key: impl Into<Key<'k>>,
        count: u64,
        max_wait: f64,
    ) -> Result<Booking> {
        self.book(key.into(), count, max_wait, Holder::Caller)
    }

    /// Books a waiting `acquire`'s turn.
    pub fn reserve_turn<'k>(
        &self,
        key: impl Into<Key<'k>>,
        count: u64,
        max_wait: f64,
    ) -> Result<Booking> {
        self.book(key.into(), count, max_wait, Holder::Waiter)
    }

    /// Tokens a `try_acquire` for `key` could take now ([`Backend::peek`]).
    pub fn peek<'k>(&self, key: impl Into<Key<'k>>) -> Result<f64> {
        on_engine!(&self.engine, backend => Backend::peek(backend, key.into()))
    }

    /// [`Backend::back_off`] for the budget `key` draws on.
    pub fn back_off<'k>(&self, key: impl Into<Key<'k>>, seconds: f64) -> Result<()> {
        on_engine!(&self.engine, backend => Backend::back_off(backend, key.into(), seconds))
    }

    /// [`Backend::reset_key`] for the budget `key` draws on.
    pub fn reset_key<'k>(&self, key: impl Into<Key<'k>>) -> Result<()> {
        on_engine!(&self.engine, backend => Backend::reset_key(backend, key.into()))
    }

    /// Admits a waiter's turn once the budget holds it, as [`Backend::execute_reservation`]
    /// does. A turn still queued whose next chance comes more than `max_wait` seconds from
    /// now (what is left of its waiter's bound) is given back and
    /// refused `max_wait_exceeded` with that wait: a waiter never waits past its bound,
    /// whatever happens ahead of it.
    pub fn execute_turn(&self, id: &str, max_wait: f64) -> Result<Decision> {
        let decision = self.execute_reservation(id)?;
        if decision.not_ready_past(max_wait) {
            self.cancel_reservation(id)?;
            return Ok(decision.past_max_wait());
        }
        Ok(decision)
    }

    /// How evenly the shards have served requests, each for its share (see [`Balance`]);
    /// `None` for a backend without shards.
    pub fn balance(&self) -> Option<Balance> {
        let shards = self.shard_views()?;
        let (rebalances, active, hot) = match &self.engine {
            Engine::TokenBucket(limiter) => {
                (limiter.rebalances(), limiter.active(), limiter.hot_keys())
            }
            Engine::SlidingWindow(limiter) => (0, limiter.active(), Vec::new()),
            _ => (0, self.quota().shards, Vec::new()),
        };
        Some(Balance {
            active,
            hot,
            ..Balance::of(
                shards.served(),
                shards.gathered(),
                shards.shares(),
                rebalances,
            )
        })
    }

    /// Takes from every limiter or from none: each part is `(limiter, key, count)`.
    /// Returns the last part's admission, or the refusal of the first part that refused,
    /// after giving back what the parts before it took (also when a part raises an error).
    /// A refusal whose wait exceeds `max_wait` seconds says `max_wait_exceeded`. Allocates
    /// nothing for in-memory limiters: each take waits on the stack for the parts after it.
    pub fn try_acquire_all<'a>(
        parts: impl IntoIterator<Item = (&'a RateLimiter, Key<'a>, u64)>,
        max_wait: f64,
    ) -> Result<Decision> {
        Self::take_rest(&mut parts.into_iter(), max_wait)
            .unwrap_or_else(|| Err(Error::invalid("parts", "must name at least one limiter")))
    }

    /// [`RateLimiter::try_acquire_all`] from the next part on; `None` when none is left.
    fn take_rest<'a>(
        parts: &mut impl Iterator<Item = (&'a RateLimiter, Key<'a>, u64)>,
        max_wait: f64,
    ) -> Option<Result<Decision>> {
        let (limiter, key, count) = parts.next()?;
        Some(
            limiter
                .take_held(key, count)
                .and_then(|(mut decision, held)| {
                    if !decision.allowed {
                        if decision.retry_after.is_some_and(|wait| wait > max_wait) {
                            decision.reason = Some(Refusal::MaxWaitExceeded);
                        }
                        return Ok(decision);
                    }
                    let Some(rest) = Self::take_rest(parts, max_wait) else {
                        return Ok(decision);
                    };
                    if !matches!(rest, Ok(Decision { allowed: true, .. })) {
                        if let Some(held) = held {
                            // A give-back the store did not take stays charged: never over.
                            limiter.give_back(held)?;
                        }
                    }
                    rest
                }),
        )
    }

    /// [`Backend::take`], with the in-memory budgets' receipts kept unboxed.
    fn take_held(&self, key: Key<'_>, count: u64) -> Result<(Decision, Option<Held>)> {
        match &self.engine {
            Engine::TokenBucket(limiter) => limiter
                .take(key.hash(), count, true)
                .map(|(decision, taken)| (decision, taken.map(Held::TokenBucket))),
            Engine::SlidingWindow(limiter) => limiter
                .take(key.hash(), count, true)
                .map(|(decision, taken)| (decision, taken.map(Held::SlidingWindow))),
            _ => Backend::take(&**self, key, count)
                .map(|(decision, undo)| (decision, undo.map(Held::Boxed))),
        }
    }

    fn give_back(&self, held: Held) -> Result<()> {
        match (&self.engine, held) {
            (Engine::TokenBucket(limiter), Held::TokenBucket(taken)) => {
                limiter.undo(taken);
                Ok(())
            }
            (Engine::SlidingWindow(limiter), Held::SlidingWindow(taken)) => {
                limiter.undo(taken);
                Ok(())
            }
            (_, Held::Boxed(undo)) => self.undo(undo),
            _ => unreachable!("a take is given back to the limiter that made it"),
        }
    }
}
