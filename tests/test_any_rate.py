"""Any rate a user needs, exactly (issue 8): bytes per second, LLM tokens per minute, requests
per year, from Python, at every shard count including the automatic one. The core's own
tests (rust/core/tests/any_rate.rs) check the bound to one part in a million."""

from __future__ import annotations

import pytest

from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter

#: The tests on make_limiter run on every backend (memory, Redis, Valkey); see conftest.
pytestmark = pytest.mark.conformance

CHUNK = 64 * 1024
YEAR = 365 * 86_400.0


def take_chunks(limiter: ShardedRateLimiter) -> int:
    taken = 0
    while limiter.try_acquire("upload", CHUNK):
        taken += 1
    return taken


@pytest.mark.parametrize("shards", [None, 1, 2, 16])
@pytest.mark.memory_only(reason="shards: on a server every shard count is the same one budget (run once, shards=None)", shards=1)
@pytest.mark.memory_only(reason="shards: on a server every shard count is the same one budget (run once, shards=None)", shards=2)
@pytest.mark.memory_only(reason="shards: on a server every shard count is the same one budget (run once, shards=None)", shards=16)
def test_a_gigabit_per_second_in_64_kib_chunks_admits_exactly_the_bound(make_limiter, clock, shards):
    limiter = make_limiter(rate=125_000_000, period=1.0, shards=shards, clock=clock)
    chunks = take_chunks(limiter)
    for _ in range(2000):
        clock.advance(0.001)
        chunks += take_chunks(limiter)
    # burst (one second of bytes) + 2 s of refill, in whole chunks
    assert chunks == (125_000_000 * 3) // CHUNK


@pytest.mark.parametrize("shards", [None, 1, 16])
def test_one_request_per_year(make_limiter, clock, shards):
    limiter = make_limiter(rate=1, period=YEAR, shards=shards, clock=clock)
    assert limiter.try_acquire() and not limiter.try_acquire()
    clock.advance(YEAR - 1)
    assert not limiter.try_acquire()
    clock.advance(1)
    assert limiter.try_acquire()


def test_a_billion_tokens_per_second_with_a_trillion_token_burst_is_accepted(make_limiter):
    limiter = make_limiter(rate=1e9, period=1.0, burst_size=1e12)
    assert limiter.try_acquire(count=10**12)
    assert not limiter.try_acquire()


def test_a_rate_beyond_the_range_names_rate():
    with pytest.raises(ValueError, match=r"^rate: at most"):
        ShardedRateLimiter(rate=1e12, period=1.0, shards=1)
    with pytest.raises(ValueError, match=r"^rate: at least"):
        ShardedRateLimiter(rate=1e-300, period=1.0)
