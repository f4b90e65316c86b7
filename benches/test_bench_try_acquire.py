"""pytest-benchmark: one decision on one key, every call allowed; ours against its peers.

Run with ``.venv/bin/python -m pytest benches --benchmark-enable --benchmark-only -q``
(``make bench`` does). These are timings, not tests: ``make test`` never collects them
(pytest's testpaths is ``tests``). ``benches/side_by_side.py`` prints the same comparison
as calls/s with ratios and the performance targets.

Every limiter gets a budget no benchmark can exhaust; each benchmark checks afterwards that a
further call is still allowed, so no figure is the cost of a refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import repeat

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.strategies
import pytest
import token_bucket

from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter

KEY = "default"
HUGE = 10**12
BATCH = 10_000  # awaited calls per benchmark round

# A ~100 ns call needs many iterations per round, or the two timer reads around each round
# dominate (pytest-benchmark's default calibration sometimes settles on 1 iteration per round
# for the first benchmark of a session): at least 200 us per round, after a warm-up.
SYNC = pytest.mark.benchmark(group="sync: one call", min_time=0.0002, warmup=True)


def ours() -> ShardedRateLimiter:
    # the burst never runs out
    return ShardedRateLimiter(rate=3e6, period=1.0, burst_size=float(HUGE), shards=1)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for all the rounds of a benchmark, closed cleanly (tasks, executor)."""
    with asyncio.Runner() as r:
        yield r


def _per_call(benchmark, calls: int) -> None:  # type: ignore[no-untyped-def]
    stats = benchmark.stats.stats
    benchmark.extra_info["calls_per_round"] = calls
    benchmark.extra_info["ns_per_call_min"] = round(stats.min / calls * 1e9, 1)
    benchmark.extra_info["ns_per_call_mean"] = round(stats.mean / calls * 1e9, 1)
    benchmark.extra_info["calls_per_s_best"] = round(calls / stats.min)


# ---- sync: one call per iteration ---------------------------------------------------------


@SYNC
def test_ours_try_acquire(benchmark) -> None:  # type: ignore[no-untyped-def]
    limiter = ours()
    benchmark(limiter.try_acquire)
    assert limiter.try_acquire().allowed
    assert limiter.get_status()["requests_allowed"] >= 2  # every call counted as admitted


@SYNC
def test_ours_try_acquire_with_key(benchmark) -> None:  # type: ignore[no-untyped-def]
    limiter = ours()
    benchmark(limiter.try_acquire, "user_1")
    assert limiter.try_acquire("user_1").allowed


@SYNC
def test_token_bucket_consume(benchmark) -> None:  # type: ignore[no-untyped-def]
    limiter = token_bucket.Limiter(3e6, HUGE, token_bucket.MemoryStorage())
    benchmark(limiter.consume, KEY)
    assert limiter.consume(KEY)


@SYNC
def test_limits_moving_window_hit(benchmark) -> None:  # type: ignore[no-untyped-def]
    # limits keeps one entry per call in the 1 s window and inserts at the front of a list:
    # its cost grows with the calls of the last second, so later rounds are slower.
    limiter = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
    item = limits.RateLimitItemPerSecond(HUGE)
    benchmark(limiter.hit, item, KEY)
    assert limiter.hit(item, KEY)


@SYNC
def test_limits_fixed_window_hit(benchmark) -> None:  # type: ignore[no-untyped-def]
    # limits' fastest in-memory strategy
    limiter = limits.strategies.FixedWindowRateLimiter(limits.storage.MemoryStorage())
    item = limits.RateLimitItemPerSecond(HUGE)
    benchmark(limiter.hit, item, KEY)
    assert limiter.hit(item, KEY)


# ---- awaited: a batch of BATCH awaited calls per round, inside one coroutine ---------------


@pytest.mark.benchmark(group=f"awaited: batch of {BATCH:,} calls")
def test_ours_await_try_acquire(benchmark, runner) -> None:  # type: ignore[no-untyped-def]
    limiter = ours()

    async def batch() -> object:
        f = limiter.try_acquire
        r = None
        for _ in repeat(None, BATCH):
            r = await f()
        return r

    last = benchmark(lambda: runner.run(batch()))
    assert last.allowed
    _per_call(benchmark, BATCH)


@pytest.mark.benchmark(group=f"awaited: batch of {BATCH:,} calls")
def test_limits_aio_moving_window_await_hit(benchmark, runner) -> None:  # type: ignore[no-untyped-def]
    item = limits.RateLimitItemPerSecond(HUGE)

    async def make() -> limits.aio.strategies.MovingWindowRateLimiter:
        return limits.aio.strategies.MovingWindowRateLimiter(limits.aio.storage.MemoryStorage())

    limiter = runner.run(make())

    async def batch() -> bool:
        f = limiter.hit
        r = False
        for _ in repeat(None, BATCH):
            r = await f(item, KEY)
        return r

    assert benchmark(lambda: runner.run(batch()))
    _per_call(benchmark, BATCH)
