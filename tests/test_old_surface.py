"""Issue 10: the old module's whole public surface and the previous v2's public API, as
existing callers use them, on the new engine. One test per behaviour the issue lists (the
database limiter, the exceptions and retries, and the native constructors have files of
their own). Time is a ManualClock; nothing sleeps."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import threading

import pytest

from flashcard_pipeline.exceptions import ApiError, PipelineError, RateLimitError
from flashcard_pipeline.rate_limiter import (
    AdaptiveRateLimiter,
    CompositeLimiter,
    RateLimiter,
)
from flashcard_pipeline.rate_limiter_v2 import (
    AdaptiveShardedRateLimiter,
    LimiterGroup,
    ManualClock,
    ReservationRefused,
    ShardedRateLimiter,
)

#: make_limiter's tests run on every backend (memory, Redis, Valkey); see conftest.
pytestmark = [pytest.mark.usefixtures("clean_rate_env"), pytest.mark.conformance]


def take_all(limiter: RateLimiter) -> int:
    taken = 0
    while limiter.try_acquire():
        taken += 1
    return taken


# --- the old module -----------------------------------------------------------------------


def test_the_feedback_methods_are_coroutines_again():
    for method in (
        AdaptiveRateLimiter.on_success,
        AdaptiveRateLimiter.on_rate_limit,
        CompositeLimiter.on_success,
        CompositeLimiter.on_rate_limit,
    ):
        assert inspect.iscoroutinefunction(method), method


@pytest.mark.asyncio
async def test_acquire_async_raises_on_timeout_and_on_a_negative_timeout(clock):
    limiter = RateLimiter(requests_per_minute=60, burst_size=1, clock=clock)
    assert await limiter.acquire_async(timeout=0)
    with pytest.raises(RateLimitError, match=r"^Rate limit timeout after 0\.25s$"):
        await limiter.acquire_async(timeout=0.25)
    with pytest.raises(ValueError, match="^timeout: "):
        await limiter.acquire_async(timeout=-0.1)


@pytest.mark.asyncio
async def test_adaptation_changes_the_rate_only(clock):
    limiter = AdaptiveRateLimiter(initial_requests_per_minute=600, burst_size=20, clock=clock)
    await limiter.on_rate_limit()
    assert (limiter.requests_per_minute, limiter.burst_size, limiter.capacity) == (540, 20, 20)
    for _ in range(10):
        await limiter.on_success()
    assert limiter.requests_per_minute == pytest.approx(567)
    assert limiter.burst_size == 20
    assert take_all(limiter) == 20  # the whole old burst, not 10 or 9


@pytest.mark.asyncio
async def test_a_rate_limit_with_retry_after_resumes_from_a_negative_balance(clock):
    # The run: 2 of 30 admitted 1.3 s after on_rate_limit(retry_after=1).
    limiter = AdaptiveRateLimiter(initial_requests_per_minute=600, burst_size=20, clock=clock)
    await limiter.on_rate_limit(retry_after=1)  # 540/min = 9/s: -9 tokens
    clock.advance(1.3)  # -9 + 11.7 = 2.7
    assert sum(limiter.try_acquire() for _ in range(30)) == 2
    # A success that re-rates meanwhile keeps what is owed.
    again = AdaptiveRateLimiter(initial_requests_per_minute=600, burst_size=20, clock=clock)
    await again.on_rate_limit(retry_after=1)
    again.consecutive_successes = 9
    await again.on_success()  # 567/min
    clock.advance(0.9)
    assert not again.try_acquire()


def test_initial_requests_per_hour_is_accepted_by_keyword_and_position(clock):
    by_keyword = AdaptiveRateLimiter(initial_requests_per_hour=5, clock=clock)
    by_position = AdaptiveRateLimiter(600, 5, 20, clock=clock)
    for limiter in (by_keyword, by_position):
        assert limiter.requests_per_hour == 5
        assert take_all(limiter) == 5
    with pytest.raises(ValueError, match="^initial_requests_per_hour: "):
        AdaptiveRateLimiter(initial_requests_per_hour=0)


@pytest.mark.asyncio
async def test_max_requests_per_minute_is_read_from_the_environment(monkeypatch, clock):
    monkeypatch.setenv("MAX_REQUESTS_PER_MINUTE", "610")
    limiter = AdaptiveRateLimiter(initial_requests_per_minute=600, clock=clock)
    assert limiter.max_requests_per_minute == 610
    for _ in range(30):
        await limiter.on_success()
    assert limiter.requests_per_minute == 610
    monkeypatch.setenv("MAX_REQUESTS_PER_MINUTE", "lots")
    with pytest.raises(ValueError, match="MAX_REQUESTS_PER_MINUTE='lots'"):
        AdaptiveRateLimiter()


@pytest.mark.asyncio
async def test_the_adaptive_parameters_exist_and_are_honoured(clock):
    limiter = AdaptiveRateLimiter(initial_requests_per_minute=600, clock=clock)
    assert (
        limiter.min_requests_per_minute,
        limiter.max_requests_per_minute,
        limiter.adjustment_factor,
        limiter.recovery_factor,
    ) == (10, 1200, 0.9, 1.05)
    limiter.adjustment_factor = 0.5
    limiter.min_requests_per_minute = 200
    await limiter.on_rate_limit()
    assert limiter.requests_per_minute == 300
    await limiter.on_rate_limit()
    assert limiter.requests_per_minute == 200
    limiter.recovery_factor = 2.0
    for _ in range(10):
        await limiter.on_success()
    assert limiter.requests_per_minute == 400


def test_the_old_attributes_exist(clock):
    limiter = RateLimiter(requests_per_minute=120, requests_per_hour=1000, burst_size=5, clock=clock)
    assert (limiter.capacity, limiter.minute_rate, limiter.minute_tokens) == (5, 2.0, 5.0)
    assert limiter.try_acquire() and not RateLimiter(1, 1, 1, clock=clock).try_acquire(2)
    assert limiter.stats["requests_allowed"] == 1
    assert limiter.stats["requests_denied"] == 0
    assert limiter.stats["start_time"] == clock.time()


def test_tokens_are_rounded_to_a_whole_number(clock):
    limiter = RateLimiter(requests_per_minute=60, burst_size=5, clock=clock)
    take_all(limiter)
    clock.advance(1.6)
    assert limiter.minute_tokens == pytest.approx(1.6)
    assert limiter.tokens == 2.0  # round(1.6, 0), as the old property did


def test_reset_clears_the_statistics(clock):
    limiter = RateLimiter(requests_per_minute=60, burst_size=2, clock=clock)
    take_all(limiter)
    assert limiter.get_stats()["requests_denied"] == 1
    limiter.reset()
    assert (limiter.stats["requests_allowed"], limiter.stats["requests_denied"]) == (0, 0)
    assert limiter.tokens == 2.0


def test_composite_status_uses_the_old_keys(clock):
    status = CompositeLimiter(clock=clock).get_status()
    assert list(status) == ["api_limiter", "cost_limiter", "stage1_limiter", "stage2_limiter"]
    assert status["api_limiter"]["adaptive_enabled"] is True


def test_the_old_keywords_on_the_new_limiter_reset_the_hourly_window_too():
    clock = ManualClock()
    limiter = ShardedRateLimiter(requests_per_minute=600, requests_per_hour=3, clock=clock)
    assert sum(bool(limiter.try_acquire()) for _ in range(5)) == 3
    limiter.reset()
    assert sum(bool(limiter.try_acquire()) for _ in range(5)) == 3


def test_old_stats_count_exactly_from_threads(clock, run_threads):
    limiter = RateLimiter(requests_per_minute=60, requests_per_hour=1000, burst_size=50, clock=clock)

    def worker(_: int) -> None:
        for _ in range(500):
            limiter.try_acquire()

    run_threads(worker)
    assert limiter.stats["requests_allowed"] == 50
    assert limiter.stats["requests_allowed"] + limiter.stats["requests_denied"] == 4 * 500


# --- the previous v2 ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_reset_is_awaitable_and_a_plain_call(make_limiter):
    limiter = make_limiter(10)
    limiter.try_acquire(count=10)
    assert await limiter.reset() is None
    assert limiter.peek() == 10
    limiter.try_acquire(count=10)
    limiter.reset()
    assert limiter.peek() == 10


def test_total_rate_is_the_whole_rate(make_limiter):
    assert make_limiter(600, 60.0, shards=4).total_rate == 600


@pytest.mark.memory_only(reason="the in-memory status: statistics, shard_details, reservation counters")
def test_status_has_the_previous_keys_beside_todays(make_limiter):
    limiter = make_limiter(10, shards=2)
    for _ in range(12):
        limiter.try_acquire("user")
    limiter.reset()  # clears the statistics too
    for _ in range(12):
        limiter.try_acquire("user")
    kept = limiter.reserve("user", max_wait=5.0)
    status = limiter.get_status()
    assert status["total_rate"] == 10 and status["rate"] == 10
    assert status["statistics"] == {
        "total_requests": 12,
        "allowed_requests": 10,
        "denied_requests": 2,
        "allowed": 10,
        "denied": 2,
        "success_rate": pytest.approx(10 / 12),
    }
    assert status["reservations"] == {"active": 1, "total_created": 1, "expired": 0}
    assert [d["shard_id"] for d in status["shard_details"]] == [0, 1]
    assert sum(d["requests_handled"] for d in status["shard_details"]) == 10
    assert {d["capacity"] for d in status["shard_details"]} == {5.0}
    assert limiter.cancel_reservation(kept.id)


@pytest.mark.memory_only(reason="the in-memory reservation book's counters in get_status()")
def test_status_counts_expired_reservations(make_limiter, clock):
    limiter = make_limiter(10, reservation_ttl=1.0)
    limiter.reserve()
    clock.advance(2.0)
    assert limiter.get_status()["reservations"] == {"active": 0, "total_created": 1, "expired": 1}


def test_a_refused_reservation_is_a_value_error_saying_exceeds_max_wait(make_limiter):
    limiter = make_limiter(1, 10.0)
    limiter.try_acquire()
    try:
        limiter.reserve(max_wait=1.0)  # the previous examples caught ValueError here
    except ValueError as refused:
        assert isinstance(refused, RateLimitError) and isinstance(refused, ApiError)
        assert "exceeds max_wait" in str(refused)
        assert refused.retry_after == pytest.approx(10.0)
        assert refused.status_code == 429 and refused.reason == "max_wait_exceeded"
        again = pickle.loads(pickle.dumps(refused))
        assert isinstance(again, ReservationRefused) and str(again) == str(refused)
    else:
        pytest.fail("reserve beyond max_wait was not refused")
    with pytest.raises(ReservationRefused, match="exceeds_capacity"):
        limiter.reserve(count=2)


def test_execute_reservation_still_answers_with_a_reason(make_limiter):
    limiter = make_limiter(10)
    result = limiter.execute_reservation("no-such-id")
    assert not result and result.reason == "unknown_reservation"


# --- back_off -----------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 4])
def test_back_off_admits_nothing_then_refills_from_empty(make_limiter, clock, shards):
    limiter = make_limiter(10, shards=shards)
    limiter.back_off(2.0)
    refused = limiter.try_acquire()  # the full bucket was taken, and 2 s of refill owed
    assert not refused and refused.retry_after == pytest.approx(2.1)
    clock.advance(1.95)
    assert not limiter.try_acquire()
    clock.advance(0.5)
    assert sum(bool(limiter.try_acquire()) for _ in range(10)) == 4


def test_back_off_on_a_sliding_window_and_per_key(make_limiter, clock):
    window = make_limiter(5, algorithm="sliding_window")
    window.back_off(1.5)
    clock.advance(1.4)
    assert not window.try_acquire()
    clock.advance(0.1)
    assert sum(bool(window.try_acquire()) for _ in range(9)) == 5
    keyed = make_limiter(2, scope="key")
    keyed.back_off(1.0, key="slow")
    assert not keyed.try_acquire("slow") and keyed.try_acquire("other")


@pytest.mark.asyncio
async def test_back_off_is_awaitable_and_refuses_a_bad_length(make_limiter):
    limiter = make_limiter(10)
    await limiter.back_off(0.0)
    for bad, error in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="^seconds: "):
            limiter.back_off(bad)


# --- LimiterGroup: the public all-or-nothing acquire --------------------------------------


def group_of_three(clock: ManualClock) -> tuple[LimiterGroup, list[ShardedRateLimiter]]:
    """The guide's EnhancedCompositeLimiter, taken together: api 600, cost 300, stage 2."""
    limiters = [
        ShardedRateLimiter(rate=600, shards=8, clock=clock),
        ShardedRateLimiter(rate=300, shards=4, clock=clock),
        ShardedRateLimiter(rate=2, shards=1, clock=clock),
    ]
    return LimiterGroup(*limiters), limiters


def test_a_group_spends_nothing_when_its_last_limiter_refuses(clock):
    group, (api, cost, stage) = group_of_three(clock)
    assert group.try_acquire("user_1") and group.try_acquire("user_1")
    refused = group.try_acquire("user_1")
    assert not refused and refused.retry_after == pytest.approx(30.0)
    assert (api.peek(), cost.peek(), stage.peek()) == (598, 298, 0)
    assert group.peek() == 0


def test_a_group_waits_from_a_thread_and_refuses_past_max_wait(clock):
    group, (_, _, stage) = group_of_three(clock)
    stage.try_acquire(count=2)
    refused = group.acquire("user_1", max_wait=10.0)
    assert refused.reason == "max_wait_exceeded" and clock.monotonic() == 0.0
    assert group.acquire("user_1").allowed  # advances the manual clock by the wait
    assert clock.monotonic() == pytest.approx(30.0)


@pytest.mark.asyncio
async def test_a_group_waits_in_a_task(clock):
    group, (_, _, stage) = group_of_three(clock)
    stage.try_acquire(count=2)
    result = await group.acquire("user_1")
    assert result.allowed and clock.monotonic() == pytest.approx(30.0)
    assert await group.reset() is None and group.peek() == 2


def test_groups_nest_and_refuse_what_would_double_count():
    one, two = ShardedRateLimiter(rate=5), ShardedRateLimiter(rate=7)
    nested = LimiterGroup(LimiterGroup(one), two)
    assert nested.limiters == (one, two) and nested.rate == 5 and nested.total_rate == 5
    with pytest.raises(ValueError, match="^limiters: the same limiter twice"):
        LimiterGroup(one, nested)
    with pytest.raises(TypeError, match="^limiters: at least one"):
        LimiterGroup()
    with pytest.raises(TypeError, match="^limiters: must be ShardedRateLimiter"):
        LimiterGroup(one, RateLimiter())  # type: ignore[arg-type]
    assert LimiterGroup(one, RateLimiter().limits).limiters[0] is one


def test_a_group_never_over_admits_from_many_threads():
    clock = ManualClock()
    shared = ShardedRateLimiter(rate=100, shards=4, clock=clock)
    groups = [LimiterGroup(shared, ShardedRateLimiter(rate=40, clock=clock)) for _ in range(4)]
    admitted = [0] * 4
    barrier = threading.Barrier(4)

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(200):
            admitted[index] += bool(groups[index].try_acquire())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 100  # the shared limiter's whole burst, not 4 x 40
    assert all(count <= 40 for count in admitted)


# --- every coroutine the old module and the previous v2 had, awaited -----------------------


@pytest.mark.asyncio
async def test_code_that_awaits_every_old_coroutine_still_runs(tmp_path, clock):
    from flashcard_pipeline.rate_limiter import DatabaseRateLimiter
    from flashcard_pipeline.utils.retry import RetryConfig, retry_async, retry_with_config

    # The old module.
    old = RateLimiter(requests_per_minute=600, clock=clock)
    await old.acquire()
    assert await old.acquire_async(timeout=1.0)
    await old.wait_if_needed()
    adaptive = AdaptiveRateLimiter(clock=clock)
    await adaptive.acquire()
    await adaptive.on_success()
    await adaptive.on_rate_limit(retry_after=None)
    composite = CompositeLimiter(clock=clock)
    await composite.acquire_for_stage(1, estimated_tokens=2000)
    await composite.on_success()
    await composite.on_rate_limit(retry_after=None)
    database = DatabaseRateLimiter(str(tmp_path / "usage.db"), clock=clock)
    await database.acquire()
    assert await database.track_usage("request-1", 100, 50) > 0
    database.close()

    # The previous v2 (every method was a coroutine there).
    limiter = ShardedRateLimiter(rate=600, period=60.0, shards=4, clock=clock)
    assert (await limiter.acquire("user")).allowed
    assert (await limiter.try_acquire("user")).allowed
    reservation = await limiter.reserve("user", 1, 30.0)
    assert (await limiter.execute_reservation(reservation.id)).allowed
    assert not await limiter.cancel_reservation(reservation.id)
    await limiter.reset()
    adaptive_v2 = AdaptiveShardedRateLimiter(rate=600, initial_shards=4, clock=clock)
    assert (await adaptive_v2.acquire("user")).allowed

    # Its retry helpers.
    calls = []

    @retry_async(RetryConfig(max_attempts=2, initial_delay=0.0, jitter=False))
    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RateLimitError(retry_after=0)
        return "ok"

    assert await flaky() == "ok"
    assert await retry_with_config(asyncio.sleep, 0, config=RetryConfig()) is None
    assert issubclass(RateLimitError, PipelineError)
