"""The README's and the migration guide's calls, as users write them, under ``mypy --strict``.

``make test`` type-checks this file (``mypy --strict tests/typing``) and runs it
(``tests/test_typing_usage.py``), so every line below both type-checks and works. Each call
appears in its thread form and, inside a coroutine, in its ``await`` form; ``assert_type``
pins the type a user gets.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, assert_type

from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline.rate_limiter import AdaptiveRateLimiter, CompositeLimiter, RateLimiter
from flashcard_pipeline.rate_limiter_v2 import (
    AdaptiveShardedRateLimiter,
    ManualClock,
    RateLimitResult,
    Reservation,
    ShardedRateLimiter,
    TokenReservation,
)
from flashcard_pipeline.retry import retry_on_rate_limit


def thread_form(limiter: ShardedRateLimiter) -> None:
    """Plain calls, as a thread (or any code outside an event loop) makes them."""
    result = limiter.try_acquire("user_123")
    assert_type(result, RateLimitResult)
    if result.allowed:
        # `float | None`: None only in a result made by hand, RateLimitResult(allowed=...).
        tokens: float | None = result.tokens_remaining
        assert tokens is not None and tokens >= 0
    else:
        retry_after: float | None = result.retry_after
        assert retry_after is not None
    assert limiter.try_acquire("user_123", count=2)
    assert limiter.acquire("k").allowed
    admitted = limiter.acquire("user_123", count=1, max_wait=5.0)
    assert_type(admitted, RateLimitResult)
    assert admitted.reason is None and admitted.waited >= 0 and admitted.shard_id is not None

    reservation = limiter.reserve("user_123", count=1, max_wait=30.0)
    assert_type(reservation, TokenReservation)
    assert reservation.is_ready() and not reservation.is_expired()
    assert reservation.execute_at <= time.time() + reservation.wait_time() + 1
    assert limiter.execute_reservation(reservation.id).allowed
    held: Reservation = limiter.reserve("user_123")
    assert limiter.cancel_reservation(held.id)
    assert not limiter.cancel_reservation(held.id)

    available: float = limiter.peek("user_123")
    status: dict[str, Any] = limiter.get_status()
    balance: dict[str, Any] = limiter.get_shard_balance()
    assert available >= 0 and status["rate"] == limiter.rate and "balanced" in balance
    limiter.set_rate(1200, period=60.0, burst_size=40)
    limiter.reset()
    shards: int = limiter.shards
    settings: tuple[float, float, float, str, str] = (
        limiter.rate,
        limiter.period,
        limiter.burst_size,
        limiter.algorithm,
        limiter.scope,
    )
    assert shards >= 1 and settings[0] == 1200
    assert limiter.max_wait is None and limiter.clock is None


async def asyncio_form(limiter: ShardedRateLimiter) -> None:
    """The same calls with ``await``, inside a coroutine."""
    result = await limiter.acquire("user_123", max_wait=5.0)
    assert_type(result, RateLimitResult)
    if not result:
        raise RateLimitError(retry_after=result.retry_after)
    assert (await limiter.acquire("k")).allowed
    assert (await limiter.try_acquire("k")).allowed
    assert_type(await limiter.try_acquire(), RateLimitResult)

    reservation = await limiter.reserve("user_123", max_wait=30.0)
    assert_type(reservation, TokenReservation)
    await asyncio.sleep(max(0.0, reservation.execute_at - time.time()))
    executed = await limiter.execute_reservation(reservation.id)
    assert_type(executed, RateLimitResult)
    assert executed.allowed
    other = await limiter.reserve("user_456")
    cancelled = await limiter.cancel_reservation(other.id)
    assert_type(cancelled, bool)
    assert cancelled


async def batch(limiter: ShardedRateLimiter, users: list[str]) -> int:
    """The README's batch: reservations in slot order, executed when their slot comes."""
    reservations = [await limiter.reserve(user, max_wait=30.0) for user in users]
    done = 0
    for r in reservations:
        await asyncio.sleep(max(0.0, r.execute_at - time.time()))
        if (await limiter.execute_reservation(r.id)).allowed:
            done += 1
    return done


def construction() -> None:
    """Every documented way to make a limiter."""
    clock = ManualClock()
    limiter = ShardedRateLimiter(rate=600, period=60.0, burst_size=20)
    assert limiter.burst_size == 20
    ShardedRateLimiter(600, 60.0, 4, "sliding_window")
    ShardedRateLimiter(
        rate=10,
        period=1.0,
        shards=2,
        algorithm="token_bucket",
        burst_size=10,
        scope="global",
        max_wait=5.0,
        clock=clock,
        reservation_ttl=60.0,
        max_reservations=10_000,
    )
    clock.advance(0.5)
    assert clock.monotonic() == 0.5 and clock.time() > 0
    old_style = ShardedRateLimiter(requests_per_minute=600, requests_per_hour=36000, burst_size=20)
    assert old_style.try_acquire()
    adaptive = AdaptiveShardedRateLimiter(rate=600, initial_shards=4, rebalance_threshold=0.3)
    assert adaptive.try_acquire("hot-key") and adaptive.rebalance_threshold == 0.3
    os.environ.update(RATE_LIMIT_RATE="600", RATE_LIMIT_PERIOD="60", RATE_LIMIT_SHARDS="4")
    try:
        assert ShardedRateLimiter.from_env().shards == 4
    finally:
        for name in ("RATE_LIMIT_RATE", "RATE_LIMIT_PERIOD", "RATE_LIMIT_SHARDS"):
            del os.environ[name]


def made_by_hand() -> None:
    """The old dataclasses' constructors, as the migration guide shows them."""
    refused = RateLimitResult(False, retry_after=1.0, reason="Rate limit exceeded on all shards")
    assert_type(refused, RateLimitResult)
    assert not refused and refused == RateLimitResult(False, 1.0, None, None, refused.reason)
    shard: int | None = refused.shard_id
    assert shard is None and refused.tokens_remaining is None
    expired = TokenReservation(key="user1", count=1, expires_at=time.time() - 1)
    assert_type(expired, TokenReservation)
    assert expired.is_expired() and expired.is_ready()
    expired.delay_execution(10.0)
    assert not expired.is_ready()


async def old_api() -> None:
    """The compatibility shim, as the old module's callers use it."""
    clock = ManualClock()
    limiter = RateLimiter(requests_per_minute=600, requests_per_hour=36000, burst_size=20, clock=clock)
    allowed: bool = limiter.try_acquire()
    assert allowed and limiter.try_acquire(tokens=2)
    await limiter.acquire()
    assert_type(await limiter.acquire_async(timeout=1.0), bool)
    await limiter.wait_if_needed(2)
    limiter.set_rate(1200)
    tokens: float = limiter.tokens
    rate: float = limiter.rate
    stats: dict[str, float] = limiter.get_stats()
    status: dict[str, object] = limiter.get_status()
    assert tokens >= 0 and rate == 20 and stats["capacity"] == 20 and status
    limiter.reset()
    limiter.reset_stats()
    try:
        for _ in range(100):
            await limiter.acquire()
    except RateLimitError as error:
        whole_seconds: float | None = error.retry_after
        assert whole_seconds is not None

    adaptive = AdaptiveRateLimiter(initial_requests_per_minute=600, burst_size=20, clock=clock)
    await adaptive.on_success()
    await adaptive.on_rate_limit(retry_after=0.5)
    assert not adaptive.try_acquire()

    composite = CompositeLimiter(clock=clock)
    await composite.acquire_for_stage("stage1", estimated_tokens=350)
    await composite.acquire_for_stage(2)
    await composite.on_success()
    await composite.on_rate_limit(retry_after=None)
    assert set(composite.get_status()) == {
        "api_limiter",
        "cost_limiter",
        "stage1_limiter",
        "stage2_limiter",
    }


attempts: list[int] = []


@retry_on_rate_limit(max_attempts=3, jitter=0.1)
async def fetch() -> str:
    attempts.append(1)
    if len(attempts) < 3:
        raise RateLimitError(retry_after=0.01)
    return "done"


@retry_on_rate_limit(max_attempts=2, backoff=0.01, max_delay=1.0, jitter=0.0)
def fetch_in_thread(answer: int) -> int:
    return answer


async def main() -> None:
    construction()
    made_by_hand()
    thread_form(ShardedRateLimiter(rate=600, period=60.0, burst_size=20))
    await asyncio_form(ShardedRateLimiter(rate=600, period=60.0, burst_size=20))
    assert await batch(ShardedRateLimiter(rate=600, period=1.0, burst_size=10), ["a"] * 15) == 15
    await old_api()
    text: str = await fetch()
    number: int = fetch_in_thread(42)
    assert text == "done" and number == 42


if __name__ == "__main__":
    asyncio.run(main())
