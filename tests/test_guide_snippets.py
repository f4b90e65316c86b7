"""The migration guide's snippets for the new API, run unchanged against the package.

Each snippet is copied verbatim from RATE_LIMITER_MIGRATION_GUIDE.md into a function body
(the only additions: imports, a `process()` stub, and a `return` of what the snippet
defines), and the test then checks that it does what the guide says it does. These
limiters run on the real clock, as in the guide: the checks take a few milliseconds, and
one waits 0.1 s to show that `await limiter.acquire()` really waits.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline.rate_limiter_v2 import ManualClock, ShardedRateLimiter

processed: list[str] = []


def process() -> str:
    """The guide's `process()`: stands for the real work."""
    processed.append("done")
    return "done"


@pytest.fixture(autouse=True)
def _clear_processed():
    processed.clear()
    yield
    processed.clear()


def tight_loop(limiter: ShardedRateLimiter, calls: int, key: str = "default") -> tuple[int, float]:
    started = time.perf_counter()
    admitted = sum(bool(limiter.try_acquire(key)) for _ in range(calls))
    return admitted, time.perf_counter() - started


def assert_admits_burst_then_limits(limiter: ShardedRateLimiter, burst: int, per_second: float):
    admitted, elapsed = tight_loop(limiter, burst + 100)
    # Exactly the burst, plus whatever refilled while the loop ran (nothing in practice).
    assert burst <= admitted <= burst + int(elapsed * per_second)
    refused = limiter.try_acquire()
    assert not refused and refused.reason == "rate_limited"
    assert 0 < refused.retry_after <= 1 / per_second


# --- Strategy 1: Drop-in Replacement (Basic), the "New" part ---------------------------


def strategy_1_new():
    # New - Basic compatibility
    from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter

    limiter = ShardedRateLimiter(
        rate=600,
        period=60.0,
        shards=1,  # Single shard = similar to old behavior
        burst_size=20
    )
    return limiter


def test_strategy_1_basic_compatibility():
    limiter = strategy_1_new()
    assert (limiter.rate, limiter.period, limiter.shards, limiter.burst_size) == (600, 60.0, 1, 20)
    assert limiter.algorithm == "token_bucket"
    # Like the old RateLimiter(requests_per_minute=600, burst_size=20): a burst of 20,
    # then one request every 100 ms.
    assert_admits_burst_then_limits(limiter, burst=20, per_second=10)
    retry_after = limiter.try_acquire().retry_after
    assert 0.09 < retry_after <= 0.1


# --- Strategy 2: Gradual Enhancement, steps 1 and 2 -----------------------------------


def strategy_2_step_1():
    # Step 1: Basic replacement
    limiter = ShardedRateLimiter(rate=600, period=60.0)
    return limiter


def strategy_2_step_2():
    # Step 2: Add sharding for performance
    limiter = ShardedRateLimiter(
        rate=600,
        period=60.0,
        shards=4  # Automatic optimal calculation
    )
    return limiter


def test_strategy_2_step_1_basic_replacement():
    limiter = strategy_2_step_1()
    assert (limiter.rate, limiter.period, limiter.burst_size) == (600, 60.0, 600)
    assert limiter.shards >= 1  # chosen automatically
    assert_admits_burst_then_limits(limiter, burst=600, per_second=10)


def test_strategy_2_step_2_sharding_keeps_the_whole_budget():
    limiter = strategy_2_step_2()
    assert limiter.shards == 4
    assert limiter.burst_size == 600
    # Four shards, one budget: a single caller still gets all 600 (SPEC I2).
    assert_admits_burst_then_limits(limiter, burst=600, per_second=10)
    assert sum(limiter.get_shard_balance()["distribution"]) == 600


def test_strategy_2_step_2_spreads_many_keys_over_the_shards():
    limiter = strategy_2_step_2()
    started = time.perf_counter()
    admitted = sum(bool(limiter.try_acquire(f"user_{i}")) for i in range(700))
    assert 600 <= admitted <= 600 + int((time.perf_counter() - started) * 10)
    distribution = limiter.get_shard_balance()["distribution"]
    assert len(distribution) == 4 and sum(distribution) == admitted


# --- Example 1: Simple Rate Limiting ---------------------------------------------------


def example_1_minimal_changes():
    # New - Minimal changes
    limiter = ShardedRateLimiter(rate=60, shards=1)

    async def process_request():
        await limiter.acquire()  # Still works!
        return process()

    return limiter, process_request


def example_1_with_improvements():
    # New - With improvements
    limiter = ShardedRateLimiter(rate=60, shards=4)

    async def process_request(user_id: str):
        result = await limiter.acquire(user_id)  # Sharded by user
        if not result.allowed:
            raise RateLimitError(retry_after=result.retry_after)
        return process()

    return limiter, process_request


@pytest.mark.asyncio
async def test_example_1_minimal_changes_admits_60_then_limits():
    limiter, process_request = example_1_minimal_changes()
    assert (limiter.rate, limiter.period, limiter.shards, limiter.burst_size) == (60, 60.0, 1, 60)
    started = time.perf_counter()
    for _ in range(60):
        assert await process_request() == "done"
    assert time.perf_counter() - started < 0.5  # the burst of 60 does not wait
    assert len(processed) == 60
    # The 61st has to wait for the next token (one per second): `await acquire()` limits.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(process_request(), timeout=0.1)
    assert len(processed) == 60
    refused = limiter.try_acquire()
    assert not refused and 0.8 < refused.retry_after <= 1.0


@pytest.mark.asyncio
async def test_example_1_with_improvements_shards_by_user_and_keeps_the_budget():
    limiter, process_request = example_1_with_improvements()
    assert (limiter.rate, limiter.shards, limiter.burst_size) == (60, 4, 60)
    for i in range(60):
        assert await process_request(f"user_{i}") == "done"
    assert len(processed) == 60
    assert sum(limiter.get_shard_balance()["distribution"]) == 60
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(process_request("user_0"), timeout=0.1)
    assert len(processed) == 60


@pytest.mark.asyncio
async def test_example_1_with_improvements_one_user_gets_the_whole_budget():
    limiter, process_request = example_1_with_improvements()
    for _ in range(60):
        assert await process_request("user_123") == "done"
    refused = limiter.try_acquire("user_123")
    assert not refused and 0.8 < refused.retry_after <= 1.0


def test_example_1_rate_limit_error_as_the_guide_raises_it():
    # The guide's `raise RateLimitError(retry_after=result.retry_after)`: no message given.
    error = RateLimitError(retry_after=0.25)
    assert error.retry_after == 0.25
    assert error.reset_at is None
    assert "0.250" in str(error)
    with pytest.raises(RateLimitError) as info:
        raise RateLimitError(retry_after=1.5)
    assert info.value.retry_after == 1.5
    assert str(RateLimitError()) == "Rate limit exceeded"
    assert str(RateLimitError("Rate limited", retry_after=2.0)) == "Rate limited"


# --- Return Value Changes: "New try_acquire returns RateLimitResult" --------------------


async def new_try_acquire_returns_rate_limit_result(limiter):
    result = await limiter.try_acquire("user_123")
    if result.allowed:
        # proceed
        print(f"Tokens remaining: {result.tokens_remaining}")
    else:
        # rate limited
        print(f"Retry after: {result.retry_after}s")


@pytest.mark.asyncio
async def test_new_try_acquire_returns_rate_limit_result(capsys):
    clock = ManualClock()
    limiter = ShardedRateLimiter(rate=600, period=60.0, shards=1, burst_size=20, clock=clock)
    for _ in range(21):
        await new_try_acquire_returns_rate_limit_result(limiter)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"Tokens remaining: {float(n)}" for n in range(19, -1, -1)] + [
        "Retry after: 0.1s"
    ]
    clock.advance(0.05)
    await new_try_acquire_returns_rate_limit_result(limiter)
    assert capsys.readouterr().out == "Retry after: 0.05s\n"


def test_old_truth_test_pattern_still_works_with_the_new_result():
    limiter = ShardedRateLimiter(rate=600, period=60.0, shards=1, burst_size=20, clock=ManualClock())
    outcomes = []
    for _ in range(25):
        if limiter.try_acquire():
            outcomes.append("proceed")
        else:
            outcomes.append("rate limited")
    assert outcomes == ["proceed"] * 20 + ["rate limited"] * 5
