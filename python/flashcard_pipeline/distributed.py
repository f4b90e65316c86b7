"""One budget shared by every process and host that names it: ``DistributedRateLimiter``.

``backend="memory"`` (the default) is the embedded limiter of one process, a
:class:`~flashcard_pipeline.rate_limiter_v2.ShardedRateLimiter` under a namespace.
``backend="redis"`` keeps the budget in Redis or Valkey: every decision is one atomic
script in the server, on the server's clock, so all processes draw on one budget whatever
their clocks say. The client is the Rust extension's: every round trip runs with the GIL
released, each thread on a connection of its own, and ``try_acquire_async`` / ``acquire``
in a task await the answer (over one shared connection) without blocking the event loop.
Both backends offer the same methods.

A call the server does not answer within ``timeout`` seconds follows ``on_backend_error``:
``"fail_closed"`` (the default) refuses with reason ``backend_unavailable`` and a
``retry_after`` of one second; ``"fail_open"`` admits, with reason ``backend_unavailable``
on the (allowed) result. The client reconnects by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import os
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

from flashcard_pipeline._native import (
    REBALANCE_THRESHOLD,
    Completions,
    ManualClock,
    RateLimitResult,
    RedisEngine,
    RedisTurn,
    check_namespace,
)
from flashcard_pipeline._waiting import Ask, Steps, _running_loop, wait
from flashcard_pipeline.rate_limiter_v2 import (
    DONE,
    ReservationRefused,
    ShardedRateLimiter,
    TokenReservation,
    _Answer,
    _Done,
)

__all__ = ["DistributedRateLimiter"]

#: Seconds a ``fail_closed`` refusal asks the caller to wait before trying again.
UNAVAILABLE_RETRY = 1.0
#: The default bound on every call to the server, connecting included (seconds).
DEFAULT_TIMEOUT = 0.5
BACKENDS = ("memory", "redis")
POLICIES = ("fail_closed", "fail_open")


class DistributedRateLimiter(ShardedRateLimiter):
    """A :class:`ShardedRateLimiter` under a ``namespace``, whose budget lives in this process
    (``backend="memory"``) or in Redis/Valkey, shared by every process that uses the same
    namespace and server (``backend="redis"``).

    Args:
        rate, period, burst_size, algorithm, scope, **options: as for
            :class:`ShardedRateLimiter`. On Redis, of the options: ``max_wait``, ``clock``,
            ``reservation_ttl`` and ``reservation_grace`` (a sliding window there counts at
            most 100,000 tokens).
        namespace: Names the budget: 1 to 64 letters, digits, ``_``, ``.`` or ``-``.
            Reservations' keys carry it (``"ns:user_1"``).
        backend: ``"memory"`` or ``"redis"``.
        redis_url: ``redis://[user:password@]host[:port][/db]`` or
            ``unix:///path/to.sock?db=N``; default ``RATE_LIMIT_REDIS_URL``, else
            ``redis://127.0.0.1:6379``.
        timeout: Seconds any one call to the server may take, connecting included.
        on_backend_error: ``"fail_closed"`` or ``"fail_open"`` (see the module's doc).
    """

    def __new__(cls, *args: Any, backend: str = "memory", **kwargs: Any) -> Any:
        if cls is DistributedRateLimiter and backend == "redis":
            return object.__new__(_RedisRateLimiter)
        return object.__new__(cls)

    def __init__(
        self,
        rate: float | None = None,
        period: float = 60.0,
        namespace: str = "default",
        backend: str = "memory",
        *,
        redis_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_backend_error: str = "fail_closed",
        **options: Any,
    ) -> None:
        _check_choice("backend", backend, BACKENDS)
        _check_choice("on_backend_error", on_backend_error, POLICIES)
        self.namespace = _namespace(namespace)
        self.backend = backend
        self.on_backend_error = on_backend_error
        if redis_url is not None:
            raise ValueError('redis_url: applies to backend="redis" only')
        super().__init__(rate, period, **options)

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    @property
    def _local_limiter(self) -> ShardedRateLimiter:
        """This budget with its keys taken as given, not put under the namespace (the name
        the original ``DistributedRateLimiter`` gave the ``ShardedRateLimiter`` inside it,
        which its tests use: ``_local_limiter.try_acquire(f"{namespace}:{user}")``)."""
        return cast(ShardedRateLimiter, _KeysAsGiven(self))

    def try_acquire(self, key: str = "default", count: int = 1) -> RateLimitResult:
        return super().try_acquire(self._key(key), count)

    async def try_acquire_async(self, key: str = "default", count: int = 1) -> RateLimitResult:
        """``try_acquire`` for a task (in memory it never waits)."""
        return self.try_acquire(key, count)

    def try_acquire_many(self, requests: Sequence[tuple[str, int]]) -> list[RateLimitResult]:
        """Decides every ``(key, count)`` in order, each as ``try_acquire``."""
        return [self.try_acquire(key, count) for key, count in requests]

    def acquire(
        self, key: str = "default", count: int = 1, max_wait: float | None = None
    ) -> RateLimitResult:
        return super().acquire(self._key(key), count, max_wait)

    def reserve(
        self, key: str = "default", count: int = 1, max_wait: float | None = None
    ) -> TokenReservation:
        return super().reserve(self._key(key), count, max_wait)

    def peek(self, key: str = "default") -> float:
        return super().peek(self._key(key))

    def reset(self, key: str | None = None) -> _Done:
        return super().reset(None if key is None else self._key(key))

    def back_off(self, seconds: float, key: str = "default") -> _Done:
        return super().back_off(seconds, self._key(key))

    def on_rate_limit(
        self,
        retry_after: float | None = None,
        key: str = "default",
        *,
        decrease: float = 0.5,
        min_rate: float | None = None,
    ) -> _Done:
        return super().on_rate_limit(
            retry_after, self._key(key), decrease=decrease, min_rate=min_rate
        )

    def get_status(self) -> dict[str, Any]:
        return super().get_status() | {
            "backend": {
                "type": "memory",
                "healthy": True,
                "namespace": self.namespace,
                "latency": 0.0,
            }
        }

    def __repr__(self) -> str:
        return (
            f"DistributedRateLimiter(rate={self.rate}, period={self.period}, "
            f"namespace={self.namespace!r}, backend={self.backend!r})"
        )


class _KeysAsGiven:
    """A ``DistributedRateLimiter``'s budget through ``ShardedRateLimiter``'s own calls."""

    def __init__(self, limiter: DistributedRateLimiter) -> None:
        self._limiter = limiter

    def __getattr__(self, name: str) -> Any:
        call = getattr(ShardedRateLimiter, name, None)
        if callable(call):
            return functools.partial(call, self._limiter)
        return getattr(self._limiter, name)


class _RedisRateLimiter(DistributedRateLimiter):
    """``DistributedRateLimiter(backend="redis")``: the budget is a token bucket or a sliding
    window in Redis."""

    _redis: RedisEngine

    def __init__(
        self,
        rate: float | None = None,
        period: float = 60.0,
        namespace: str = "default",
        backend: str = "redis",
        *,
        redis_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_backend_error: str = "fail_closed",
        burst_size: float | None = None,
        algorithm: str = "token_bucket",
        scope: str = "global",
        max_wait: float | None = None,
        clock: ManualClock | None = None,
        reservation_ttl: float | None = None,
        reservation_grace: float | None = None,
        **options: Any,
    ) -> None:
        _check_choice("on_backend_error", on_backend_error, POLICIES)
        if options:
            raise TypeError(
                f'{sorted(options)[0]}: not available with backend="redis" (it takes '
                "rate, period, burst_size, algorithm, scope, max_wait, clock, reservation_ttl, "
                "reservation_grace, redis_url, timeout and on_backend_error)"
            )
        if rate is None:
            raise TypeError("rate: required (tokens per period, a number > 0)")
        if max_wait is not None and not max_wait >= 0:
            raise ValueError(f"max_wait: must be None or a number of seconds >= 0, got {max_wait}")
        url = redis_url or os.environ.get("RATE_LIMIT_REDIS_URL") or "redis://127.0.0.1:6379"
        self._redis = RedisEngine(
            rate,
            period,
            burst_size,
            algorithm=algorithm,
            url=url,
            namespace=namespace,
            scope=scope,
            timeout=timeout,
            clock=clock,
            reservation_ttl=reservation_ttl,
            reservation_grace=reservation_grace,
        )
        self.namespace = _namespace(namespace)
        self.backend = "redis"
        self.on_backend_error = on_backend_error
        self._max_wait = max_wait
        self._clock = clock
        self._booked_turns = set()

    # Decisions ------------------------------------------------------------------------

    def try_acquire(self, key: str = "default", count: int = 1) -> RateLimitResult:
        """Takes ``count`` tokens now or refuses (one round trip, the GIL released)."""
        try:
            return self._redis.try_acquire(key, count)
        except ConnectionError:
            return self._unavailable()

    async def try_acquire_async(self, key: str = "default", count: int = 1) -> RateLimitResult:
        """``try_acquire`` for a task: awaits the server's answer without blocking the loop."""
        answer = await _awaited(self._redis.try_acquire_async, key, count)
        if isinstance(answer, ConnectionError):
            return self._unavailable()
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, RateLimitResult)
        return answer

    def try_acquire_many(self, requests: Sequence[tuple[str, int]]) -> list[RateLimitResult]:
        """Decides every ``(key, count)`` in one round trip (in order, each as
        ``try_acquire``): for callers that decide many requests at once."""
        try:
            return self._redis.try_acquire_many(list(requests))
        except ConnectionError:
            return [self._unavailable() for _ in requests]

    def acquire(
        self, key: str = "default", count: int = 1, max_wait: float | None = None
    ) -> RateLimitResult:
        """Takes ``count`` tokens, waiting its turn (FIFO across every process) up to
        ``max_wait`` seconds: one round trip books the turn in the server (and admits it if
        its tokens are there), the caller sleeps until its slot, and one more round trip
        admits it (asking again if someone ahead is late). A caller that stops waiting gives
        its turn back. In a running event loop it returns an awaitable, and the round trips
        are awaited, not blocked on."""
        return wait(self._turn(key, count, self._bound(max_wait)), self._clock)

    def _bound(self, max_wait: float | None) -> float | None:
        """The call's wait bound, else the limiter's (the engine checks it)."""
        return self._max_wait if max_wait is None else max_wait

    def _turn(self, key: str, count: int, bound: float | None) -> Steps[RateLimitResult]:
        """``acquire``'s waiting loop: book, sleep to the slot, be admitted (the drivers in
        ``_waiting`` ask the server from a thread or from a task). A waiter behind a
        booking that this process gives back is told (it asks again at once, and moves up
        if the budget has its tokens; one behind a task cancelled while booking first
        waits for that turn to be back); one behind another process's cancel keeps its
        slot, which was never later than promised."""
        seen = self._redis.given_back()
        booked = yield self._ask("book_turn", key, count, bound, abandon=self._redis.abandon)
        if isinstance(booked, ConnectionError):
            return self._unavailable()
        if isinstance(booked, BaseException):
            raise booked
        if isinstance(booked, RateLimitResult):
            return booked  # admitted at once, or refused
        assert isinstance(booked, RedisTurn)
        start, due = self._now(), booked.wait
        try:
            while True:
                while (left := due - (self._now() - start)) > 0:
                    if self._redis.given_back() != seen:
                        break
                    yield self._ask("settled") if self._redis.owes() else left
                seen = self._redis.given_back()
                waited = self._now() - start
                answer = yield self._ask("execute_turn", booked, waited, _less(bound, waited))
                if isinstance(answer, ConnectionError):
                    return self._unavailable()
                if isinstance(answer, BaseException):
                    raise answer
                assert isinstance(answer, RateLimitResult)
                if answer.reason != "not_ready":
                    return answer
                due = waited + (answer.retry_after or 0.0)
        except BaseException:
            self._give_back(booked)
            raise

    def _ask(
        self, call: str, *args: Any, abandon: Callable[[Completions, int], None] | None = None
    ) -> Ask:
        """The engine's ``call`` as a question: blocking on a thread, awaited in a task
        (``abandon`` is told if the task is cancelled before the answer came)."""
        return Ask(
            getattr(self._redis, call),
            functools.partial(_awaited, getattr(self._redis, call + "_async"), abandon=abandon),
            args,
        )

    def _give_back(self, turn: RedisTurn) -> None:
        """A waiter that stops gives its turn back: on the I/O thread when it ran in an
        event loop (never a round trip on the loop's thread), else at once; the waiters
        behind it are told once it is back. A turn never given back lapses by itself."""
        if _running_loop() is not None:
            _awaited(self._redis.give_back_async, turn)
            return
        try:
            self._redis.give_back(turn)
        except (ConnectionError, PermissionError):
            pass

    def _now(self) -> float:
        return time.monotonic() if self._clock is None else self._clock.monotonic()

    def _unavailable(self) -> RateLimitResult:
        if self.on_backend_error == "fail_open":
            return RateLimitResult(True, reason="backend_unavailable")
        return RateLimitResult(False, retry_after=UNAVAILABLE_RETRY, reason="backend_unavailable")

    # The budget -----------------------------------------------------------------------

    def peek(self, key: str = "default") -> float:
        return self._redis.peek(key)

    def set_rate(
        self, rate: float, period: float | None = None, burst_size: float | None = None
    ) -> None:
        """Changes this process's rate (every process should: each passes its own quota
        to the server); the tokens a budget owes are kept."""
        self._redis.set_rate(rate, period, burst_size)

    def reset(self, key: str | None = None) -> _Done:
        """Forgets the budget ``key`` draws on (every budget of the namespace with no key):
        it is full again, for every process."""
        self._redis.reset(key)
        return DONE

    def back_off(self, seconds: float, key: str = "default") -> _Done:
        """Nothing is admitted from the budget for ``seconds`` (every process), then it
        refills from empty. Reservations and turns keep their place in line and are funded
        once the budget has their tokens again."""
        self._redis.back_off(seconds, key)
        return DONE

    def on_rate_limit(
        self,
        retry_after: float | None = None,
        key: str = "default",
        *,
        decrease: float = 0.5,
        min_rate: float | None = None,
    ) -> _Done:
        """An upstream refused: with ``retry_after``, the shared budget backs off that long
        for every process. The rate itself stays (``decrease`` and ``min_rate`` apply to
        in-memory budgets only)."""
        if retry_after:
            self._redis.back_off(retry_after, key)
        return DONE

    def on_success(self, *, increase: float = 0.01) -> _Done:
        """Nothing to undo on Redis: the rate is the configured one."""
        return DONE

    # Reservations -------------------------------------------------------------------

    def reserve(
        self, key: str = "default", count: int = 1, max_wait: float | None = None
    ) -> TokenReservation:
        """Promises ``count`` tokens at the next slot of the shared budget (token bucket),
        as :meth:`ShardedRateLimiter.reserve` does; the promise lives in the server, so
        any process may execute or cancel it by its id. Its times are the server's.

        Raises:
            ReservationRefused: the slot is more than ``max_wait`` away, or ``count``
                exceeds the burst.
            RateLimitError: the budget already keeps 10,000 reservations and turns.
            ConnectionError: the server did not answer within ``timeout``.
        """
        bound = self._bound(max_wait)
        booked = self._redis.reserve(key, count, bound, self._key(key))
        if isinstance(booked, RateLimitResult):
            raise ReservationRefused(booked, count, math.inf if bound is None else bound)
        return booked

    def execute_reservation(self, reservation_id: str) -> RateLimitResult:
        """Admits a reservation once its slot has come (any process may): refused
        ``not_ready`` with ``retry_after`` before, or ``expired``, ``cancelled``,
        ``already_executed``, ``unknown_reservation``; ``backend_unavailable`` as any
        decision when the server does not answer."""
        try:
            return self._redis.execute_reservation(reservation_id)
        except ConnectionError:
            return self._unavailable()

    def cancel_reservation(self, reservation_id: str) -> _Answer:
        """Gives a reservation's tokens back: true once, false after that or for an id that
        is unknown, expired or executed."""
        return _Answer(self._redis.cancel_reservation(reservation_id))

    # Reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return 1

    @property
    def rate(self) -> float:
        return self._redis.rate

    @property
    def total_rate(self) -> float:
        return self._redis.rate

    @property
    def period(self) -> float:
        return self._redis.period

    @property
    def burst_size(self) -> float:
        return self._redis.burst_size

    @property
    def shards(self) -> int:
        return 1

    @property
    def algorithm(self) -> str:
        return self._redis.algorithm

    @property
    def scope(self) -> str:
        return self._redis.scope

    @property
    def max_keys(self) -> int | None:
        return None

    @property
    def max_wait(self) -> float | None:
        return self._max_wait

    @property
    def clock(self) -> ManualClock | None:
        return self._clock

    @property
    def timeout(self) -> float:
        return self._redis.timeout

    @property
    def key_pattern(self) -> str:
        """The Redis key pattern of this namespace (an ACL user's ``~pattern``)."""
        return self._redis.key_pattern

    def get_status(self) -> dict[str, Any]:
        healthy, latency = self._redis.health()
        try:
            tokens = self._redis.peek("default") if self.scope == "global" else None
        except ConnectionError:
            tokens, healthy = None, False
        return {
            "rate": self.rate,
            "period": self.period,
            "burst_size": self.burst_size,
            "algorithm": self.algorithm,
            "scope": self.scope,
            "max_wait": self._max_wait,
            "tokens_remaining": tokens,
            "tokens_available": tokens,
            "backend": {
                "type": "redis",
                "healthy": healthy,
                "namespace": self.namespace,
                "latency": latency,
            },
        }

    def get_shard_balance(self) -> dict[str, Any]:
        """The balance report of one shard: a budget in the server is one, which every process
        takes from, so there is nothing to balance (``balanced``, ratio 0, no rebalances).
        ``distribution`` is empty (no one process sees every admission); ``shard_tokens``,
        ``rate_shares`` and ``burst_shares`` are the budget's own (empty with ``scope="key"``,
        as in memory); a server that does not answer raises ``ConnectionError``."""
        whole = self.scope == "global"
        return {
            "distribution": [],
            "imbalance_ratio": 0.0,
            "threshold": REBALANCE_THRESHOLD,
            "balanced": True,
            "most_loaded_shard": 0,
            "least_loaded_shard": 0,
            "shard_tokens": [self._redis.peek("default")] if whole else [],
            "rate_shares": [self.rate] if whole else [],
            "burst_shares": [self.burst_size] if whole else [],
            "slow_path_share": 0.0,
            "active_shards": 1,
            "rebalances": 0,
            "hot_keys": [],
        }

    def __repr__(self) -> str:
        return (
            f"DistributedRateLimiter(rate={self.rate}, period={self.period}, "
            f"namespace={self.namespace!r}, backend='redis')"
        )


def _awaited(
    start: Any, *args: Any, abandon: Callable[[Completions, int], None] | None = None
) -> asyncio.Future[object]:
    """Starts a ``RedisEngine.*_async`` call; the future it returns gets what the call
    answers (a value, or the exception it raised, as the result). If the future is
    cancelled before the answer comes, ``abandon(completions, id)`` is told at once, and
    the answer never reaches the loop."""
    loop = asyncio.get_running_loop()
    answers = _answers.get(loop)
    if answers is None:
        answers = _answers[loop] = _LoopAnswers(loop)
    return answers.ask(start, args, abandon)


class _Asked(asyncio.Future):  # type: ignore[type-arg]
    """The future of a call whose answer must not be lost: cancelled before the answer
    came (its task was), it tells ``abandoned`` at once, not a loop iteration later."""

    __slots__ = ("abandoned",)
    abandoned: Callable[[], None]

    def cancel(self, msg: Any = None) -> bool:
        if not self.done():
            self.abandoned()
        return super().cancel(msg)


class _LoopAnswers:
    """One event loop's answers from the I/O thread: it queues them in ``completions`` and
    wakes the loop through a socket the loop watches; the loop resolves every future whose
    answer came (many per wake-up when busy). Nothing is called on the I/O thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.completions = Completions()
        self.waiting: dict[int, asyncio.Future[object]] = {}
        self.ids = itertools.count()
        loop.add_reader(self.completions.fileno(), self.resolve)

    def ask(
        self, start: Any, args: tuple[Any, ...], abandon: Callable[[Completions, int], None] | None
    ) -> asyncio.Future[object]:
        id = next(self.ids)
        future: asyncio.Future[object]
        if abandon is None:
            future = self.loop.create_future()
        else:
            future = asked = _Asked(loop=self.loop)
            asked.abandoned = functools.partial(self.abandon, abandon, id)
        self.waiting[id] = future
        try:
            start(*args, self.completions, id)
        except BaseException:
            del self.waiting[id]
            raise
        return future

    def abandon(self, abandon: Callable[[Completions, int], None], id: int) -> None:
        del self.waiting[id]
        abandon(self.completions, id)

    def resolve(self) -> None:
        for id, answer in self.completions.drain():
            future = self.waiting.pop(id, None)
            if future is not None and not future.done():
                future.set_result(answer)


#: Per event loop (forgotten with it; a closed loop has dropped its readers).
_answers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopAnswers] = (
    weakref.WeakKeyDictionary()
)


def _less(bound: float | None, waited: float) -> float | None:
    """What is left of a wait bound after ``waited`` seconds."""
    return None if bound is None else max(bound - waited, 0.0)


def _check_choice(argument: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{argument}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace: must be a str, got {type(namespace).__name__}")
    check_namespace(namespace)
    return namespace
