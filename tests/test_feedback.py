"""Upstream feedback: ``on_rate_limit`` and ``on_success`` move the rate by AIMD under the
configured one, at once, from threads and from asyncio."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from flashcard_pipeline.rate_limiter_v2 import (
    AdaptiveShardedRateLimiter,
    ManualClock,
    ShardedRateLimiter,
)


def test_a_refusal_with_retry_after_stops_admissions_and_lowers_the_rate():
    clock = ManualClock()
    limiter = ShardedRateLimiter(rate=10, period=1.0, burst_size=10, shards=1, clock=clock)
    limiter.on_rate_limit(retry_after=2)
    assert limiter.rate == 5
    assert limiter.burst_size == 10
    admitted = []
    for _ in range(300):  # 3 s in 10 ms steps
        clock.advance(0.01)
        if limiter.try_acquire():
            admitted.append(round(clock.time(), 6))
    # Nothing for 2 s, then the bucket refills from empty at the lowered 5 per second.
    assert admitted[0] == pytest.approx(2.2)
    assert len(admitted) == 5


def test_successes_climb_back_to_the_configured_rate_and_no_further():
    limiter = ShardedRateLimiter(rate=100, period=1.0, clock=ManualClock())
    for expected in (50, 25, 12.5, 10, 10):  # halved each time, down to a tenth
        limiter.on_rate_limit()
        assert limiter.rate == pytest.approx(expected)
    for _ in range(89):
        limiter.on_success()
    assert limiter.rate == pytest.approx(99)
    for _ in range(5):
        limiter.on_success()
    assert limiter.rate == 100


def test_parameters_and_set_rate():
    limiter = ShardedRateLimiter(rate=100, period=60.0, clock=ManualClock())
    limiter.on_rate_limit(decrease=0.9, min_rate=80)
    assert limiter.rate == pytest.approx(90)
    limiter.on_rate_limit(decrease=0.5, min_rate=80)
    assert limiter.rate == 80
    limiter.on_success(increase=0.5)
    assert limiter.rate == 100
    # set_rate gives a new configured rate: feedback moves under that one.
    limiter.set_rate(40, burst_size=40)
    limiter.on_success()
    assert limiter.rate == 40
    limiter.on_rate_limit()
    assert limiter.rate == 20


def test_per_key_budgets_back_off_one_key_and_re_rate_all():
    clock = ManualClock()
    limiter = ShardedRateLimiter(rate=10, period=1.0, scope="key", clock=clock)
    limiter.on_rate_limit(retry_after=1.0, key="a")
    assert limiter.rate == 5
    assert not limiter.try_acquire("a")
    assert limiter.try_acquire("b")


def test_a_sliding_window_keeps_whole_admissions():
    limiter = ShardedRateLimiter(
        rate=3, period=1.0, algorithm="sliding_window", clock=ManualClock()
    )
    for _ in range(5):
        limiter.on_rate_limit()
    assert limiter.rate == 1


def test_feedback_from_threads_stays_within_its_bounds():
    limiter = AdaptiveShardedRateLimiter(rate=1000, period=1.0, initial_shards=4)
    rates = []

    def worker(i: int) -> None:
        for n in range(500):
            if (n + i) % 7 == 0:
                limiter.on_rate_limit()
            else:
                limiter.on_success()
            rates.append(limiter.rate)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(100 <= rate <= 1000 for rate in rates)
    assert limiter.try_acquire()


@pytest.mark.asyncio
async def test_feedback_is_awaitable():
    limiter = ShardedRateLimiter(rate=10, period=1.0, clock=ManualClock())
    await limiter.on_rate_limit(retry_after=0.5)
    assert limiter.rate == 5
    await limiter.on_success(increase=0.5)
    assert limiter.rate == 10
    await asyncio.gather(*(limiter.on_rate_limit() for _ in range(3)))
    assert limiter.rate == pytest.approx(1.25)


@pytest.mark.parametrize(
    ("call", "error", "argument"),
    [
        (lambda l: l.on_rate_limit(retry_after=-1), ValueError, "retry_after"),
        (lambda l: l.on_rate_limit(retry_after=math.nan), ValueError, "retry_after"),
        (lambda l: l.on_rate_limit(retry_after="2"), TypeError, "retry_after"),
        (lambda l: l.on_rate_limit(decrease=0), ValueError, "decrease"),
        (lambda l: l.on_rate_limit(decrease=1.5), ValueError, "decrease"),
        (lambda l: l.on_rate_limit(decrease=True), TypeError, "decrease"),
        (lambda l: l.on_rate_limit(min_rate=0), ValueError, "min_rate"),
        (lambda l: l.on_rate_limit(min_rate=11), ValueError, "min_rate"),
        (lambda l: l.on_rate_limit(key=None), TypeError, "key"),
        (lambda l: l.on_success(increase=0), ValueError, "increase"),
        (lambda l: l.on_success(increase=math.inf), ValueError, "increase"),
        (lambda l: l.on_success(increase="0.1"), TypeError, "increase"),
    ],
)
def test_bad_feedback_parameters_are_named(call, error, argument):
    limiter = ShardedRateLimiter(rate=10, period=1.0, clock=ManualClock())
    with pytest.raises(error, match=f"^{argument}: "):
        call(limiter)
    assert limiter.rate == 10
