"""The compatibility shim `flashcard_pipeline.rate_limiter`: the old API, its old meaning,
on the new engine. Time is a ManualClock; nothing sleeps."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest

from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline.rate_limiter import (
    MAX_REQUESTS_PER_MINUTE,
    AdaptiveRateLimiter,
    CompositeLimiter,
    DatabaseRateLimiter,
    RateLimiter,
)
from flashcard_pipeline.rate_limiter_v2 import ManualClock

pytestmark = pytest.mark.usefixtures("clean_rate_env")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def take_all(limiter: RateLimiter) -> int:
    taken = 0
    while limiter.try_acquire():
        taken += 1
    return taken


# --- RateLimiter: construction and the environment --------------------------------------


def test_defaults_come_from_the_old_environment_defaults(clock):
    limiter = RateLimiter(clock=clock)
    assert (limiter.requests_per_minute, limiter.requests_per_hour, limiter.burst_size) == (
        600,
        36000,
        20,
    )
    assert limiter.tokens == 20.0  # the bucket starts full
    assert limiter.rate == 10.0  # tokens per second


def test_the_environment_variables_are_read(monkeypatch, clock):
    monkeypatch.setenv("REQUESTS_PER_MINUTE", "120")
    monkeypatch.setenv("REQUESTS_PER_HOUR", "1000")
    monkeypatch.setenv("BURST_SIZE", "5")
    limiter = RateLimiter(clock=clock)
    assert (limiter.requests_per_minute, limiter.requests_per_hour, limiter.burst_size) == (
        120,
        1000,
        5,
    )
    assert take_all(limiter) == 5


def test_a_malformed_variable_is_a_value_error_naming_it(monkeypatch):
    monkeypatch.setenv("BURST_SIZE", "twenty")
    with pytest.raises(ValueError, match="BURST_SIZE"):
        RateLimiter()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"requests_per_minute": -5}, "requests_per_minute"),
        ({"requests_per_hour": 0}, "requests_per_hour"),
    ],
)
def test_non_positive_rates_are_value_errors(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        RateLimiter(**kwargs)


def test_the_old_caps_apply(clock):
    limiter = RateLimiter(10**9, 10**12, 10**6, clock=clock)
    assert (limiter.requests_per_minute, limiter.requests_per_hour, limiter.burst_size) == (
        600_000,
        36_000_000,
        10_000,
    )


# --- RateLimiter: the bucket and the hourly window together -----------------------------


def test_the_bucket_limits_bursts_and_refills_per_minute(clock):
    limiter = RateLimiter(requests_per_minute=60, requests_per_hour=1000, burst_size=10, clock=clock)
    assert take_all(limiter) == 10
    clock.advance(1.0)  # 60 per minute: one token a second
    assert take_all(limiter) == 1


def test_the_hourly_window_limits_even_when_the_bucket_has_tokens(clock):
    limiter = RateLimiter(requests_per_minute=6000, requests_per_hour=15, burst_size=10, clock=clock)
    assert take_all(limiter) == 10
    clock.advance(60)  # the bucket is full again, but only 5 remain in the hour
    assert take_all(limiter) == 5
    assert limiter.tokens == 5.0  # the refused calls took nothing from the bucket
    clock.advance(3600 - 60)
    assert take_all(limiter) == 0  # the first 10 still count at exactly one hour
    clock.advance(0.001)
    assert take_all(limiter) == 10


@pytest.mark.asyncio
async def test_acquire_raises_with_whole_second_retry_after(clock):
    limiter = RateLimiter(requests_per_minute=60, requests_per_hour=1000, burst_size=1, clock=clock)
    await limiter.acquire()
    with pytest.raises(RateLimitError) as caught:
        await limiter.acquire()
    assert caught.value.retry_after == 2  # int(1.0) + 1, as the old module said


@pytest.mark.asyncio
async def test_wait_if_needed_waits_and_refuses_the_impossible_at_once(clock):
    limiter = RateLimiter(requests_per_minute=60, requests_per_hour=1000, burst_size=2, clock=clock)
    await limiter.wait_if_needed(2)
    await limiter.wait_if_needed(2)  # waits two seconds of the manual clock
    assert clock.monotonic() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="tokens"):
        await limiter.wait_if_needed(3)
    assert clock.monotonic() == pytest.approx(2.0, abs=1e-6)


@pytest.mark.asyncio
async def test_acquire_async_honours_its_timeout(clock):
    limiter = RateLimiter(requests_per_minute=60, requests_per_hour=1000, burst_size=1, clock=clock)
    assert await limiter.acquire_async()
    with pytest.raises(RateLimitError, match=r"Rate limit timeout after 0\.5s") as timed_out:
        await limiter.acquire_async(timeout=0.5)  # raised at once: the wait is known to be 1 s
    assert timed_out.value.retry_after == 2  # int(wait) + 1, as the old module said
    assert clock.monotonic() == 0.0
    assert await limiter.acquire_async(timeout=1.0)
    assert clock.monotonic() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="timeout"):
        await limiter.acquire_async(timeout=-1)


def test_set_rate_sets_capacity_to_a_minute_share(clock):
    limiter = RateLimiter(requests_per_minute=600, burst_size=20, clock=clock)
    limiter.set_rate(120)
    assert (limiter.requests_per_minute, limiter.burst_size) == (120, 2)
    assert take_all(limiter) == 2
    limiter.set_rate(30)
    assert limiter.burst_size == 1  # max(1, int(30 / 60))
    with pytest.raises(ValueError, match="requests_per_minute"):
        limiter.set_rate(0)


def test_stats_and_status_keep_their_old_keys(clock):
    limiter = RateLimiter(requests_per_minute=60, requests_per_hour=100, burst_size=4, clock=clock)
    for _ in range(6):
        limiter.try_acquire()
    assert limiter.get_stats() == {
        "requests_allowed": 4,
        "requests_denied": 2,
        "capacity_utilization": 1.0,
        "current_tokens": 0.0,
        "capacity": 4,
    }
    assert limiter.get_status() == {
        "minute_tokens_available": 0.0,
        "minute_limit": 60,
        "hour_requests_made": 4,
        "hour_limit": 100,
        "burst_size": 4,
    }
    limiter.reset_stats()
    assert limiter.get_stats()["requests_allowed"] == 0
    limiter.reset()
    assert limiter.tokens == 4.0 and limiter.get_status()["hour_requests_made"] == 0


def test_threads_share_the_budget_exactly(clock, run_threads):
    limiter = RateLimiter(requests_per_minute=60, requests_per_hour=1000, burst_size=100, clock=clock)
    admitted = [0] * 4

    def worker(index: int) -> None:
        for _ in range(250):
            admitted[index] += limiter.try_acquire()

    run_threads(worker)
    assert sum(admitted) == 100
    assert limiter.get_stats()["requests_allowed"] == 100


# --- AdaptiveRateLimiter ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_adaptive_rate_rises_after_ten_successes_and_falls_on_a_rate_limit(clock):
    limiter = AdaptiveRateLimiter(initial_requests_per_minute=600, burst_size=20, clock=clock)
    for _ in range(9):
        await limiter.on_success()
    assert limiter.requests_per_minute == 600
    await limiter.on_success()
    assert limiter.requests_per_minute == pytest.approx(630)
    await limiter.on_rate_limit()
    assert limiter.requests_per_minute == pytest.approx(567)
    status = limiter.get_status()
    assert status["adaptive_enabled"] is True
    assert (status["consecutive_successes"], status["consecutive_failures"]) == (0, 1)
    assert status["current_requests_per_minute"] == pytest.approx(567)


@pytest.mark.asyncio
async def test_adaptive_rate_stays_within_its_bounds(clock):
    limiter = AdaptiveRateLimiter(initial_requests_per_minute=1190, clock=clock)
    for _ in range(30):
        await limiter.on_success()
    assert limiter.requests_per_minute == MAX_REQUESTS_PER_MINUTE
    for _ in range(100):
        await limiter.on_rate_limit()
    assert limiter.requests_per_minute == 10


@pytest.mark.asyncio
async def test_on_rate_limit_resumes_from_a_negative_balance(clock):
    # The old limiter set its tokens to -retry_after * rate: at the lowered 540/min (9/s),
    # 2 s owe 18 tokens, so 0.9 tokens at 2.1 s and 1.8 at 2.2 s.
    limiter = AdaptiveRateLimiter(initial_requests_per_minute=600, burst_size=20, clock=clock)
    await limiter.on_rate_limit(retry_after=2.0)
    assert not limiter.try_acquire()
    clock.advance(2.1)
    assert not limiter.try_acquire()
    clock.advance(0.1)
    assert take_all(limiter) == 1


# --- CompositeLimiter ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_composite_is_all_or_nothing(clock):
    composite = CompositeLimiter(clock=clock)
    for _ in range(10):  # stage 1's burst
        await composite.acquire_for_stage(1)
    api_tokens = composite.api_limiter.tokens
    with pytest.raises(RateLimitError):
        await composite.acquire_for_stage("stage1")
    # The refusal by stage 1 took nothing from the api limiter.
    assert composite.api_limiter.tokens == api_tokens
    await composite.acquire_for_stage(2)
    await composite.acquire_for_stage("stage2")
    assert composite.stage2_limiter.tokens == 8.0


@pytest.mark.asyncio
async def test_the_cost_limiter_counts_only_for_large_requests(clock):
    composite = CompositeLimiter(clock=clock)
    await composite.acquire_for_stage(1, estimated_tokens=1000)
    assert composite.cost_limiter.tokens == 10.0
    await composite.acquire_for_stage(1, estimated_tokens=1001)
    assert composite.cost_limiter.tokens == 9.0


@pytest.mark.asyncio
async def test_composite_reads_its_environment_and_rejects_unknown_stages(monkeypatch, clock):
    monkeypatch.setenv("STAGE2_BURST_SIZE", "3")
    composite = CompositeLimiter(clock=clock)
    assert composite.stage2_limiter.burst_size == 3
    assert set(composite.get_status()) == {
        "api_limiter",
        "cost_limiter",
        "stage1_limiter",
        "stage2_limiter",
    }
    with pytest.raises(ValueError, match="stage"):
        await composite.acquire_for_stage(3)


@pytest.mark.asyncio
async def test_composite_feedback_goes_to_the_api_limiter(clock):
    composite = CompositeLimiter(clock=clock)
    await composite.on_rate_limit()
    assert composite.api_limiter.requests_per_minute == pytest.approx(540)
    for _ in range(10):
        await composite.on_success()
    assert composite.api_limiter.requests_per_minute == pytest.approx(567)


def test_rate_limit_error_needs_no_message():
    error = RateLimitError(retry_after=3)
    assert error.retry_after == 3 and "3" in str(error)
    assert RateLimitError().retry_after is None


# --- the old module's logger ----------------------------------------------------------------


def test_code_that_patches_the_old_modules_logger_sees_its_messages(tmp_path, clock):
    with mock.patch("flashcard_pipeline.rate_limiter.logger") as logger:
        limiter = AdaptiveRateLimiter(clock=clock)
        asyncio.run(limiter.on_rate_limit())
        assert logger.info.called  # the rate went down
        with DatabaseRateLimiter(tmp_path / "usage.db", daily_token_quota=100, clock=clock) as db:
            db.track_usage("r1", 60, 0)
        (level, message, *_), _ = logger.log.call_args  # the 50 % alert
        assert "Usage alert" in message
