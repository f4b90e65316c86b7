"""acquire(): waiting in threads and in asyncio (on a ManualClock, whose waits advance it
instead of sleeping), max_wait, the un-awaited acquire trap, and two short real-clock tests:
real waiting, a blocked thread not holding the GIL, and a forked child free of the parent's
waiters."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings

import pytest

from conftest import (
    SERVER_ACQUIRE_AWAITED,
    SERVER_MICROSECOND_SLOTS,
    assert_book_active,
    assert_requests_allowed,
)

from flashcard_pipeline.rate_limiter_v2 import RateLimitResult, ShardedRateLimiter

#: make_limiter's tests run on every backend (memory, Redis, Valkey); see conftest.
pytestmark = pytest.mark.conformance

ALGORITHMS = ("token_bucket", "sliding_window")


# --- threads (plain calls) ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("shards", [1, 4, 16])
@pytest.mark.server_xfail(SERVER_MICROSECOND_SLOTS, algorithm="sliding_window")
def test_blocking_acquire_waits_exactly_retry_after(clock, make_limiter, drain, shards, algorithm):
    limiter = make_limiter(10, 1.0, shards=shards, algorithm=algorithm)
    assert drain(limiter, "k") == 10
    clock.advance(0.0123)
    needed = limiter.try_acquire("k").retry_after
    expected = 0.1 - 0.0123 if algorithm == "token_bucket" else 1.0 - 0.0123
    assert needed == pytest.approx(expected, abs=1e-6)
    result = limiter.acquire("k")
    assert isinstance(result, RateLimitResult)
    assert result.allowed and result.reason is None
    assert result.waited == pytest.approx(needed, abs=1e-6)
    assert clock.monotonic() == pytest.approx(0.0123 + needed, abs=1e-6)
    # The token it waited for is taken (the window let all ten go at once, nine are left).
    assert limiter.peek("k") == pytest.approx(0 if algorithm == "token_bucket" else 9, abs=1e-9)


def test_blocking_acquire_of_several_tokens(clock, make_limiter, drain):
    limiter = make_limiter(10, 1.0, shards=4)
    drain(limiter)
    result = limiter.acquire("k", count=5)
    assert result.allowed
    assert result.waited == pytest.approx(0.5, abs=1e-6)
    assert clock.monotonic() == pytest.approx(0.5, abs=1e-6)
    assert limiter.peek() == pytest.approx(0.0, abs=1e-9)


def test_acquire_without_waiting_returns_at_once(clock, make_limiter):
    limiter = make_limiter(10, 1.0, shards=2)
    result = limiter.acquire("k", count=3)
    assert result.allowed and result.waited == 0
    assert result.tokens_remaining == pytest.approx(7.0, abs=1e-9)
    assert clock.monotonic() == 0


def test_acquire_in_threads_admits_everyone_within_the_budget(
    clock, make_limiter, drain, run_threads
):
    limiter = make_limiter(10, 1.0, shards=4)
    assert drain(limiter) == 10
    results: list[RateLimitResult] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        for call in range(5):
            result = limiter.acquire(f"user-{index}-{call}")
            with lock:
                results.append(result)

    run_threads(worker)
    assert len(results) == 20
    assert all(r.allowed for r in results)
    assert all(r.waited >= 0 for r in results)
    # 30 admissions with burst 10 at 10/s need at least two seconds of (manual) time.
    assert clock.monotonic() >= 2.0 - 1e-6
    assert_requests_allowed(limiter, 30)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("shards", [1, 4, 16])
def test_threads_deciding_with_the_gil_released_admit_exactly_the_budget(
    clock, make_limiter, run_threads, algorithm, shards
):
    # A thread's acquire decides in Rust with the GIL released, so these 4 x 250 decisions
    # really run side by side. The clock stands still and max_wait=0: exactly 100.
    limiter = make_limiter(100, 1.0, shards=shards, algorithm=algorithm)
    admitted = [0] * 4

    def worker(index: int) -> None:
        for _ in range(250):
            admitted[index] += bool(limiter.acquire(f"thread-{index}", max_wait=0))

    run_threads(worker)
    assert sum(admitted) == 100
    assert_requests_allowed(limiter, 100)
    assert clock.monotonic() == 0.0


# --- asyncio --------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("shards", [1, 4, 16])
async def test_awaited_acquire_waits_exactly_retry_after(
    clock, make_limiter, drain, shards, algorithm
):
    limiter = make_limiter(10, 1.0, shards=shards, algorithm=algorithm)
    drain(limiter, "k")
    clock.advance(0.0123)
    needed = limiter.try_acquire("k").retry_after
    result = await limiter.acquire("k")
    assert result.allowed and result.reason is None
    assert result.waited == pytest.approx(needed, abs=1e-6)
    assert clock.monotonic() == pytest.approx(0.0123 + needed, abs=1e-6)
    assert limiter.peek("k") == pytest.approx(0 if algorithm == "token_bucket" else 9, abs=1e-9)


@pytest.mark.asyncio
async def test_awaited_acquire_really_limits(clock, make_limiter):
    limiter = make_limiter(5, 1.0, shards=2, burst_size=5)
    results = [await limiter.acquire() for _ in range(10)]
    assert all(r.allowed for r in results)
    assert [r.waited > 0 for r in results] == [False] * 5 + [True] * 5
    assert clock.monotonic() >= 1.0 - 1e-9
    assert clock.monotonic() == pytest.approx(1.0, abs=1e-6)  # and no more than needed


@pytest.mark.asyncio
async def test_concurrent_awaited_acquires_really_limit(clock, make_limiter):
    limiter = make_limiter(5, 1.0, shards=4, burst_size=5)

    async def one(user: int) -> RateLimitResult:
        return await limiter.acquire(f"user-{user}")

    results = await asyncio.gather(*(one(user) for user in range(10)))
    assert all(r.allowed for r in results)
    assert clock.monotonic() >= 1.0 - 1e-9
    assert_requests_allowed(limiter, 10)


@pytest.mark.asyncio
@pytest.mark.memory_only(reason=SERVER_ACQUIRE_AWAITED)
async def test_acquire_not_awaited_in_a_loop_fails_loudly(clock, make_limiter, drain):
    limiter = make_limiter(10, 1.0, shards=2)
    # With tokens there, the plain call is a decided result (truthy, no await needed).
    immediate = limiter.acquire()
    assert isinstance(immediate, RateLimitResult) and bool(immediate) is True
    drain(limiter)
    pending = limiter.acquire()
    with pytest.raises(TypeError, match="await"):
        bool(pending)
    pending = limiter.acquire()
    with pytest.raises(TypeError, match="await"):
        if pending:  # the bug this guards against: never awaited, always "allowed"
            pytest.fail("an un-awaited acquire must not be truthy")
    assert clock.monotonic() == 0  # nothing waited
    assert limiter.peek() == 0
    clock.advance(0.1)
    assert limiter.try_acquire()  # and nothing was taken by the abandoned calls


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "attribute", ["allowed", "reason", "retry_after", "tokens_remaining", "shard_id", "waited"]
)
async def test_reading_a_result_off_an_unawaited_acquire_fails_loudly(
    clock, make_limiter, drain, attribute
):
    # The type is RateLimitResult in both forms (README typing); in a loop, the thread form
    # `limiter.acquire().allowed` must not quietly read something off the awaitable.
    limiter = make_limiter(10, 1.0, shards=2)
    drain(limiter)
    pending = limiter.acquire()
    with pytest.raises(TypeError, match=rf"\.{attribute} was read.*`await limiter\.acquire"):
        getattr(pending, attribute)
    assert_book_active(limiter, 0)  # the turn was given back
    with pytest.raises(AttributeError):
        pending.no_such_attribute  # other names stay ordinary lookups (asyncio probes cr_code)
    clock.advance(0.1)
    assert limiter.try_acquire()


# --- max_wait -------------------------------------------------------------------------


def test_max_wait_exceeded_is_returned_at_once_without_consuming(clock, make_limiter, drain):
    limiter = make_limiter(10, 1.0, shards=4)
    drain(limiter)
    clock.advance(0.2)  # two tokens back
    result = limiter.acquire("k", count=5, max_wait=0.25)
    assert not result and result.allowed is False
    assert result.reason == "max_wait_exceeded"
    assert result.retry_after == pytest.approx(0.3, abs=1e-6)  # the wait it would need
    assert result.waited == 0
    assert clock.monotonic() == pytest.approx(0.2, abs=1e-9)
    assert limiter.peek() == pytest.approx(2.0, abs=1e-9)  # nothing taken
    clock.advance(result.retry_after)
    assert limiter.try_acquire("k", count=5)


def test_max_wait_equal_to_the_needed_wait_is_enough(clock, make_limiter, drain):
    limiter = make_limiter(10, 1.0, shards=1)
    drain(limiter)
    result = limiter.acquire(max_wait=0.1)
    assert result.allowed and result.waited == pytest.approx(0.1, abs=1e-6)


def test_max_wait_zero_only_takes_what_is_there(clock, make_limiter, drain):
    limiter = make_limiter(10, 1.0, shards=2)
    assert limiter.acquire(max_wait=0).allowed
    drain(limiter)
    result = limiter.acquire(max_wait=0)
    assert result.reason == "max_wait_exceeded"
    assert result.retry_after == pytest.approx(0.1, abs=1e-6)
    assert clock.monotonic() == 0


def test_constructor_max_wait_is_the_default_and_a_call_overrides_it(clock, make_limiter, drain):
    limiter = make_limiter(10, 1.0, shards=2, max_wait=0.05)
    assert limiter.max_wait == 0.05
    drain(limiter)
    result = limiter.acquire()
    assert result.reason == "max_wait_exceeded"
    assert result.retry_after == pytest.approx(0.1, abs=1e-6)
    assert clock.monotonic() == 0
    result = limiter.acquire(max_wait=1.0)
    assert result.allowed and result.waited == pytest.approx(0.1, abs=1e-6)


@pytest.mark.asyncio
async def test_awaited_max_wait_exceeded_is_returned_at_once(clock, make_limiter, drain):
    limiter = make_limiter(10, 1.0, shards=4, max_wait=0.05)
    drain(limiter)
    result = await limiter.acquire("k", count=3)
    assert result.reason == "max_wait_exceeded"
    assert result.retry_after == pytest.approx(0.3, abs=1e-6)
    assert result.waited == 0
    assert clock.monotonic() == 0
    assert limiter.peek() == 0
    result = await limiter.acquire("k", count=3, max_wait=0.3)
    assert result.allowed and result.waited == pytest.approx(0.3, abs=1e-6)


@pytest.mark.asyncio
@pytest.mark.server_xfail(SERVER_MICROSECOND_SLOTS)
async def test_awaited_sliding_window_max_wait(clock, make_limiter, drain):
    limiter = make_limiter(3, 1.0, shards=2, algorithm="sliding_window")
    drain(limiter)
    clock.advance(0.4)
    result = await limiter.acquire(max_wait=0.5)
    assert result.reason == "max_wait_exceeded"
    assert result.retry_after == pytest.approx(0.6, abs=1e-6)
    result = await limiter.acquire(max_wait=0.7)
    assert result.allowed and result.waited == pytest.approx(0.6, abs=1e-6)


# --- the real clock (kept short) ------------------------------------------------------


def test_real_clock_two_acquires_take_at_least_one_emission_interval():
    limiter = ShardedRateLimiter(rate=20, period=1.0, burst_size=1, shards=1)
    started = time.perf_counter()
    first = limiter.acquire()
    second = limiter.acquire()
    elapsed = time.perf_counter() - started
    assert first.allowed and second.allowed
    assert elapsed >= 0.045
    assert elapsed < 0.45
    assert second.waited >= 0.045


@pytest.mark.asyncio
async def test_real_clock_awaited_acquires_take_at_least_one_emission_interval():
    limiter = ShardedRateLimiter(rate=20, period=1.0, burst_size=1, shards=1)
    started = time.perf_counter()
    results = [await limiter.acquire() for _ in range(2)]
    elapsed = time.perf_counter() - started
    assert all(r.allowed for r in results)
    assert 0.045 <= elapsed < 0.45


def test_a_thread_blocked_in_acquire_does_not_hold_the_gil():
    limiter = ShardedRateLimiter(rate=5, period=1.0, burst_size=1, shards=1)  # 200 ms apart
    assert limiter.try_acquire()
    entering = threading.Event()
    outcome: list[RateLimitResult] = []

    def blocked() -> None:
        entering.set()
        outcome.append(limiter.acquire())

    thread = threading.Thread(target=blocked)
    thread.start()
    entering.wait(timeout=5)
    time.sleep(0.02)  # let it get into the wait
    counted = 0
    started = time.perf_counter()
    while thread.is_alive():
        counted += 1
    waited_here = time.perf_counter() - started
    thread.join()
    assert outcome and outcome[0].allowed
    assert outcome[0].waited >= 0.15
    # This thread kept running Python the whole time the other one waited; with the GIL
    # held by the waiter it would have been stuck until the wait ended.
    assert waited_here >= 0.1
    assert counted >= 10_000


@pytest.mark.asyncio
async def test_acquires_can_be_gathered(clock, make_limiter):
    limiter = make_limiter(10, 1.0, shards=2)
    results = await asyncio.gather(*(limiter.acquire(f"user-{i}") for i in range(3)))
    assert all(r.allowed for r in results)


# --- fork --------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_holds_no_turn_of_the_parents_waiters():
    limiter = ShardedRateLimiter(rate=50, period=1.0, burst_size=10, shards=2)
    for _ in range(10):
        assert limiter.try_acquire()
    outcome: list[RateLimitResult] = []
    # Its turn waits 200 ms for 10 tokens; queued, it holds back every token until then.
    waiter = threading.Thread(target=lambda: outcome.append(limiter.acquire(count=10)))
    waiter.start()
    deadline = time.monotonic() + 5
    while limiter.get_status()["reservations"]["active"] == 0:  # the waiter has booked its turn
        assert time.monotonic() < deadline
        time.sleep(0.001)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        child = os.fork()
    if child == 0:
        # The waiter thread did not come along: its turn must not hold the child's tokens.
        code = 1
        try:
            time.sleep(0.02)  # one token of refill
            if limiter.get_status()["reservations"]["active"] == 0 and limiter.peek() > 0:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    waiter.join(timeout=5)
    assert outcome and outcome[0].allowed  # the parent's waiter is served as before
    assert_book_active(limiter, 0)
