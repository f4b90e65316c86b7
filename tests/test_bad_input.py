"""SPEC I7: every bad argument gets a clear ValueError / TypeError naming the argument,
never a panic, a hang or a silently wrong limiter; a count above the burst is refused at
once with reason "exceeds_capacity" (it can never succeed)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from flashcard_pipeline.rate_limiter_v2 import ManualClock, RateLimitResult, ShardedRateLimiter

L = ShardedRateLimiter

@dataclass(frozen=True)
class Raises:
    exception: type[BaseException]
    argument: str


@dataclass(frozen=True)
class Refused:
    reason: str


def case(
    call: Callable[[ShardedRateLimiter, ManualClock], Any],
    expect: Raises | Refused,
    id: str,
) -> Any:
    return pytest.param(call, expect, id=id)


CASES = [
    # rate
    case(lambda lim, c: L(0), Raises(ValueError, "rate"), "rate=0"),
    case(lambda lim, c: L(-5), Raises(ValueError, "rate"), "rate<0"),
    case(lambda lim, c: L(math.nan), Raises(ValueError, "rate"), "rate=nan"),
    case(lambda lim, c: L(math.inf), Raises(ValueError, "rate"), "rate=inf"),
    case(lambda lim, c: L(-math.inf), Raises(ValueError, "rate"), "rate=-inf"),
    case(lambda lim, c: L(None), Raises(TypeError, "rate"), "rate=None"),
    case(lambda lim, c: L(), Raises(TypeError, "rate"), "rate-missing"),
    case(lambda lim, c: L("10"), Raises(TypeError, "rate"), "rate=str"),
    case(lambda lim, c: lim.set_rate(0), Raises(ValueError, "rate"), "set_rate(rate=0)"),
    case(lambda lim, c: lim.set_rate(math.nan), Raises(ValueError, "rate"), "set_rate(rate=nan)"),
    case(lambda lim, c: L(True), Raises(TypeError, "rate"), "rate=True"),
    # period
    case(lambda lim, c: L(10, 0), Raises(ValueError, "period"), "period=0"),
    case(lambda lim, c: L(10, -1.0), Raises(ValueError, "period"), "period<0"),
    case(lambda lim, c: L(10, math.nan), Raises(ValueError, "period"), "period=nan"),
    case(lambda lim, c: L(10, math.inf), Raises(ValueError, "period"), "period=inf"),
    case(
        lambda lim, c: lim.set_rate(10, period=0), Raises(ValueError, "period"), "set_rate(period=0)"
    ),
    # burst_size
    case(lambda lim, c: L(10, burst_size=0), Raises(ValueError, "burst_size"), "burst=0"),
    case(lambda lim, c: L(10, burst_size=0.5), Raises(ValueError, "burst_size"), "burst=0.5"),
    case(lambda lim, c: L(10, burst_size=-3), Raises(ValueError, "burst_size"), "burst<0"),
    case(lambda lim, c: L(10, burst_size=math.nan), Raises(ValueError, "burst_size"), "burst=nan"),
    case(lambda lim, c: L(10, burst_size=math.inf), Raises(ValueError, "burst_size"), "burst=inf"),
    case(
        lambda lim, c: lim.set_rate(10, burst_size=0),
        Raises(ValueError, "burst_size"),
        "set_rate(burst=0)",
    ),
    # count
    case(lambda lim, c: lim.try_acquire(count=0), Raises(ValueError, "count"), "count=0"),
    case(lambda lim, c: lim.try_acquire(count=-1), Raises(ValueError, "count"), "count=-1"),
    case(lambda lim, c: lim.acquire(count=0), Raises(ValueError, "count"), "acquire(count=0)"),
    case(lambda lim, c: lim.acquire(count=-1), Raises(ValueError, "count"), "acquire(count=-1)"),
    case(
        lambda lim, c: lim.try_acquire(count=1.5),
        Raises(TypeError, "count"),
        "count=1.5",
    ),
    case(
        lambda lim, c: lim.try_acquire(count=2.0),
        Raises(TypeError, "count"),
        "count=2.0",
    ),
    case(
        lambda lim, c: lim.acquire(count=2.0),
        Raises(TypeError, "count"),
        "acquire(count=2.0)",
    ),
    case(lambda lim, c: lim.try_acquire(count=True), Raises(TypeError, "count"), "count=True"),
    case(lambda lim, c: L(10, shards=True), Raises(TypeError, "shards"), "shards=True"),
    case(lambda lim, c: L(10, burst_size=True), Raises(TypeError, "burst_size"), "burst=True"),
    case(lambda lim, c: c.advance(2e10), Raises(ValueError, "seconds"), "advance past 2**64 ns"),
    # count above the burst: refused at once, never an exception, never a wait
    case(lambda lim, c: lim.try_acquire(count=11), Refused("exceeds_capacity"), "count>burst"),
    case(lambda lim, c: lim.acquire(count=11), Refused("exceeds_capacity"), "acquire(count>burst)"),
    case(
        lambda lim, c: lim.try_acquire(count=2**63 - 1),
        Refused("exceeds_capacity"),
        "count=2**63-1",
    ),
    case(
        lambda lim, c: lim.try_acquire(count=2**64),
        Refused("exceeds_capacity"),
        "count=2**64",
    ),
    # max_wait
    case(lambda lim, c: L(10, max_wait=-1), Raises(ValueError, "max_wait"), "max_wait<0"),
    case(lambda lim, c: L(10, max_wait=math.nan), Raises(ValueError, "max_wait"), "max_wait=nan"),
    case(
        lambda lim, c: L(10, max_wait=-math.inf), Raises(ValueError, "max_wait"), "max_wait=-inf"
    ),
    case(lambda lim, c: lim.acquire(max_wait=-1), Raises(ValueError, "max_wait"), "acquire(mw<0)"),
    case(
        lambda lim, c: lim.acquire(max_wait=math.nan),
        Raises(ValueError, "max_wait"),
        "acquire(mw=nan)",
    ),
    # keys: strings only (left out, the key is "default"), at most 1024 characters
    case(lambda lim, c: lim.try_acquire(None), Raises(TypeError, "key"), "key=None"),
    case(lambda lim, c: lim.acquire(None), Raises(TypeError, "key"), "acquire(key=None)"),
    case(lambda lim, c: lim.reserve(None), Raises(TypeError, "key"), "reserve(key=None)"),
    case(lambda lim, c: lim.peek(None), Raises(TypeError, "key"), "peek(key=None)"),
    case(
        lambda lim, c: lim.try_acquire(42),
        Raises(TypeError, "key"),
        "key=int",
    ),
    case(
        lambda lim, c: lim.try_acquire(b"user"),
        Raises(TypeError, "key"),
        "key=bytes",
    ),
    case(
        lambda lim, c: lim.acquire(42),
        Raises(TypeError, "key"),
        "acquire(key=int)",
    ),
    case(
        lambda lim, c: lim.peek(42), Raises(TypeError, "key"), "peek(key=int)" 
    ),
    case(lambda lim, c: lim.try_acquire("k" * 1025), Raises(ValueError, "key"), "key>1024"),
    case(lambda lim, c: lim.acquire("k" * 1025), Raises(ValueError, "key"), "acquire(key>1024)"),
    case(lambda lim, c: lim.peek("k" * 5000), Raises(ValueError, "key"), "peek(key>1024)"),
    # algorithm
    case(lambda lim, c: L(10, algorithm="leaky_bucket"), Raises(ValueError, "algorithm"), "alg"),
    case(lambda lim, c: L(10, algorithm=""), Raises(ValueError, "algorithm"), "alg=''"),
    case(
        lambda lim, c: L(10, algorithm="TOKEN_BUCKET"), Raises(ValueError, "algorithm"), "alg-case"
    ),
    # shards
    case(lambda lim, c: L(10, shards=0), Raises(ValueError, "shards"), "shards=0"),
    case(lambda lim, c: L(10, shards=-1), Raises(ValueError, "shards"), "shards=-1"),
    case(lambda lim, c: L(10, shards=10**6), Raises(ValueError, "shards"), "shards=10**6"),
    case(
        lambda lim, c: L(10, shards=2.5),
        Raises(TypeError, "shards"),
        "shards=2.5",
    ),
    case(lambda lim, c: lim.set_rate(10, shards=4), Raises(TypeError, "shards"), "set_rate(shards)"),
    # clock
    case(lambda lim, c: L(10, clock=object()), Raises(TypeError, "clock"), "clock=object"),
    case(lambda lim, c: L(10, clock=time), Raises(TypeError, "clock"), "clock=time-module"),
    case(lambda lim, c: L(10, clock=1.0), Raises(TypeError, "clock"), "clock=float"),
    case(lambda lim, c: c.advance(-1), Raises(ValueError, "seconds"), "advance<0"),
    case(lambda lim, c: c.advance(math.nan), Raises(ValueError, "seconds"), "advance=nan"),
    case(lambda lim, c: ManualClock(math.inf), Raises(ValueError, "start"), "ManualClock(inf)"),
    # scope
    case(lambda lim, c: L(10, scope="user"), Raises(ValueError, "scope"), "scope=unknown"),
    case(lambda lim, c: L(10, scope="key"), Raises(NotImplementedError, "scope"), "scope=key"),
    # the sliding window: no separate burst, at least one admission per period
    case(
        lambda lim, c: L(10, algorithm="sliding_window", burst_size=20),
        Raises(ValueError, "burst_size"),
        "sliding_window+burst",
    ),
    case(
        lambda lim, c: L(0.5, algorithm="sliding_window"),
        Raises(ValueError, "rate"),
        "sliding_window rate<1",
    ),
]


@pytest.mark.parametrize(("call", "expect"), CASES)
def test_bad_input(call, expect):
    clock = ManualClock()
    limiter = ShardedRateLimiter(10, 1.0, shards=2, clock=clock)
    if isinstance(expect, Raises):
        with pytest.raises(BaseException) as info:
            call(limiter, clock)
        error = info.value
        assert type(error) is expect.exception, repr(error)
        assert expect.argument in str(error), repr(error)
    else:
        started = time.perf_counter()
        result = call(limiter, clock)
        assert time.perf_counter() - started < 0.1
        assert isinstance(result, RateLimitResult)
        assert result.allowed is False and not result
        assert result.reason == expect.reason
        assert result.retry_after is None  # it can never succeed
        assert result.waited == 0
        assert clock.monotonic() == 0  # no waiting, not even on the manual clock
    # Nothing bad happened to the limiter the test was given.
    assert (limiter.rate, limiter.period, limiter.burst_size, limiter.shards) == (10, 1.0, 10, 2)
    assert limiter.peek() == 10
    assert clock.monotonic() == 0


def test_bad_input_messages_state_the_allowed_values():
    with pytest.raises(ValueError, match=r"^algorithm: ") as info:
        L(10, algorithm="leaky_bucket")
    assert '"token_bucket"' in str(info.value) and '"sliding_window"' in str(info.value)
    assert "leaky_bucket" in str(info.value)
    with pytest.raises(ValueError, match=r"^rate: .*> 0"):
        L(-1)
    with pytest.raises(ValueError, match=r"^shards: .*1.*1024.*1000000"):
        L(10, shards=10**6)
    with pytest.raises(ValueError, match=r"^key: .*1024"):
        L(10).try_acquire("k" * 1025)
    with pytest.raises(ValueError, match=r"^count: .*>= 1"):
        L(10).try_acquire(count=0)
    with pytest.raises(ValueError, match=r"^max_wait: .*>= 0"):
        L(10, max_wait=-0.5)
    with pytest.raises(NotImplementedError, match="global"):
        L(10, scope="key")


def test_allowed_edge_values_are_accepted():
    clock = ManualClock()
    limiter = L(10, 1.0, shards=2, clock=clock, max_wait=0)
    assert limiter.try_acquire()  # the default key
    assert limiter.try_acquire("k" * 1024)  # exactly at the limit
    assert limiter.try_acquire("")
    assert limiter.try_acquire("ключ-🔑")
    assert limiter.try_acquire(count=6)
    assert not limiter.try_acquire(count=1)  # the burst of 10 is used up
    assert limiter.acquire(count=10).reason == "max_wait_exceeded"  # fits the burst, must wait
    assert L(10, shards=1024).shards == 1024
    assert L(10, burst_size=1).burst_size == 1
    assert L(10, scope="global").scope == "global"
    assert L(0.5).burst_size == 1  # under one token per period: still single tokens
    assert L(10, 1e-3).period == 1e-3
    assert L(10, 86400).period == 86400


@pytest.mark.asyncio
async def test_count_above_burst_is_refused_at_once_when_awaited():
    clock = ManualClock()
    limiter = ShardedRateLimiter(10, 1.0, shards=2, clock=clock)
    result = await limiter.acquire("k", count=11)
    assert not result and result.reason == "exceeds_capacity"
    assert result.retry_after is None
    assert clock.monotonic() == 0
    assert limiter.peek() == 10
    # Also when the budget is empty (so that a smaller count would have to wait).
    for _ in range(10):
        assert limiter.try_acquire()
    result = await limiter.acquire(count=11)
    assert result.reason == "exceeds_capacity" and clock.monotonic() == 0
    assert limiter.acquire(count=11).reason == "exceeds_capacity"  # no await needed either


@pytest.mark.asyncio
async def test_bad_input_raises_from_await_too():
    limiter = ShardedRateLimiter(10, 1.0, shards=2, clock=ManualClock())
    with pytest.raises(ValueError, match="count"):
        await limiter.acquire(count=0)
    with pytest.raises(ValueError, match="max_wait"):
        await limiter.acquire(max_wait=-1)
    with pytest.raises(ValueError, match="key"):
        await limiter.try_acquire("k" * 2000)


def test_count_above_burst_is_refused_at_once_from_an_empty_budget():
    clock = ManualClock()
    limiter = ShardedRateLimiter(10, 1.0, shards=2, clock=clock)
    for _ in range(10):
        assert limiter.try_acquire()
    started = time.perf_counter()
    result = limiter.acquire("k", count=11, max_wait=None)
    assert time.perf_counter() - started < 0.1
    assert result.reason == "exceeds_capacity" and result.retry_after is None
    assert result.waited == 0 and clock.monotonic() == 0
    # Whereas a count that fits the burst waits for it, on the manual clock.
    result = limiter.acquire("k", count=10)
    assert result.allowed and result.waited == pytest.approx(1.0, abs=1e-6)
