"""A user's own manual-clock test of the refill holds to the token: drain the burst, advance one
period and get the whole burst back; advance k emission intervals and get exactly k tokens;
wait ``retry_after`` and the token is there. The core's tests (rust/core/tests/boundary.rs) sweep
rates, periods and shard counts."""

from __future__ import annotations

import math

import pytest

from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter

#: The tests on make_limiter run on every backend (memory, Redis, Valkey); see conftest.
pytestmark = pytest.mark.conformance


def drain(limiter: ShardedRateLimiter) -> int:
    taken = 0
    while limiter.try_acquire():
        taken += 1
    return taken


@pytest.mark.parametrize("shards", [1, 4])
@pytest.mark.parametrize(
    ("rate", "period"), [(3, 1.0), (7, 1.0), (30, 1.0), (60, 60.0), (7, 3600.0), (3000, 1.0)]
)
@pytest.mark.memory_only(reason="a drain of that many tokens is as many round trips to the server", rate=3000)
def test_drain_advance_one_period_gives_the_whole_burst_back(make_limiter, clock, rate, period, shards):
    limiter = make_limiter(rate=rate, period=period, shards=shards, clock=clock)
    assert drain(limiter) == rate
    clock.advance(period)
    assert drain(limiter) == rate


@pytest.mark.parametrize("shards", [1, 4])
@pytest.mark.parametrize(
    ("rate", "period"),
    [(3, 1.0), (7, 60.0), (600, 60.0), (30_000, 1.0), (50_000, 1.0), (250_000, 1.0), (10**6, 1.0)],
)
@pytest.mark.server_xfail("the refill on Redis/Valkey is on a whole-microsecond grid: after a drain, advancing one emission interval (period / rate, not a whole number of us, e.g. 1/3 s) gives 0 tokens (memory: exactly 1), and retry_after is rounded up to the us (0.333334 for rate 3/s; memory ceil to the ns, 0.333333334)", rate=3)
@pytest.mark.server_xfail("the refill on Redis/Valkey is on a whole-microsecond grid: after a drain, advancing one emission interval (period / rate, not a whole number of us, e.g. 1/3 s) gives 0 tokens (memory: exactly 1), and retry_after is rounded up to the us (0.333334 for rate 3/s; memory ceil to the ns, 0.333333334)", rate=7)
@pytest.mark.memory_only(reason="a drain of that many tokens is as many round trips to the server", rate=30_000)
@pytest.mark.memory_only(reason="a drain of that many tokens is as many round trips to the server", rate=50_000)
@pytest.mark.memory_only(reason="a drain of that many tokens is as many round trips to the server", rate=250_000)
@pytest.mark.memory_only(reason="a drain of that many tokens is as many round trips to the server", rate=10**6)
def test_each_emission_interval_gives_exactly_one_token(make_limiter, clock, rate, period, shards):
    limiter = make_limiter(rate=rate, period=period, shards=shards, clock=clock)
    drain(limiter)
    for _ in range(min(rate, 10)):
        clock.advance(period / rate)
        assert drain(limiter) == 1


@pytest.mark.parametrize("shards", [1, 4])
@pytest.mark.parametrize("rate", [3, 7, 50_000, 10**6])
@pytest.mark.server_xfail("the refill on Redis/Valkey is on a whole-microsecond grid: after a drain, advancing one emission interval (period / rate, not a whole number of us, e.g. 1/3 s) gives 0 tokens (memory: exactly 1), and retry_after is rounded up to the us (0.333334 for rate 3/s; memory ceil to the ns, 0.333333334)", rate=3)
@pytest.mark.server_xfail("the refill on Redis/Valkey is on a whole-microsecond grid: after a drain, advancing one emission interval (period / rate, not a whole number of us, e.g. 1/3 s) gives 0 tokens (memory: exactly 1), and retry_after is rounded up to the us (0.333334 for rate 3/s; memory ceil to the ns, 0.333333334)", rate=7)
@pytest.mark.memory_only(reason="a drain of that many tokens is as many round trips to the server", rate=50_000)
@pytest.mark.memory_only(reason="a drain of that many tokens is as many round trips to the server", rate=10**6)
def test_retry_after_is_when_the_token_is_there(make_limiter, clock, rate, shards):
    limiter = make_limiter(rate=rate, period=1.0, shards=shards, clock=clock)
    drain(limiter)
    refused = limiter.try_acquire()
    assert not refused
    assert refused.retry_after is not None
    # One emission interval, rounded up to the clock's nanosecond.
    assert round(refused.retry_after * 1e9) == math.ceil(1e9 / rate)
    clock.advance(refused.retry_after)
    assert limiter.try_acquire()
