"""The sharded rate limiter: a Rust engine behind a small asyncio- and thread-friendly API.

Example:
    >>> from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter
    >>> limiter = ShardedRateLimiter(rate=600, period=60.0, burst_size=20)
    >>> bool(limiter.try_acquire("user_123"))
    True

Every method works as a plain call (from any thread) and with ``await``: results of
``try_acquire`` are awaitable, and ``acquire`` returns an awaitable when it has to wait
inside a running event loop, and blocks anywhere else, sleeping with the GIL released.
Either way the caller waits in one loop (``ShardedRateLimiter._turns``) that holds its turn
in the engine's FIFO queue and asks the engine when it is admitted; the drivers in
``_waiting`` sleep (or advance a manual clock) between the questions.

After ``os.fork()`` the child's limiters hold no turn of a waiter: only the forking thread
lives on in the child, so the turns booked by the parent's waiting callers are cancelled
there and their tokens go back to the child's budget.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from flashcard_pipeline._native import (
    REBALANCE_THRESHOLD,
    Engine,
    EngineGroup,
    ManualClock,
    RateLimitResult,
    TokenReservation,
)
from flashcard_pipeline._arguments import named
from flashcard_pipeline._waiting import Steps, wait, wait_blocking
from flashcard_pipeline.config import env_int, env_number, setting
from flashcard_pipeline.exceptions import RateLimitError

if TYPE_CHECKING:
    from flashcard_pipeline.distributed import DistributedRateLimiter

__all__ = [
    "AdaptiveShardedRateLimiter",
    "DistributedRateLimiter",
    "LimiterGroup",
    "ManualClock",
    "RateLimitError",
    "RateLimitResult",
    "Reservation",
    "ReservationRefused",
    "ShardedRateLimiter",
    "TokenReservation",
]

Reservation = TokenReservation

# Debug messages only, and none on the hot path (decisions are made in Rust and not logged):
# logging.getLogger("flashcard_pipeline.rate_limiter_v2").setLevel(logging.DEBUG).
logger = logging.getLogger(__name__)


class ShardedRateLimiter:
    """One budget of ``rate`` tokens per ``period`` seconds, split over shards; or, with
    ``scope="key"``, one such budget for every key.

    Args:
        rate: Tokens per ``period`` for the whole budget (any positive finite number).
        period: Seconds, from 1e-9 to 100 years (0.5, 60, 3600, 86400).
        shards: Shard count; ``None`` picks one from the rate and the CPU count. With
            ``scope="key"``: lock stripes of keys, rounded up to a power of two (``None``:
            16 per CPU).
        algorithm: ``"token_bucket"`` (continuous refill) or ``"sliding_window"``
            (at most ``floor(rate)`` in any window of ``period``).
        burst_size: Token-bucket capacity, from 1 to 2**62; defaults to ``rate`` (at least 1).
        scope: ``"global"``: one budget for all keys; keys only spread load over shards.
            ``"key"``: every key its own budget of ``rate`` per ``period`` and
            ``burst_size``, with its own waiting line and reservations.
        max_keys: With ``scope="key"``, keys kept at once (default 2**20). A key whose
            budget is full and has nothing booked is dropped (it would start the same);
            a new key beyond ``max_keys`` is refused with reason ``too_many_keys`` rather
            than forgetting live state.
        max_wait: Default bound in seconds for ``acquire`` and ``reserve``; ``None`` waits as
            long as needed.
        clock: A :class:`ManualClock` for tests; waits then advance it instead of sleeping.
        reservation_ttl: Seconds after its slot that a reservation can still be executed or
            cancelled (default 60); then it expires and leaves by itself.
        reservation_grace: Seconds after its slot that a reservation not yet executed keeps
            its tokens (default 0.25); then they go back to the budget, and executing it
            later is a new request. An abandoned reservation costs this much of its tokens'
            time, at most: with a small burst, the whole rate for that long.
        max_reservations: Reservations and waiting ``acquire`` turns kept at once (default
            10,000); one more ``reserve`` raises :class:`RateLimitError`, and an ``acquire``
            that would wait is refused with reason ``too_many_reservations``.
        requests_per_minute, requests_per_hour: The old limiter's keywords, for code that
            imports ``ShardedRateLimiter as RateLimiter``: instead of ``rate``/``period``.
            Given both, the result is a :class:`LimiterGroup` of this minute budget and an
            exact hourly sliding window, taken together. ``burst_size`` then defaults to
            ``BURST_SIZE`` or the old 20.

    Raises:
        TypeError, ValueError: a bad argument; the message starts with its name, as the
            caller wrote it, and states the allowed range.

    The budget is an :class:`~flashcard_pipeline._native.Engine` (``self._engine``): every
    decision is the engine's; this class adds waiting (threads and asyncio) on top.
    """

    _engine: Engine
    #: Ids of the turns that callers waiting in ``acquire`` hold in the engine's queue.
    _booked_turns: set[str]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        both = (
            kwargs.get("requests_per_minute") is not None
            and kwargs.get("requests_per_hour") is not None
        )
        if both and cls is ShardedRateLimiter and not args:
            return _minute_and_hour(**kwargs)
        return object.__new__(cls)

    def __init__(
        self,
        rate: float | None = None,
        period: float = 60.0,
        shards: int | None = None,
        algorithm: str = "token_bucket",
        burst_size: float | None = None,
        *,
        requests_per_minute: float | None = None,
        requests_per_hour: float | None = None,
        **options: Any,
    ) -> None:
        names = {}  # the caller's names for the engine's arguments
        if requests_per_minute is not None or requests_per_hour is not None:
            if rate is not None:
                raise TypeError(
                    "rate: give either rate (and period) or requests_per_minute/requests_per_hour"
                )
            burst_size, names["burst_size"] = setting(burst_size, "burst_size", 20)
            if requests_per_minute is None:
                rate, period, names["rate"] = requests_per_hour, 3600.0, "requests_per_hour"
            else:
                rate, period, names["rate"] = requests_per_minute, 60.0, "requests_per_minute"
        with named(**names):
            self._engine = Engine(rate, period, shards, algorithm, burst_size, **options)
        self._booked_turns = set()
        _limiters.add(self)
        if type(self).try_acquire is ShardedRateLimiter.try_acquire:
            # The hot path: the engine's method itself, with no Python frame in between.
            self.__dict__["try_acquire"] = self._engine.try_acquire
        logger.debug("created %r", self)

    def try_acquire(self, key: str = "default", count: int = 1) -> RateLimitResult:
        """Takes ``count`` tokens for ``key`` now, or says when to retry. Never waits."""
        return self._engine.try_acquire(key, count)

    def peek(self, key: str = "default") -> float:
        """Tokens available now in the budget ``key`` draws on, without taking any."""
        return self._engine.peek(key)

    def set_rate(
        self, rate: float, period: float | None = None, burst_size: float | None = None
    ) -> None:
        """Changes rate, period and burst at run time; the tokens available carry over,
        capped at the new burst. The algorithm and the shard count stay as made."""
        self._engine.set_rate(rate, period, burst_size)
        logger.debug("set_rate: now %r", self)

    def reset(self, key: str | None = None) -> _Done:
        """Refills the budget, clears the counters and statistics and forgets every
        reservation; callers waiting in ``acquire`` keep their place in line on the fresh
        budget. With a ``key``, only the budget that key draws on (with ``scope="global"``,
        the shared one). A plain call; ``await`` works too."""
        self._engine.reset(key)
        logger.debug("reset %r (key %r)", self, key)
        return DONE

    def back_off(self, seconds: float, key: str = "default") -> _Done:
        """Admits nothing from the budget ``key`` draws on for ``seconds``, then refills it
        from empty: what an upstream's 429 with ``Retry-After: seconds`` asks for. A token
        bucket owes that much refill (``-seconds * rate / period`` tokens); a sliding window
        stays full until then. Reservations keep their place in line and are funded once
        the budget has their tokens again. A plain call; ``await`` works too.

        Raises:
            TypeError, ValueError: ``seconds`` is not a finite number >= 0.
        """
        self._engine.back_off(seconds, key)
        return DONE

    def on_rate_limit(
        self,
        retry_after: float | None = None,
        key: str = "default",
        *,
        decrease: float = 0.5,
        min_rate: float | None = None,
    ) -> _Done:
        """An upstream refused (an HTTP 429): the multiplicative decrease of AIMD.

        The rate drops at once to ``decrease`` times itself (default a half), not below
        ``min_rate`` tokens per period (default a tenth of the configured rate: the one the
        limiter was made with or last given by :meth:`set_rate`); the period and the burst
        stay. With ``retry_after`` seconds (an upstream's ``Retry-After``), the budget ``key``
        draws on also admits nothing for that long, as :meth:`back_off` does. Safe from any
        thread; ``await`` works too.

        Raises:
            TypeError, ValueError: ``retry_after`` is not ``None`` or a finite number >= 0,
                ``decrease`` is not in (0, 1], or ``min_rate`` is not in (0, configured rate].
        """
        rate = self._engine.on_rate_limit(retry_after, key, decrease=decrease, min_rate=min_rate)
        logger.info("on_rate_limit: rate now %g per %g s", rate, self._engine.period)
        return DONE

    def on_success(self, *, increase: float = 0.01) -> _Done:
        """An upstream call succeeded: the additive increase of AIMD. The rate rises at once
        by ``increase`` (default 0.01) of the configured rate, up to it (100 successes
        climb from nothing back to the configured rate). Safe from any thread; ``await``
        works too.

        Raises:
            TypeError, ValueError: ``increase`` is not in (0, 1].
        """
        self._engine.on_success(increase=increase)
        return DONE

    def __len__(self) -> int:
        """Keys with a budget of their own (``scope="key"``), after dropping idle ones;
        0 with ``scope="global"``."""
        return len(self._engine)

    def __bool__(self) -> bool:
        return True

    @property
    def rate(self) -> float:
        return self._engine.rate

    @property
    def total_rate(self) -> float:
        """The previous API's name for ``rate``: the whole budget, over every shard."""
        return self._engine.rate

    @property
    def period(self) -> float:
        return self._engine.period

    @property
    def burst_size(self) -> float:
        return self._engine.burst_size

    @property
    def shards(self) -> int:
        return self._engine.shards

    @property
    def algorithm(self) -> str:
        return self._engine.algorithm

    @property
    def scope(self) -> str:
        return self._engine.scope

    @property
    def max_keys(self) -> int | None:
        """Keys kept at once with ``scope="key"``; ``None`` with ``scope="global"``."""
        return self._engine.max_keys

    @property
    def max_wait(self) -> float | None:
        return self._engine.max_wait

    @property
    def clock(self) -> ManualClock | None:
        return self._engine.clock

    def get_status(self) -> dict[str, Any]:
        """Configuration and live state of the budget: rate, period, burst, shards, tokens
        (``tokens_remaining``, ``shard_tokens``), ``requests_allowed``, ``statistics``
        (``total_requests``, ``allowed_requests``, ``denied_requests``: ``try_acquire``
        calls refused, ``success_rate``), ``shard_details``, ``reservations`` (``active``,
        ``total_created``, ``expired``), and with ``scope="key"`` ``keys``/``max_keys``."""
        return self._engine.get_status()

    def get_shard_balance(self) -> dict[str, Any]:
        """How evenly the shards serve, each for its share: always the same keys, traffic or
        not. ``distribution`` (admissions served per shard since made or reset, or since the
        shares last moved), ``imbalance_ratio``, ``threshold``, ``balanced`` (ratio <=
        threshold), ``most_loaded_shard``/``least_loaded_shard`` (serving most and least for
        their shares), ``shard_tokens`` (tokens free now), ``rate_shares`` and
        ``burst_shares`` (each shard's share of the rate, in tokens per period, and of the
        burst; they add up to ``rate`` and ``burst_size``; empty with ``scope="key"``, whose
        shards are lock stripes of keys), ``slow_path_share`` (admissions gathered from
        shards other than the key's two because those ran short, out of all admissions; 0
        with none), ``active_shards`` (the shards keys spread over: all of them unless an
        adaptive limiter left fewer), ``rebalances`` (times an adaptive limiter moved the
        shares) and ``hot_keys`` (the keys an adaptive limiter spreads over every shard in
        use: ``{"key": name, "share": share of the demand}``, hottest first).

        The imbalance ratio is how far the busiest shard serves above its share of the rate,
        relative to that share: ``max_i((served_i / total - s_i) / s_i)`` with ``s_i``
        shard i's fraction of the rate, over the shards with a share (equal shares:
        ``(max - mean) / mean``); 0 before traffic."""
        return self._engine.get_shard_balance()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._engine!r})"

    @classmethod
    def from_env(cls, **options: Any) -> ShardedRateLimiter:
        """A limiter configured by the environment.

        ``RATE_LIMIT_RATE``, ``RATE_LIMIT_PERIOD`` (default 60) and ``RATE_LIMIT_SHARDS``
        (default automatic); without ``RATE_LIMIT_RATE``, the old ``REQUESTS_PER_MINUTE``,
        ``REQUESTS_PER_HOUR`` (defaults 600 and 36000) as the old limiter read them.
        ``BURST_SIZE`` sets the burst either way. Keyword ``options`` go to the constructor.

        Raises:
            ValueError: a variable is set but malformed or out of range; the message names
                the variable and shows its text (``BURST_SIZE='0.5': ...``).
        """
        read = {
            "shards": setting(
                options.get("shards"), "shards", None, prefix="RATE_LIMIT_", parse=env_int
            ),
            "burst_size": setting(options.get("burst_size"), "burst_size", None),
        }
        if env_number("RATE_LIMIT_RATE", None) is not None:
            read["rate"] = setting(None, "rate", None, prefix="RATE_LIMIT_")
            read["period"] = setting(None, "period", 60.0, prefix="RATE_LIMIT_")
        else:
            read["requests_per_minute"] = setting(None, "requests_per_minute", 600)
            read["requests_per_hour"] = setting(None, "requests_per_hour", 36000)
        with named(**{argument: value.name for argument, value in read.items()}):
            return cls(**options | {argument: value.value for argument, value in read.items()})

    def acquire(
        self, key: str = "default", count: int = 1, max_wait: float | None = None
    ) -> RateLimitResult:
        """Takes ``count`` tokens, waiting its turn (FIFO) up to ``max_wait`` seconds.

        Returns a :class:`RateLimitResult`: allowed once admitted, or refused with reason
        ``exceeds_capacity`` (count above the burst), ``max_wait_exceeded`` (with the
        wait it would have needed in ``retry_after``) or ``too_many_reservations`` (the
        limiter already keeps ``max_reservations`` reservations and waiting turns;
        ``retry_after``: when its turn would have come), without waiting. It never raises
        for a refusal. A caller that must
        wait is promised the next slot; if it gives up (its task is cancelled, a timeout
        fires, Ctrl-C), the promise is given back. From a thread the
        call blocks with the GIL released; inside a running event loop it returns an
        awaitable, so ``await limiter.acquire()`` always works. A result is awaitable too
        (as itself), so one return type serves both forms; reading a result's attribute on
        the in-loop awaitable without ``await`` raises ``TypeError``.
        """
        budget = self._engine.wait_budget(max_wait)
        return wait(self._turns(key, count, budget), self._engine.clock)

    def _turns(self, key: str, count: int, budget: float) -> Steps[RateLimitResult]:
        """The waiting loop of ``acquire``: yields the seconds to wait before asking again,
        and returns the result. A caller that must wait books a turn in the queue; if it
        stops waiting (the loop is closed or an exception is thrown in), the turn is
        cancelled, so its tokens are free for others."""
        engine = self._engine
        result = engine.try_acquire(key, count)
        if result.reason != "rate_limited":
            return result
        with _booking:  # no fork between booking the turn and recording it
            booked = engine.book_turn(key, count, budget)
            if isinstance(booked, RateLimitResult):
                return booked
            self._booked_turns.add(booked.id)
        start = engine.now()
        try:
            while True:
                waited = engine.now() - start
                # Given back, refused max_wait_exceeded, once its chance is past the bound.
                result = engine.execute_turn(booked.id, waited, max(budget - waited, 0.0))
                if result.reason != "not_ready":
                    return result
                yield result.retry_after or 0.0
        except BaseException as stop:
            engine.cancel_reservation(booked.id)
            logger.debug("acquire(%r) gave its turn back: %r", key, stop)
            raise
        finally:
            self._booked_turns.discard(booked.id)

    def execute_reservation(self, reservation_id: str) -> RateLimitResult:
        """Admits a reservation once its slot has come (awaitable or plain).

        Called a moment early on the real clock (up to :data:`EARLY` seconds: a timer that
        rounds, epoch floats), it waits out the rest, with the GIL released, instead of
        refusing: the admission still happens when the engine says so. Earlier than that, it
        is refused ``not_ready`` with ``retry_after``; also ``expired``, ``cancelled``,
        ``already_executed`` or ``unknown_reservation``.
        """
        result = self._engine.execute_reservation(reservation_id)
        if result.reason != "not_ready" or self._engine.clock is not None:
            return result  # the hot path; a manual clock is exact, nothing to wait out
        return wait_blocking(self._on_time(reservation_id, result), None)

    def _on_time(self, reservation_id: str, result: RateLimitResult) -> Steps[RateLimitResult]:
        waited = 0.0
        while result.reason == "not_ready" and waited + (result.retry_after or 0.0) <= EARLY:
            pause = result.retry_after or 0.0
            yield pause
            waited += pause
            result = self._engine.execute_reservation(reservation_id)
        return result

    def reserve(
        self, key: str = "default", count: int = 1, max_wait: float | None = None
    ) -> TokenReservation:
        """Promises ``count`` tokens at the next slot (awaitable or plain).

        The slot comes after every earlier promise and is kept for a caller who executes on
        time; reservations made one after another get successive slots. Nothing is held
        before the slot; from it, the tokens are held for this reservation. Execute it with
        :meth:`execute_reservation` once ``reservation.is_ready()`` (at ``execute_at``; if
        someone ahead was late it answers ``not_ready`` with the wait), or give the promise
        back with :meth:`cancel_reservation`. Not executed within 0.25 s of its slot, it
        gives its tokens back by itself; executed later (until ``expires_at``), it is admitted
        as a new request would be.

        Raises:
            ReservationRefused: (a :class:`RateLimitError` and a ``ValueError``) the slot is
                more than ``max_wait`` seconds away (``retry_after`` says how far; the
                message says "exceeds max_wait"), or ``count`` exceeds the burst.
            RateLimitError: the limiter already keeps ``max_reservations``.
        """
        booked = self._engine.reserve(key, count, max_wait)
        if isinstance(booked, RateLimitResult):
            logger.debug("reserve(%r, %d) refused: %r", key, count, booked)
            raise ReservationRefused(booked, count, self._engine.wait_budget(max_wait))
        return booked

    def cancel_reservation(self, reservation_id: str) -> _Answer:
        """Gives a reservation's tokens back: true once, false after that or for an id that
        is unknown, expired or executed. Awaitable too."""
        return _Answer(self._engine.cancel_reservation(reservation_id))


class AdaptiveShardedRateLimiter(ShardedRateLimiter):
    """A :class:`ShardedRateLimiter` whose shards follow what its callers do.

    Shards exist so that threads do not race for one bucket; spread over shards nobody
    contends for, a busy budget only has its last tokens in fractions on several of them,
    slower to gather. So this limiter starts on ``initial_shards`` (default: automatic)
    and, looking at what was asked at most every 100 ms (inline, after a decision: no
    background task or thread, nothing spawned per call):

    - spreads keys over twice as many shards when more than 1 in 100 tokens asked lost a
      race for its shard, and, when fewer than 1 in 10,000 did, over as few as would keep
      the races under 1 in 100 (at most half as many; one when there were none);
    - moves each shard's share of the rate and of the burst toward the demand it sees,
      when that demand's imbalance ratio passes ``rebalance_threshold`` or every
      ``rebalance_interval`` seconds (each shard keys spread over keeps at least an eighth
      of an even share);
    - spreads a key that asks more than one shard's share of the demand (found in a sample
      of the decisions) over every shard in use, instead of its two.

    The totals stay exactly ``rate`` and ``burst_size``, and a move neither loses nor
    creates a token. :meth:`rebalance` moves the shares at once. :meth:`get_shard_balance`
    reports ``active_shards``, ``rebalances`` and ``hot_keys``; its counts start again when
    the shares move.
    With ``algorithm="sliding_window"`` (one exact log) or ``scope="key"`` (a budget per
    key) there are no shares to move, and it is a :class:`ShardedRateLimiter`.
    """

    def __init__(
        self,
        rate: float | None = None,
        period: float = 60.0,
        initial_shards: int | None = None,
        rebalance_threshold: float = REBALANCE_THRESHOLD,
        rebalance_interval: float = 300.0,
        **options: Any,
    ) -> None:
        with named(shards="initial_shards"):
            super().__init__(
                rate,
                period,
                initial_shards,
                rebalancing=(rebalance_threshold, rebalance_interval),
                **options,
            )
        self._rebalance_threshold = rebalance_threshold
        self.rebalance_interval = rebalance_interval

    def rebalance(self) -> bool:
        """Moves the shares to the demand seen since they last moved, now (if anything
        was asked since); whether they moved."""
        return self._engine.rebalance()

    @property
    def rebalance_threshold(self) -> float:
        return self._rebalance_threshold

    def get_shard_balance(self) -> dict[str, Any]:
        balance = super().get_shard_balance()
        balance["threshold"] = self._rebalance_threshold
        balance["balanced"] = balance["imbalance_ratio"] <= self._rebalance_threshold
        return balance


class LimiterGroup:
    """Several limiters taken together: every admission takes from all of them, or from
    none (a refusal by one leaves the others untouched).

    Example:
        >>> api = ShardedRateLimiter(rate=600, period=60.0)
        >>> hourly = ShardedRateLimiter(rate=10_000, period=3600.0, algorithm="sliding_window")
        >>> both = LimiterGroup(api, hourly)
        >>> bool(both.try_acquire("user_1"))
        True

    Args:
        limiters: :class:`ShardedRateLimiter` objects, or groups (whose limiters join this
            one); at least one, none twice. The first is the *primary*: ``rate``,
            ``period``, ``burst_size`` and the other settings read from it.

    Every call gives the same ``key`` to each limiter (with ``scope="key"``, each limiter
    keeps its own budget for that key). ``acquire`` waits by asking again after each
    refusal's ``retry_after`` (FIFO order is kept within one limiter, not across a group).
    Groups offer no reservations: a reservation holds tokens for one slot of one budget.
    """

    def __init__(self, *limiters: ShardedRateLimiter | LimiterGroup) -> None:
        members: list[ShardedRateLimiter] = []
        for limiter in limiters:
            if isinstance(limiter, LimiterGroup):
                members.extend(limiter.limiters)
            elif isinstance(limiter, ShardedRateLimiter):
                members.append(limiter)
            else:
                raise TypeError(
                    f"limiters: must be ShardedRateLimiter or LimiterGroup objects, got "
                    f"{type(limiter).__name__}"
                )
        if not members:
            raise TypeError("limiters: at least one limiter is needed")
        if len({id(limiter) for limiter in members}) != len(members):
            raise ValueError("limiters: the same limiter twice would take its tokens twice")
        self.limiters: tuple[ShardedRateLimiter, ...] = tuple(members)
        self._engines = tuple(limiter._engine for limiter in members)
        self._primary = self._engines[0]
        self._group = EngineGroup(self._engines)
        # The hot paths: the native calls themselves, with no Python frame in between.
        self.__dict__["try_acquire"] = self._group.try_acquire
        self.__dict__["admits"] = self._group.admits

    def try_acquire(self, key: str = "default", count: int = 1) -> RateLimitResult:
        """Takes ``count`` tokens for ``key`` from every limiter now, or from none: the
        first refusal (with its ``retry_after``), or the last limiter's admission."""
        return self._group.try_acquire(key, count)

    def admits(self, tokens: int = 1) -> bool:
        """Takes ``tokens`` for the default key from every limiter now, or from none: ``True``
        if taken. The previous API's ``try_acquire`` (errors name ``tokens``), with no result
        to make."""
        return self._group.admits(tokens)

    def acquire(
        self, key: str = "default", count: int = 1, max_wait: float | None = None
    ) -> RateLimitResult:
        """Takes ``count`` tokens from every limiter, waiting up to ``max_wait`` seconds
        (default: the primary's ``max_wait``; ``None``: as long as it takes). Blocks a
        thread (GIL released), or returns an awaitable inside a running event loop, as
        :meth:`ShardedRateLimiter.acquire` does. Refused at once with ``max_wait_exceeded``
        when the wait would be longer, or ``exceeds_capacity``."""
        budget = self._primary.wait_budget(max_wait)
        return wait(self._retries(key, count, budget), self._primary.clock)

    def _retries(self, key: str, count: int, budget: float) -> Steps[RateLimitResult]:
        """Asks every limiter again after each ``retry_after`` until admitted, or until the
        wait would run past ``budget`` seconds."""
        start = self._primary.now()
        result = self._group.try_acquire(key, count, budget)
        while result.reason == "rate_limited":
            yield result.retry_after or 0.0
            waited = self._primary.now() - start
            result = self._group.try_acquire(key, count, max(budget - waited, 0.0))
        return result

    def peek(self, key: str = "default") -> float:
        """Tokens every limiter could give ``key`` now: the least of them."""
        return min(engine.peek(key) for engine in self._engines)

    def reset(self, key: str | None = None) -> _Done:
        """Resets every limiter (see :meth:`ShardedRateLimiter.reset`); awaitable too."""
        for limiter in self.limiters:
            limiter.reset(key)
        return DONE

    def back_off(self, seconds: float, key: str = "default") -> _Done:
        """Backs off every limiter (see :meth:`ShardedRateLimiter.back_off`)."""
        for limiter in self.limiters:
            limiter.back_off(seconds, key)
        return DONE

    def set_rate(
        self, rate: float, period: float | None = None, burst_size: float | None = None
    ) -> None:
        """Re-rates the primary limiter (the others keep theirs)."""
        self.limiters[0].set_rate(rate, period, burst_size)

    def get_status(self) -> dict[str, Any]:
        """The primary's status, and ``limiters``: every member's, primary first."""
        statuses = [limiter.get_status() for limiter in self.limiters]
        return {**statuses[0], "limiters": statuses}

    @property
    def rate(self) -> float:
        return self.limiters[0].rate

    @property
    def total_rate(self) -> float:
        return self.limiters[0].total_rate

    @property
    def period(self) -> float:
        return self.limiters[0].period

    @property
    def burst_size(self) -> float:
        return self.limiters[0].burst_size

    @property
    def shards(self) -> int:
        return self.limiters[0].shards

    @property
    def algorithm(self) -> str:
        return self.limiters[0].algorithm

    @property
    def scope(self) -> str:
        return self.limiters[0].scope

    @property
    def max_wait(self) -> float | None:
        return self.limiters[0].max_wait

    @property
    def clock(self) -> ManualClock | None:
        return self.limiters[0].clock

    def __repr__(self) -> str:
        return f"LimiterGroup({', '.join(map(repr, self.limiters))})"


def _minute_and_hour(
    *,
    requests_per_minute: float,
    requests_per_hour: float,
    burst_size: float | None = None,
    **options: Any,
) -> LimiterGroup:
    """``ShardedRateLimiter(requests_per_minute=..., requests_per_hour=...)``: the minute
    budget and an exact hourly sliding window (per key too with ``scope="key"``)."""
    minute = ShardedRateLimiter(
        requests_per_minute=requests_per_minute, burst_size=burst_size, **options
    )
    shared = {name: options[name] for name in ("clock", "scope", "max_keys") if name in options}
    with named(rate="requests_per_hour"):
        hourly = ShardedRateLimiter(requests_per_hour, 3600.0, 1, "sliding_window", **shared)
    return LimiterGroup(minute, hourly)


class ReservationRefused(RateLimitError, ValueError):
    """``reserve`` was refused: a :class:`RateLimitError` (``retry_after``: how far the slot
    is) and a ``ValueError``, as the previous API raised. ``reason`` is the engine's:
    ``max_wait_exceeded`` or ``exceeds_capacity``."""

    def __init__(self, refusal: RateLimitResult, count: int, max_wait: float) -> None:
        wait = refusal.retry_after
        if refusal.reason == "max_wait_exceeded" and wait is not None:
            message = f"Wait time {wait:.1f}s exceeds max_wait {max_wait}s"
        else:
            message = f"Cannot reserve {count} token(s): {refusal.reason}"
        super().__init__(message, retry_after=wait)
        self.reason = refusal.reason


class _Done:
    """``None`` that can also be awaited: what methods that were coroutines return."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "None"

    def __bool__(self) -> bool:
        return False

    def __await__(self) -> Generator[Any, None, None]:
        return None
        yield  # makes this a generator: awaiting it finishes at once


DONE = _Done()


class _Answer(int):
    """``True`` or ``False`` that can also be awaited, for methods with both forms."""

    def __repr__(self) -> str:
        return repr(bool(self))

    def __await__(self) -> Generator[Any, None, bool]:
        return bool(self)
        yield  # makes this a generator: awaiting it finishes at once


#: How early (seconds) ``execute_reservation`` may be called and still wait for its slot.
EARLY = 0.002

#: Every limiter made in this process, for the at-fork handlers.
_limiters: weakref.WeakSet[ShardedRateLimiter] = weakref.WeakSet()

#: Held from booking a waiter's turn until it is recorded, and across ``os.fork()``: a turn
#: never expires, so a child must know every turn it inherits.
_booking = threading.Lock()


def _cancel_parent_turns() -> None:
    """In a child after ``os.fork()``: the threads that waited in ``acquire`` stayed in the
    parent, so the turns they booked are cancelled here and their tokens are free again. (A
    waiting asyncio task of the forking thread is copied too; resumed, it would be answered
    ``cancelled``.)"""
    _booking.release()
    for limiter in list(_limiters):
        for turn in list(limiter._booked_turns):
            limiter._engine.cancel_reservation(turn)
        limiter._booked_turns.clear()


os.register_at_fork(
    before=_booking.acquire,
    after_in_parent=_booking.release,
    after_in_child=_cancel_parent_turns,
)



def __getattr__(name: str) -> Any:
    # ``DistributedRateLimiter`` subclasses ShardedRateLimiter in its own module, which
    # imports this one: loaded on first use, whichever module is imported first.
    if name == "DistributedRateLimiter":
        from flashcard_pipeline.distributed import DistributedRateLimiter

        return DistributedRateLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
