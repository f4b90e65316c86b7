"""The sharded rate limiter: a Rust engine behind a small asyncio- and thread-friendly API.

Example:
    >>> from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter
    >>> limiter = ShardedRateLimiter(rate=600, period=60.0, burst_size=20)
    >>> bool(limiter.try_acquire("user_123"))
    True

Every method works as a plain call (from any thread) and with ``await``: results of
``try_acquire`` are awaitable, and ``acquire`` returns an awaitable when it has to wait
inside a running event loop, and blocks anywhere else, deciding and sleeping in Rust with
the GIL released.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Generator
from typing import Any

from flashcard_pipeline._native import ManualClock, RateLimitResult
from flashcard_pipeline._native import ShardedRateLimiter as _NativeLimiter
from flashcard_pipeline.exceptions import RateLimitError

__all__ = [
    "ManualClock",
    "RateLimitError",
    "RateLimitResult",
    "ShardedRateLimiter",
]

# A refusal with this reason means "wait retry_after, then ask again".
_WAIT = "rate_limited"


class ShardedRateLimiter(_NativeLimiter):
    """One budget of ``rate`` tokens per ``period`` seconds, split over shards.

    Args:
        rate: Tokens per ``period`` for the whole budget (any positive finite number).
        period: Seconds (any positive finite number: 0.5, 60, 3600, 86400).
        shards: Shard count; ``None`` picks one from the rate and the CPU count.
        algorithm: ``"token_bucket"`` (continuous refill) or ``"sliding_window"``
            (at most ``floor(rate)`` in any window of ``period``).
        burst_size: Token-bucket capacity; defaults to ``rate`` (at least 1).
        scope: ``"global"``: one budget for all keys; keys only spread load over shards.
        max_wait: Default bound in seconds for ``acquire``; ``None`` waits as long as needed.
        clock: A :class:`ManualClock` for tests; waits then advance it instead of sleeping.
    """

    __slots__ = ()

    def acquire(
        self, key: str | None = None, count: int = 1, max_wait: float | None = None
    ) -> RateLimitResult | Awaitable[RateLimitResult]:
        """Takes ``count`` tokens, waiting up to ``max_wait`` seconds for them.

        Returns a :class:`RateLimitResult`: allowed once admitted, or refused with reason
        ``exceeds_capacity`` (count above the burst) or ``max_wait_exceeded`` (with the
        wait it would have needed in ``retry_after``). Inside a running event loop a call
        that must wait returns an awaitable; ``await limiter.acquire()`` always works.
        """
        budget = self._wait_budget(max_wait)
        if _running_loop() is None:
            return self._acquire_blocking(key, count, budget)
        result = self._acquire_step(key, count, budget, 0.0)
        if result.reason != _WAIT:
            return result
        return _Waiting(self._wait_async(key, count, budget, result))

    async def _wait_async(
        self, key: str | None, count: int, budget: float, result: RateLimitResult
    ) -> RateLimitResult:
        start = self._now()
        clock = self.clock
        while result.reason == _WAIT:
            if clock is None:
                await asyncio.sleep(result.retry_after)
            else:
                await asyncio.sleep(0)
                clock.advance(result.retry_after)
            result = self._acquire_step(key, count, budget, self._now() - start)
        return result


class _Waiting:
    """An ``acquire`` that has to wait inside an event loop: await it.

    Its truth value raises instead of being silently true, so ``if limiter.acquire():``
    written without ``await`` fails loudly rather than letting every request through.
    """

    __slots__ = ("_coro",)

    def __init__(self, coro: Any) -> None:
        self._coro = coro

    def __await__(self) -> Generator[Any, None, RateLimitResult]:
        return self._coro.__await__()

    def __bool__(self) -> bool:
        self._coro.close()
        raise TypeError(
            "acquire() has to wait for tokens inside a running event loop: "
            "use `await limiter.acquire(...)`"
        )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
