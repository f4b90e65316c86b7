"""SPEC I7: every bad argument gets a clear ValueError / TypeError naming the argument,
never a panic, a hang or a silently wrong limiter; a count above the burst is refused at
once with reason "exceeds_capacity" (it can never succeed).

One table per API: ``rate_limiter_v2`` (``CASES``), the environment variables
(``ENV_CASES``), the compatibility shim (``SHIM_CASES``) and ``retry`` (``RETRY_CASES``).
Every row checks the exception's type and that its message starts with the argument's name
as the caller wrote it (for a variable: its name and its text). The token bucket's range of
rates and bursts (1e300, 1e-300, ...) is the core's and is tested there."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from flashcard_pipeline import retry as retry_module
from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline.rate_limiter import AdaptiveRateLimiter, CompositeLimiter, RateLimiter
from flashcard_pipeline.rate_limiter_v2 import (
    AdaptiveShardedRateLimiter,
    ManualClock,
    RateLimitResult,
    ShardedRateLimiter,
)
from flashcard_pipeline.retry import retry_on_rate_limit

L = ShardedRateLimiter
run = asyncio.run  # the shim's coroutines, in a row's lambda
LONG = "k" * 100_000  # an oversized string

@dataclass(frozen=True)
class Raises:
    exception: type[BaseException]
    argument: str


@dataclass(frozen=True)
class Refused:
    reason: str


def case(call: Callable[..., Any], expect: Raises | Refused, id: str) -> Any:
    return pytest.param(call, expect, id=id)


def raises_naming(call: Callable[[], Any], expect: Raises) -> BaseException:
    """Runs ``call``; it must raise ``expect.exception`` (exactly) with a message that starts
    with ``"<expect.argument>: "``."""
    with pytest.raises(BaseException) as info:
        call()
    error = info.value
    assert type(error) is expect.exception, repr(error)
    assert str(error).startswith(f"{expect.argument}: "), repr(error)
    return error


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
    # too large for any burst: named as written, not as the rate it would price
    case(lambda lim, c: L(10, burst_size=2**63), Raises(ValueError, "burst_size"), "burst=2**63"),
    case(lambda lim, c: L(10, burst_size=1e300), Raises(ValueError, "burst_size"), "burst=1e300"),
    case(
        lambda lim, c: lim.set_rate(10, burst_size=2**63),
        Raises(ValueError, "burst_size"),
        "set_rate(burst=2**63)",
    ),
    # extreme rates and periods, at construction and at run time
    case(lambda lim, c: L(1e300), Raises(ValueError, "rate"), "rate=1e300"),
    case(lambda lim, c: L(2**63), Raises(ValueError, "rate"), "rate=2**63"),
    case(lambda lim, c: L(1e-300), Raises(ValueError, "rate"), "rate=1e-300"),
    case(lambda lim, c: L(10, 1e300), Raises(ValueError, "period"), "period=1e300"),
    case(lambda lim, c: L(10, 2**63), Raises(ValueError, "period"), "period=2**63"),
    case(lambda lim, c: L(10, 1e-300), Raises(ValueError, "period"), "period=1e-300"),
    case(lambda lim, c: lim.set_rate(1e-300), Raises(ValueError, "rate"), "set_rate(rate=1e-300)"),
    case(lambda lim, c: lim.set_rate(1e300), Raises(ValueError, "rate"), "set_rate(rate=1e300)"),
    case(
        lambda lim, c: lim.set_rate(10, period=1e300),
        Raises(ValueError, "period"),
        "set_rate(period=1e300)",
    ),
    case(lambda lim, c: lim.back_off(2**63), Raises(ValueError, "seconds"), "back_off(2**63)"),
    case(lambda lim, c: lim.back_off(-1), Raises(ValueError, "seconds"), "back_off(-1)"),
    case(
        lambda lim, c: L(requests_per_minute=600, requests_per_hour=36000, burst_size=2**63),
        Raises(ValueError, "burst_size"),
        "rpm+rph+burst=2**63",
    ),
    case(
        lambda lim, c: L(requests_per_minute=1e-300),
        Raises(ValueError, "requests_per_minute"),
        "rpm=1e-300",
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
    # clock
    case(lambda lim, c: L(10, clock=object()), Raises(TypeError, "clock"), "clock=object"),
    case(lambda lim, c: L(10, clock=time), Raises(TypeError, "clock"), "clock=time-module"),
    case(lambda lim, c: L(10, clock=1.0), Raises(TypeError, "clock"), "clock=float"),
    case(lambda lim, c: c.advance(-1), Raises(ValueError, "seconds"), "advance<0"),
    case(lambda lim, c: c.advance(math.nan), Raises(ValueError, "seconds"), "advance=nan"),
    case(lambda lim, c: ManualClock(math.inf), Raises(ValueError, "start"), "ManualClock(inf)"),
    # scope
    case(lambda lim, c: L(10, scope="user"), Raises(ValueError, "scope"), "scope=unknown"),
    case(lambda lim, c: L(10, max_keys=5), Raises(ValueError, "max_keys"), "max_keys=global"),
    case(lambda lim, c: L(10, scope="key", max_keys=0), Raises(ValueError, "max_keys"), "max_keys=0"),
    case(lambda lim, c: L(10, scope="key", max_keys=1.5), Raises(TypeError, "max_keys"), "max_keys=float"),
    case(lambda lim, c: L(10, scope="key", max_keys=True), Raises(TypeError, "max_keys"), "max_keys=bool"),
    case(lambda lim, c: L(10, scope="key").try_acquire(None), Raises(TypeError, "key"), "key=None keyed"),
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
    # the rest of the constructor: None, bools, NaN, inf and wrong types everywhere
    case(lambda lim, c: L(False), Raises(TypeError, "rate"), "rate=False"),
    case(lambda lim, c: L([10]), Raises(TypeError, "rate"), "rate=list"),
    case(lambda lim, c: L(10, True), Raises(TypeError, "period"), "period=True"),
    case(lambda lim, c: L(10, "60"), Raises(TypeError, "period"), "period=str"),
    case(lambda lim, c: L(10, -math.inf), Raises(ValueError, "period"), "period=-inf"),
    case(lambda lim, c: L(10, burst_size="5"), Raises(TypeError, "burst_size"), "burst=str"),
    case(lambda lim, c: L(10, burst_size=-math.inf), Raises(ValueError, "burst_size"), "burst=-inf"),
    case(lambda lim, c: L(10, shards="4"), Raises(TypeError, "shards"), "shards=str"),
    case(lambda lim, c: L(10, shards=math.nan), Raises(TypeError, "shards"), "shards=nan"),
    case(lambda lim, c: L(10, shards=math.inf), Raises(TypeError, "shards"), "shards=inf"),
    case(lambda lim, c: L(10, shards=1e300), Raises(TypeError, "shards"), "shards=1e300"),
    case(lambda lim, c: L(10, shards=2**64), Raises(ValueError, "shards"), "shards=2**64"),
    case(lambda lim, c: L(10, algorithm=1), Raises(TypeError, "algorithm"), "alg=int"),
    case(lambda lim, c: L(10, algorithm=True), Raises(TypeError, "algorithm"), "alg=True"),
    case(lambda lim, c: L(10, algorithm=LONG), Raises(ValueError, "algorithm"), "alg=long"),
    case(lambda lim, c: L(10, scope=1), Raises(TypeError, "scope"), "scope=int"),
    case(lambda lim, c: L(10, scope=LONG), Raises(ValueError, "scope"), "scope=long"),
    case(lambda lim, c: L(10, max_wait=True), Raises(TypeError, "max_wait"), "max_wait=True"),
    case(lambda lim, c: L(10, max_wait="1"), Raises(TypeError, "max_wait"), "max_wait=str"),
    case(lambda lim, c: L(10, clock=True), Raises(TypeError, "clock"), "clock=True"),
    case(lambda lim, c: L(10, reservation_ttl=0), Raises(ValueError, "reservation_ttl"), "ttl=0"),
    case(lambda lim, c: L(10, reservation_ttl=-1), Raises(ValueError, "reservation_ttl"), "ttl<0"),
    case(
        lambda lim, c: L(10, reservation_ttl=math.nan),
        Raises(ValueError, "reservation_ttl"),
        "ttl=nan",
    ),
    case(
        lambda lim, c: L(10, reservation_ttl=math.inf),
        Raises(ValueError, "reservation_ttl"),
        "ttl=inf",
    ),
    case(
        lambda lim, c: L(10, reservation_ttl=1e300),
        Raises(ValueError, "reservation_ttl"),
        "ttl=1e300",
    ),
    case(
        lambda lim, c: L(10, reservation_ttl=True), Raises(TypeError, "reservation_ttl"), "ttl=True"
    ),
    case(lambda lim, c: L(10, reservation_grace=-1), Raises(ValueError, "reservation_grace"), "grace<0"),
    case(
        lambda lim, c: L(10, reservation_grace=math.nan),
        Raises(ValueError, "reservation_grace"),
        "grace=nan",
    ),
    case(
        lambda lim, c: L(10, reservation_grace=math.inf),
        Raises(ValueError, "reservation_grace"),
        "grace=inf",
    ),
    case(
        lambda lim, c: L(10, reservation_grace=True),
        Raises(TypeError, "reservation_grace"),
        "grace=True",
    ),
    case(
        lambda lim, c: L(10, reservation_grace="0.25"),
        Raises(TypeError, "reservation_grace"),
        "grace=str",
    ),
    case(
        lambda lim, c: L(10, reservation_ttl="60"), Raises(TypeError, "reservation_ttl"), "ttl=str"
    ),
    case(
        lambda lim, c: L(10, max_reservations=0),
        Raises(ValueError, "max_reservations"),
        "max_reservations=0",
    ),
    case(
        lambda lim, c: L(10, max_reservations=-1),
        Raises(ValueError, "max_reservations"),
        "max_reservations<0",
    ),
    case(
        lambda lim, c: L(10, max_reservations=True),
        Raises(TypeError, "max_reservations"),
        "max_reservations=True",
    ),
    case(
        lambda lim, c: L(10, max_reservations=1e300),
        Raises(TypeError, "max_reservations"),
        "max_reservations=1e300",
    ),
    case(
        lambda lim, c: L(10, max_reservations=math.nan),
        Raises(TypeError, "max_reservations"),
        "max_reservations=nan",
    ),
    # the old keywords: errors name them, not the rate they become
    case(
        lambda lim, c: L(requests_per_minute=0),
        Raises(ValueError, "requests_per_minute"),
        "rpm=0",
    ),
    case(
        lambda lim, c: L(requests_per_minute=-1),
        Raises(ValueError, "requests_per_minute"),
        "rpm<0",
    ),
    case(
        lambda lim, c: L(requests_per_minute=math.nan),
        Raises(ValueError, "requests_per_minute"),
        "rpm=nan",
    ),
    case(
        lambda lim, c: L(requests_per_minute=math.inf),
        Raises(ValueError, "requests_per_minute"),
        "rpm=inf",
    ),
    case(
        lambda lim, c: L(requests_per_minute=True),
        Raises(TypeError, "requests_per_minute"),
        "rpm=True",
    ),
    case(
        lambda lim, c: L(requests_per_minute="600"),
        Raises(TypeError, "requests_per_minute"),
        "rpm=str",
    ),
    case(
        lambda lim, c: L(requests_per_hour=-1), Raises(ValueError, "requests_per_hour"), "rph<0"
    ),
    case(lambda lim, c: L(requests_per_hour=0), Raises(ValueError, "requests_per_hour"), "rph=0"),
    case(
        lambda lim, c: L(requests_per_hour=math.nan),
        Raises(ValueError, "requests_per_hour"),
        "rph=nan",
    ),
    case(
        lambda lim, c: L(requests_per_hour=False),
        Raises(TypeError, "requests_per_hour"),
        "rph=False",
    ),
    case(
        lambda lim, c: L(requests_per_minute=600, requests_per_hour=-1),
        Raises(ValueError, "requests_per_hour"),
        "rpm+rph<0",
    ),
    case(
        lambda lim, c: L(requests_per_minute=600, requests_per_hour=math.inf),
        Raises(ValueError, "requests_per_hour"),
        "rpm+rph=inf",
    ),
    case(
        lambda lim, c: L(requests_per_minute=600, requests_per_hour=True),
        Raises(TypeError, "requests_per_hour"),
        "rpm+rph=True",
    ),
    case(
        lambda lim, c: L(requests_per_minute=600, requests_per_hour=0.5),
        Raises(ValueError, "requests_per_hour"),
        "rpm+rph=0.5",
    ),
    case(
        lambda lim, c: L(requests_per_minute=0, requests_per_hour=36000),
        Raises(ValueError, "requests_per_minute"),
        "rpm=0+rph",
    ),
    case(
        lambda lim, c: L(requests_per_minute=600, burst_size=0),
        Raises(ValueError, "burst_size"),
        "rpm+burst=0",
    ),
    case(
        lambda lim, c: L(10, requests_per_minute=600), Raises(TypeError, "rate"), "rate+rpm"
    ),
    # AdaptiveShardedRateLimiter's own arguments
    case(
        lambda lim, c: AdaptiveShardedRateLimiter(10, initial_shards=0),
        Raises(ValueError, "initial_shards"),
        "initial_shards=0",
    ),
    case(
        lambda lim, c: AdaptiveShardedRateLimiter(10, initial_shards=True),
        Raises(TypeError, "initial_shards"),
        "initial_shards=True",
    ),
    case(
        lambda lim, c: AdaptiveShardedRateLimiter(10, initial_shards=2.5),
        Raises(TypeError, "initial_shards"),
        "initial_shards=2.5",
    ),
    *(
        case(
            lambda lim, c, name=name, value=value: AdaptiveShardedRateLimiter(10, **{name: value}),
            Raises(exception, name),
            f"{name}={value!r}",
        )
        for name in ("rebalance_threshold", "rebalance_interval")
        for value, exception in (
            (0, ValueError),
            (-1, ValueError),
            (math.nan, ValueError),
            (math.inf, ValueError),
            (True, TypeError),
            (None, TypeError),
            ("0.3", TypeError),
        )
    ),
    # methods: the rest of None, bools, NaN, inf and wrong types
    case(lambda lim, c: lim.try_acquire(count=None), Raises(TypeError, "count"), "count=None"),
    case(lambda lim, c: lim.try_acquire(count=math.nan), Raises(TypeError, "count"), "count=nan"),
    case(lambda lim, c: lim.try_acquire(count=math.inf), Raises(TypeError, "count"), "count=inf"),
    case(lambda lim, c: lim.try_acquire(count=1e300), Raises(TypeError, "count"), "count=1e300"),
    case(lambda lim, c: lim.try_acquire(count="1"), Raises(TypeError, "count"), "count=str"),
    case(lambda lim, c: lim.acquire(count=True), Raises(TypeError, "count"), "acquire(count=True)"),
    case(lambda lim, c: lim.acquire(max_wait=True), Raises(TypeError, "max_wait"), "acquire(mw=T)"),
    case(
        lambda lim, c: lim.acquire(max_wait=-math.inf),
        Raises(ValueError, "max_wait"),
        "acquire(mw=-inf)",
    ),
    case(lambda lim, c: lim.acquire(max_wait="1"), Raises(TypeError, "max_wait"), "acquire(mw=str)"),
    case(lambda lim, c: lim.reserve(count=0), Raises(ValueError, "count"), "reserve(count=0)"),
    case(lambda lim, c: lim.reserve(count=True), Raises(TypeError, "count"), "reserve(count=True)"),
    case(lambda lim, c: lim.reserve(max_wait=-1), Raises(ValueError, "max_wait"), "reserve(mw<0)"),
    case(
        lambda lim, c: lim.reserve(max_wait=math.nan),
        Raises(ValueError, "max_wait"),
        "reserve(mw=nan)",
    ),
    case(lambda lim, c: lim.reserve(LONG), Raises(ValueError, "key"), "reserve(key>1024)"),
    case(
        lambda lim, c: lim.execute_reservation(None),
        Raises(TypeError, "reservation_id"),
        "execute(None)",
    ),
    case(
        lambda lim, c: lim.execute_reservation(1),
        Raises(TypeError, "reservation_id"),
        "execute(int)",
    ),
    case(
        lambda lim, c: lim.execute_reservation(LONG),
        Refused("unknown_reservation"),
        "execute(long id)",
    ),
    case(
        lambda lim, c: lim.cancel_reservation(None),
        Raises(TypeError, "reservation_id"),
        "cancel(None)",
    ),
    case(
        lambda lim, c: lim.cancel_reservation(b"id"),
        Raises(TypeError, "reservation_id"),
        "cancel(bytes)",
    ),
    case(lambda lim, c: lim.set_rate(None), Raises(TypeError, "rate"), "set_rate(rate=None)"),
    case(lambda lim, c: lim.set_rate(True), Raises(TypeError, "rate"), "set_rate(rate=True)"),
    case(lambda lim, c: lim.set_rate(math.inf), Raises(ValueError, "rate"), "set_rate(rate=inf)"),
    case(lambda lim, c: lim.set_rate(-1), Raises(ValueError, "rate"), "set_rate(rate<0)"),
    case(lambda lim, c: lim.set_rate("10"), Raises(TypeError, "rate"), "set_rate(rate=str)"),
    case(
        lambda lim, c: lim.set_rate(10, period=math.nan),
        Raises(ValueError, "period"),
        "set_rate(period=nan)",
    ),
    case(
        lambda lim, c: lim.set_rate(10, period=True),
        Raises(TypeError, "period"),
        "set_rate(period=True)",
    ),
    case(
        lambda lim, c: lim.set_rate(10, burst_size=math.inf),
        Raises(ValueError, "burst_size"),
        "set_rate(burst=inf)",
    ),
    case(
        lambda lim, c: lim.set_rate(10, burst_size=False),
        Raises(TypeError, "burst_size"),
        "set_rate(burst=False)",
    ),
    case(lambda lim, c: lim.peek(b"k"), Raises(TypeError, "key"), "peek(key=bytes)"),
    # ManualClock: a step must be a number that keeps the clock in range
    case(lambda lim, c: c.advance(1e300), Raises(ValueError, "seconds"), "advance=1e300"),
    case(lambda lim, c: c.advance(math.inf), Raises(ValueError, "seconds"), "advance=inf"),
    case(lambda lim, c: c.advance(-math.inf), Raises(ValueError, "seconds"), "advance=-inf"),
    case(lambda lim, c: c.advance(True), Raises(TypeError, "seconds"), "advance=True"),
    case(lambda lim, c: c.advance(None), Raises(TypeError, "seconds"), "advance=None"),
    case(lambda lim, c: c.advance("1"), Raises(TypeError, "seconds"), "advance=str"),
    case(lambda lim, c: ManualClock(math.nan), Raises(ValueError, "start"), "ManualClock(nan)"),
    case(lambda lim, c: ManualClock(-math.inf), Raises(ValueError, "start"), "ManualClock(-inf)"),
    case(lambda lim, c: ManualClock(True), Raises(TypeError, "start"), "ManualClock(True)"),
    case(lambda lim, c: ManualClock(None), Raises(TypeError, "start"), "ManualClock(None)"),
    case(lambda lim, c: ManualClock("0"), Raises(TypeError, "start"), "ManualClock(str)"),
]


@pytest.mark.parametrize(("call", "expect"), CASES)
def test_bad_input(call, expect):
    clock = ManualClock()
    limiter = ShardedRateLimiter(10, 1.0, shards=2, clock=clock)
    if isinstance(expect, Raises):
        raises_naming(lambda: call(limiter, clock), expect)
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
    with pytest.raises(ValueError, match=r"^max_keys: .*scope=\"key\""):
        L(10, max_keys=10)
    with pytest.raises(TypeError, match="shards"):  # fixed for the limiter's life
        L(10).set_rate(10, shards=4)
    with pytest.raises(ValueError, match=r"^rebalance_threshold: must be a finite number > 0"):
        AdaptiveShardedRateLimiter(10, rebalance_threshold=0)
    with pytest.raises(ValueError, match=r"^requests_per_minute: must be a finite number > 0"):
        RateLimiter(requests_per_minute=math.inf)
    with pytest.raises(ValueError, match=r"^jitter: must be a finite number >= 0 and <= 1"):
        retry_on_rate_limit(jitter=2)


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
    # None for an option with a default means that default (key and rate are never None).
    chosen = L(10, None, algorithm=None, scope=None, reservation_ttl=None, max_reservations=None)
    assert (chosen.period, chosen.algorithm, chosen.scope) == (60.0, "token_bucket", "global")
    assert L(10, max_wait=math.inf).max_wait == math.inf  # waits as long as needed


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


# --- environment variables: the message names the variable and shows its text -------------

ENV_CASES = [
    pytest.param(variable, raw, make, id=f"{variable}={raw!r} {make.__name__}")
    for variable, raw, make in [
        *(
            (variable, raw, ShardedRateLimiter.from_env)
            for variable, raw in [
                ("RATE_LIMIT_RATE", "abc"),
                ("RATE_LIMIT_RATE", "0"),
                ("RATE_LIMIT_RATE", "-1"),
                ("RATE_LIMIT_RATE", "nan"),
                ("RATE_LIMIT_RATE", "inf"),
                ("RATE_LIMIT_RATE", "true"),
                ("RATE_LIMIT_SHARDS", "0"),
                ("RATE_LIMIT_SHARDS", "2.5"),
                ("RATE_LIMIT_SHARDS", "-4"),
                ("RATE_LIMIT_SHARDS", "1e300"),
                ("RATE_LIMIT_SHARDS", "many"),
                ("BURST_SIZE", "0.5"),
                ("BURST_SIZE", "nan"),
                ("BURST_SIZE", "-inf"),
                ("BURST_SIZE", "twenty"),
                ("REQUESTS_PER_MINUTE", "0"),
                ("REQUESTS_PER_MINUTE", "nan"),
                ("REQUESTS_PER_MINUTE", "x" * 10_000),
                ("REQUESTS_PER_HOUR", "-1"),
                ("REQUESTS_PER_HOUR", "inf"),
                ("BURST_SIZE", "9" * 30),
                ("RATE_LIMIT_PERIOD", "1e300"),
                ("RATE_LIMIT_PERIOD", "0"),
            ]
        ),
        ("BURST_SIZE", "9" * 30, lambda: ShardedRateLimiter(requests_per_minute=600)),
        *(
            (variable, raw, make)
            for make in (RateLimiter, AdaptiveRateLimiter, CompositeLimiter)
            for variable, raw in [
                ("REQUESTS_PER_MINUTE", "0"),
                ("REQUESTS_PER_MINUTE", "inf"),
                ("REQUESTS_PER_HOUR", "nan"),
                ("REQUESTS_PER_HOUR", "0.5"),
                ("BURST_SIZE", "0.5"),
                ("BURST_SIZE", "-3"),
                ("BURST_SIZE", "twenty"),
            ]
        ),
        *(
            (prefix + name, raw, CompositeLimiter)
            for prefix in ("COST_", "STAGE1_", "STAGE2_")
            for name, raw in [
                ("REQUESTS_PER_MINUTE", "-5"),
                ("REQUESTS_PER_HOUR", "inf"),
                ("BURST_SIZE", "0.5"),
                ("BURST_SIZE", "lots"),
            ]
        ),
        ("BURST_SIZE", "0", lambda: ShardedRateLimiter(requests_per_minute=600)),
    ]
]


@pytest.mark.usefixtures("clean_rate_env")
@pytest.mark.parametrize(("variable", "raw", "make"), ENV_CASES)
def test_bad_environment_variable(monkeypatch, variable, raw, make):
    if variable in ("RATE_LIMIT_SHARDS", "RATE_LIMIT_PERIOD"):
        monkeypatch.setenv("RATE_LIMIT_RATE", "600")  # shards and period go with a rate
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ValueError) as info:
        make()
    assert type(info.value) is ValueError
    assert str(info.value).startswith(f"{variable}={raw!r}: "), repr(info.value)


@pytest.mark.usefixtures("clean_rate_env")
def test_a_value_is_named_where_it_came_from(monkeypatch):
    monkeypatch.setenv("BURST_SIZE", "0.5")
    monkeypatch.setenv("RATE_LIMIT_RATE", "600")
    with pytest.raises(ValueError, match=r"^BURST_SIZE='0.5': "):
        ShardedRateLimiter.from_env()
    with pytest.raises(ValueError, match=r"^burst_size: .*got 0$"):  # the argument wins
        ShardedRateLimiter.from_env(burst_size=0)
    with pytest.raises(ValueError, match=r"^BURST_SIZE='0.5': "):
        RateLimiter()
    with pytest.raises(ValueError, match=r"^burst_size: .*got 0$"):
        RateLimiter(burst_size=0)


# --- the compatibility shim ------------------------------------------------------------------

A = AdaptiveRateLimiter


def bad_numbers(argument: str, call: Callable[[Any], Any], zero: bool = True) -> list[Any]:
    """Rows for one number argument: None, bools, NaN, infinities, 0, negative, a str."""
    values: list[tuple[Any, type[BaseException]]] = [
        (True, TypeError),
        (False, TypeError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        (-1, ValueError),
        ("600", TypeError),
        ([1], TypeError),
    ]
    if zero:
        values.append((0, ValueError))
    return [
        case(lambda old, c, value=value: call(value), Raises(exception, argument), f"{argument}={value!r}")
        for value, exception in values
    ]


SHIM_CASES = [
    *bad_numbers("requests_per_minute", lambda v: RateLimiter(v)),
    *bad_numbers("requests_per_hour", lambda v: RateLimiter(requests_per_hour=v)),
    *bad_numbers("burst_size", lambda v: RateLimiter(burst_size=v)),
    case(lambda old, c: RateLimiter(burst_size=0.5), Raises(ValueError, "burst_size"), "burst=0.5"),
    case(
        lambda old, c: RateLimiter(requests_per_hour=0.5),
        Raises(ValueError, "requests_per_hour"),
        "rph=0.5 (under one per hour)",
    ),
    case(lambda old, c: RateLimiter(clock=object()), Raises(TypeError, "clock"), "clock=object"),
    *bad_numbers("requests_per_minute", lambda v: RateLimiter().set_rate(v)),
    case(
        lambda old, c: old.set_rate(None), Raises(TypeError, "requests_per_minute"), "set_rate(None)"
    ),
    *bad_numbers("initial_requests_per_minute", lambda v: A(initial_requests_per_minute=v)),
    case(lambda old, c: A(burst_size=0), Raises(ValueError, "burst_size"), "adaptive burst=0"),
    # tokens: an int >= 1, wherever it is taken
    *(
        case(lambda old, c, take=take, value=value: take(old, value), Raises(exception, "tokens"), f"{name}({value!r})")
        for name, take in [
            ("try_acquire", lambda old, v: old.try_acquire(v)),
            ("acquire", lambda old, v: run(old.acquire(v))),
            ("wait_if_needed", lambda old, v: run(old.wait_if_needed(v))),
        ]
        for value, exception in [
            (0, ValueError),
            (-1, ValueError),
            (None, TypeError),
            (True, TypeError),
            (1.5, TypeError),
            (math.nan, TypeError),
            (math.inf, TypeError),
            (1e300, TypeError),
            ("1", TypeError),
        ]
    ),
    case(
        lambda old, c: run(old.wait_if_needed(21)), Raises(ValueError, "tokens"), "wait(tokens>burst)"
    ),
    case(
        lambda old, c: run(old.wait_if_needed(2**64)), Raises(ValueError, "tokens"), "wait(2**64)"
    ),
    # timeout: None or a number of seconds >= 0
    *(
        case(lambda old, c, value=value: run(old.acquire_async(value)), Raises(exception, "timeout"), f"acquire_async({value!r})")
        for value, exception in [
            (-1, ValueError),
            (math.nan, ValueError),
            (-math.inf, ValueError),
            (True, TypeError),
            ("1", TypeError),
        ]
    ),
    # on_rate_limit(retry_after): None or a finite number of seconds
    *(
        case(lambda old, c, on=on, value=value: on(value), Raises(exception, "retry_after"), f"{name}({value!r})")
        for name, on in [
            ("adaptive.on_rate_limit", lambda v: run(A().on_rate_limit(v))),
            ("composite.on_rate_limit", lambda v: run(CompositeLimiter().on_rate_limit(v))),
        ]
        for value, exception in [
            (math.nan, ValueError),
            (math.inf, ValueError),
            (-math.inf, ValueError),
            (2**63, ValueError),  # finite, but longer than any back-off
            (True, TypeError),
            ("1", TypeError),
        ]
    ),
    case(
        lambda old, c: old.set_rate(1e-300),
        Raises(ValueError, "requests_per_minute"),
        "set_rate(1e-300)",
    ),
    # acquire_for_stage(stage, estimated_tokens)
    *(
        case(lambda old, c, value=value: run(CompositeLimiter().acquire_for_stage(value)), Raises(exception, "stage"), f"stage={value!r}")
        for value, exception in [
            (None, TypeError),
            (True, TypeError),
            (1.0, TypeError),
            (0, ValueError),
            (3, ValueError),
            ("stage3", ValueError),
            ("Stage1", ValueError),
            (LONG, ValueError),
            ([1], TypeError),
        ]
    ),
    *bad_numbers(
        "estimated_tokens",
        lambda v: run(CompositeLimiter().acquire_for_stage(1, v)),
        zero=False,
    ),
    case(
        lambda old, c: run(CompositeLimiter().acquire_for_stage(1, None)),
        Raises(TypeError, "estimated_tokens"),
        "estimated_tokens=None",
    ),
]


@pytest.mark.usefixtures("clean_rate_env")
@pytest.mark.parametrize(("call", "expect"), SHIM_CASES)
def test_bad_input_to_the_shim(call, expect):
    clock = ManualClock()
    old = RateLimiter(requests_per_minute=600, requests_per_hour=36000, burst_size=20, clock=clock)
    raises_naming(lambda: call(old, clock), expect)
    # Nothing bad happened to the limiter the test was given.
    assert (old.requests_per_minute, old.requests_per_hour, old.burst_size) == (600, 36000, 20)
    assert old.tokens == 20 and old.get_stats()["requests_allowed"] == 0
    assert clock.monotonic() == 0


@pytest.mark.usefixtures("clean_rate_env")
def test_the_shim_caps_large_finite_values_and_takes_none_as_the_default():
    limiter = RateLimiter(1e300, 1e300, 1e300, clock=ManualClock())
    assert (limiter.requests_per_minute, limiter.requests_per_hour, limiter.burst_size) == (
        600_000,
        36_000_000,
        10_000,
    )
    limiter.set_rate(1e300)
    assert limiter.requests_per_minute == 600_000
    with pytest.raises(ValueError, match=r"^requests_per_minute: "):  # inf is no value to cap
        RateLimiter(math.inf)
    with pytest.raises(ValueError, match=r"^requests_per_minute: "):
        limiter.set_rate(math.inf)
    assert limiter.requests_per_minute == 600_000
    assert RateLimiter(None, None, None).burst_size == 20  # REQUESTS_PER_MINUTE & co. or defaults
    assert RateLimiter(burst_size=2.9).burst_size == 2  # rounded down, as the old module did
    assert run(RateLimiter(clock=ManualClock()).acquire_async(timeout=math.inf))


# --- retry_on_rate_limit ----------------------------------------------------------------------

RETRY_CASES = [
    *(
        case(
            lambda value=value: retry_on_rate_limit(value),
            Raises(exception, "max_attempts"),
            f"max_attempts={value if not callable(value) else 'a function'!r}",
        )
        for value, exception in [
            (0, ValueError),
            (-1, ValueError),
            (None, TypeError),
            (True, TypeError),
            (2.0, TypeError),
            (math.nan, TypeError),
            (math.inf, TypeError),
            ("3", TypeError),
            (lambda: None, TypeError),  # @retry_on_rate_limit without parentheses
        ]
    ),
    *(
        case(lambda name=name, value=value: retry_on_rate_limit(**{name: value}), Raises(exception, name), f"{name}={value!r}")
        for name, extra in [
            ("backoff", []),
            ("max_delay", [(1e300, ValueError)]),
            ("jitter", [(1.5, ValueError), (1e300, ValueError)]),
        ]
        for value, exception in [
            (-1, ValueError),
            (math.nan, ValueError),
            (math.inf, ValueError),
            (-math.inf, ValueError),
            (None, TypeError),
            (True, TypeError),
            ("1", TypeError),
            *extra,
        ]
    ),
]


@pytest.mark.parametrize(("call", "expect"), RETRY_CASES)
def test_bad_input_to_retry(call, expect):
    raises_naming(call, expect)


@pytest.mark.parametrize(
    "retry_after", [None, -1, -math.inf, math.nan, math.inf, True, "soon"], ids=repr
)
@pytest.mark.parametrize("form", ["thread", "asyncio"])
def test_retry_waits_the_backoff_when_retry_after_is_unusable(monkeypatch, retry_after, form):
    """A missing, negative, NaN, infinite or non-number retry_after is the backoff: never a
    crash in time.sleep / asyncio.sleep, never a wait of max_delay. The sleeps are real."""
    slept: list[float] = []
    for module, name in ((retry_module.time, "sleep"), (retry_module.asyncio, "sleep")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda s, real=real: (slept.append(s), real(s))[1])
    attempts = []

    def attempt() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise RateLimitError("limited", retry_after=retry_after)
        return "done"

    retrying = retry_on_rate_limit(max_attempts=3, backoff=0.001, max_delay=60.0, jitter=0.0)
    if form == "thread":
        assert retrying(attempt)() == "done"
    else:

        async def attempt_async() -> str:
            return attempt()

        assert run(retrying(attempt_async)()) == "done"
    assert slept == [0.001, 0.002]  # backoff, doubled


def test_retry_takes_large_values_without_overflow(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(retry_module.time, "sleep", slept.append)
    calls = 0

    @retry_on_rate_limit(max_attempts=1100, backoff=1e300, max_delay=1.0, jitter=1.0)
    def limited() -> None:
        nonlocal calls
        calls += 1
        raise RateLimitError(retry_after=1e300 if calls == 1 else None)

    with pytest.raises(RateLimitError):
        limited()
    assert calls == 1100 and len(slept) == 1099
    assert all(1.0 <= s <= 2.0 for s in slept)  # max_delay, plus up to 100 % jitter


@pytest.mark.parametrize("retry_after", ["soon", True, math.nan, -1.0, None, 2.5])
def test_rate_limit_error_keeps_any_retry_after_and_always_has_a_message(retry_after):
    from flashcard_pipeline.exceptions import RateLimitError

    error = RateLimitError(retry_after=retry_after)
    assert error.retry_after is retry_after or error.retry_after == retry_after
    assert str(error).startswith("Rate limit exceeded")
