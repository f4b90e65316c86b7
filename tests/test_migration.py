"""The migration guide's promises: its remaining snippets run unchanged (network calls
replaced by stubs), the old keywords and variables work on the new limiter, the retry
helper honours retry_after, and debug logging goes to the guide's logger."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import List

import pytest

import flashcard_pipeline.retry as retry_module
import guide_strategy_3
from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline.rate_limiter import AdaptiveRateLimiter, CompositeLimiter, RateLimiter
from flashcard_pipeline.rate_limiter_v2 import (
    AdaptiveShardedRateLimiter,
    LimiterGroup,
    ManualClock,
    ShardedRateLimiter,
)
from flashcard_pipeline.retry import retry_on_rate_limit

pytestmark = pytest.mark.usefixtures("clean_rate_env")


calls: list[str] = []


async def _call_api_stub() -> str:
    calls.append("api")
    return "response"


def process() -> str:
    return "done"


# --- the guide's "Old" snippets, on the shim ---------------------------------------------


def test_strategy_1_old():
    # Old
    from flashcard_pipeline.rate_limiter import RateLimiter

    limiter = RateLimiter(
        requests_per_minute=600,
        requests_per_hour=36000,
        burst_size=20
    )
    assert sum(limiter.try_acquire() for _ in range(30)) == 20


@pytest.mark.asyncio
async def test_strategy_3_old_api_client():
    # Old implementation
    class APIClient:
        def __init__(self):
            self.rate_limiter = RateLimiter(
                requests_per_minute=600,
                burst_size=20
            )

        async def make_request(self, user_id: str):
            await self.rate_limiter.acquire()
            return await self._call_api()

        _call_api = staticmethod(_call_api_stub)

    client = APIClient()
    assert [await client.make_request(f"user-{i}") for i in range(20)] == ["response"] * 20
    with pytest.raises(RateLimitError) as caught:
        await client.make_request("user-20")
    assert caught.value.retry_after == 1  # whole seconds, as the old module said


class APIClient(guide_strategy_3.APIClient):
    """The guide's Strategy 3 client, verbatim (its own limiter too), with a stub API."""

    _call_api = staticmethod(_call_api_stub)


@pytest.mark.asyncio
async def test_strategy_3_new_make_request():
    client = APIClient()
    results = await asyncio.gather(*(client.make_request(f"user-{i}") for i in range(10)))
    assert results == ["response"] * 10


@pytest.mark.asyncio
async def test_strategy_3_new_batch_larger_than_the_burst_on_the_guides_limiter():
    client = APIClient()
    started = time.monotonic()
    # The burst is 600 (the rate); 4 more come one per 100 ms (600 per minute).
    results = await client.make_batch_request([f"user-{i}" for i in range(604)])
    elapsed = time.monotonic() - started
    assert results == ["response"] * 604
    assert 0.4 - 0.01 <= elapsed < 2.0  # waited for the four slots, not more


@pytest.mark.asyncio
async def test_example_1_old():
    # Old
    limiter = RateLimiter(requests_per_minute=60)

    async def process_request():
        await limiter.acquire()
        return process()

    for _ in range(20):  # the old default burst (BURST_SIZE 20)
        assert await process_request() == "done"
    with pytest.raises(RateLimitError):
        await process_request()


def test_example_2_old_and_new():
    # Old
    limiter = AdaptiveRateLimiter(
        initial_requests_per_minute=600,
        burst_size=20
    )
    assert limiter.get_status()["adaptive_enabled"] is True

    # New - With adaptive sharding
    limiter = AdaptiveShardedRateLimiter(
        rate=600,
        initial_shards=4,
        rebalance_threshold=0.3,
        rebalance_interval=300.0
    )
    assert (limiter.shards, limiter.rebalance_threshold, limiter.rebalance_interval) == (
        4,
        0.3,
        300.0,
    )
    assert sum(bool(limiter.try_acquire(f"user-{i}")) for i in range(700)) == 600


@pytest.mark.asyncio
async def test_example_3_old_and_new():
    # Old
    composite = CompositeLimiter()
    await composite.acquire_for_stage(1, estimated_tokens=350)

    # New - With better isolation
    class EnhancedCompositeLimiter:
        def __init__(self):
            self.api_limiter = ShardedRateLimiter(rate=600, shards=8)
            self.cost_limiter = ShardedRateLimiter(rate=300, shards=4)
            self.stage_limiters = {
                1: ShardedRateLimiter(rate=300, shards=4),
                2: ShardedRateLimiter(rate=300, shards=4)
            }

        async def acquire_for_stage(self, stage: int, user_id: str):
            # Check all limits with proper keys
            await self.api_limiter.acquire(f"api:{user_id}")
            await self.cost_limiter.acquire(f"cost:{user_id}")
            await self.stage_limiters[stage].acquire(f"stage{stage}:{user_id}")

    enhanced = EnhancedCompositeLimiter()
    await enhanced.acquire_for_stage(1, "user_1")
    await enhanced.acquire_for_stage(2, "user_2")
    assert enhanced.api_limiter.get_status()["requests_allowed"] == 2
    assert enhanced.stage_limiters[2].get_status()["requests_allowed"] == 1


def test_old_try_acquire_is_still_a_plain_bool():
    limiter = RateLimiter(requests_per_minute=60, burst_size=1)
    outcomes = []
    if limiter.try_acquire():
        outcomes.append("proceed")  # the guide's "# proceed"
    else:
        outcomes.append("rate limited")
    if limiter.try_acquire():
        outcomes.append("proceed")
    else:
        outcomes.append("rate limited")
    assert outcomes == ["proceed", "rate limited"]


# --- "Testing Your Migration", as written --------------------------------------------------

from flashcard_pipeline.rate_limiter import RateLimiter  # noqa: E402, F811
from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter  # noqa: E402, F811


@pytest.mark.asyncio
async def test_migration_compatibility():
    """Verify similar behavior between old and new"""
    old_limiter = RateLimiter(requests_per_minute=60)
    new_limiter = ShardedRateLimiter(rate=60, shards=1)

    # Both should allow similar request patterns
    old_results = []
    new_results = []

    for i in range(10):
        old_allowed = old_limiter.try_acquire()
        new_result = await new_limiter.try_acquire()

        old_results.append(old_allowed)
        new_results.append(new_result.allowed)

    # Should have similar patterns
    assert old_results == new_results


# --- the rollback plan's feature flag ------------------------------------------------------


def rollback_snippet():
    import os

    if os.getenv("USE_NEW_RATE_LIMITER", "false").lower() == "true":
        from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter as RateLimiter
    else:
        from flashcard_pipeline.rate_limiter import RateLimiter

    # Rest of code remains the same
    limiter = RateLimiter(requests_per_minute=60, requests_per_hour=100, burst_size=5)
    return [bool(limiter.try_acquire()) for _ in range(7)]


@pytest.mark.parametrize("flag", ["false", "true"])
def test_the_feature_flag_switches_without_changing_call_sites(monkeypatch, flag):
    monkeypatch.setenv("USE_NEW_RATE_LIMITER", flag)
    # Old call sites keep their meaning either way: a burst of 5, then limited.
    assert rollback_snippet() == [True] * 5 + [False] * 2


# --- old keywords and variables on the new limiter ----------------------------------------


def test_old_keywords_on_the_new_limiter_enforce_both_limits():
    clock = ManualClock()
    limiter = ShardedRateLimiter(
        requests_per_minute=6000, requests_per_hour=15, burst_size=10, clock=clock
    )
    assert sum(bool(limiter.try_acquire()) for _ in range(20)) == 10
    clock.advance(60)
    assert sum(bool(limiter.try_acquire()) for _ in range(20)) == 5  # the hourly limit
    refused = limiter.acquire(max_wait=0)
    assert refused.reason == "max_wait_exceeded"
    assert refused.retry_after == pytest.approx(3600 - 60, abs=1e-6)
    assert isinstance(limiter, LimiterGroup)  # the minute budget and the hourly window
    assert not hasattr(limiter, "reserve")  # a reservation holds one budget's slot
    limiter.reset()  # refills the minute budget and empties the hourly window
    assert sum(bool(limiter.try_acquire()) for _ in range(20)) == 10


def test_old_keywords_wait_out_a_short_gap_within_max_wait_on_the_real_clock():
    # The retries measure their wait on the clock: a driver that sleeps in 50 ms steps
    # must not count the whole 0.2 s gap as waited after the first step (which gave up
    # with max_wait_exceeded while 0.25 s of the bound were left).
    limiter = ShardedRateLimiter(requests_per_minute=300, requests_per_hour=10_000, burst_size=1)
    assert limiter.try_acquire()
    started = time.monotonic()
    result = limiter.acquire(max_wait=0.3)
    assert result.allowed, result
    assert 0.15 <= time.monotonic() - started < 0.3


def test_old_keywords_one_at_a_time():
    per_minute = ShardedRateLimiter(requests_per_minute=120)
    assert (per_minute.rate, per_minute.period, per_minute.burst_size) == (120, 60.0, 20)
    per_hour = ShardedRateLimiter(requests_per_hour=100, burst_size=5)
    assert (per_hour.rate, per_hour.period, per_hour.burst_size) == (100, 3600.0, 5)
    with pytest.raises(TypeError, match="rate"):
        ShardedRateLimiter(rate=10, requests_per_minute=10)


def test_from_env_reads_the_new_variables(monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_RATE", "600")
    monkeypatch.setenv("RATE_LIMIT_PERIOD", "60")
    monkeypatch.setenv("RATE_LIMIT_SHARDS", "4")
    limiter = ShardedRateLimiter.from_env()
    assert (limiter.rate, limiter.period, limiter.shards) == (600, 60.0, 4)


def test_from_env_falls_back_to_the_old_variables(monkeypatch):
    monkeypatch.setenv("REQUESTS_PER_MINUTE", "600")
    monkeypatch.setenv("REQUESTS_PER_HOUR", "36000")
    monkeypatch.setenv("BURST_SIZE", "20")
    monkeypatch.setenv("RATE_LIMIT_SHARDS", "1")
    limiter = ShardedRateLimiter.from_env()
    assert (limiter.rate, limiter.period, limiter.burst_size, limiter.shards) == (
        600,
        60.0,
        20,
        1,
    )
    assert sum(bool(limiter.try_acquire()) for _ in range(30)) == 20


@pytest.mark.parametrize("variable", ["RATE_LIMIT_RATE", "RATE_LIMIT_SHARDS", "BURST_SIZE"])
def test_from_env_names_a_malformed_variable(monkeypatch, variable):
    monkeypatch.setenv(variable, "lots")
    with pytest.raises(ValueError, match=variable):
        ShardedRateLimiter.from_env()


# --- the retry helper ------------------------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch) -> List[float]:
    """Records the retry helper's sleeps instead of sleeping."""
    recorded: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(retry_module.time, "sleep", recorded.append)
    monkeypatch.setattr(retry_module.asyncio, "sleep", fake_async_sleep)
    return recorded


def test_retry_honours_retry_after_within_its_jitter(sleeps):
    attempts = iter([RateLimitError(retry_after=2.0), RateLimitError(retry_after=0.5), "ok"])

    @retry_on_rate_limit(max_attempts=3, jitter=0.1)
    def call() -> str:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert call() == "ok"
    assert 2.0 <= sleeps[0] <= 2.2 and 0.5 <= sleeps[1] <= 0.55


@pytest.mark.asyncio
async def test_retry_gives_up_after_max_attempts(sleeps):
    attempts = 0

    @retry_on_rate_limit(max_attempts=3, backoff=1.0, jitter=0.0)
    async def call() -> None:
        nonlocal attempts
        attempts += 1
        raise RateLimitError()  # no retry_after: exponential backoff

    with pytest.raises(RateLimitError):
        await call()
    assert attempts == 3
    assert sleeps == [1.0, 2.0]


def test_retry_caps_the_wait_and_checks_its_arguments(sleeps):
    @retry_on_rate_limit(max_attempts=2, max_delay=5.0, jitter=0.0)
    def call() -> None:
        raise RateLimitError(retry_after=3600)

    with pytest.raises(RateLimitError):
        call()
    assert sleeps == [5.0]
    with pytest.raises(ValueError, match="max_attempts"):
        retry_on_rate_limit(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        retry_on_rate_limit(jitter=-1)


# --- debug logging ---------------------------------------------------------------------------


def test_debug_logging_goes_to_the_guides_logger(caplog):
    with caplog.at_level(logging.DEBUG, logger="flashcard_pipeline.rate_limiter_v2"):
        limiter = ShardedRateLimiter(rate=1, period=60.0)
        limiter.try_acquire()
        limiter.set_rate(2)
    messages = [r.getMessage() for r in caplog.records if r.name == "flashcard_pipeline.rate_limiter_v2"]
    assert any("created" in m for m in messages)
    assert any("set_rate" in m for m in messages)


def test_nothing_is_logged_on_decisions(caplog):
    limiter = ShardedRateLimiter(rate=1, period=60.0)
    with caplog.at_level(logging.DEBUG, logger="flashcard_pipeline.rate_limiter_v2"):
        for _ in range(3):
            limiter.try_acquire()
    assert caplog.records == []
