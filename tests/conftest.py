"""Shared fixtures: limiters on a ManualClock, so that no test has to sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flashcard_pipeline.rate_limiter_v2 import ManualClock, ShardedRateLimiter

ALGORITHMS = ("token_bucket", "sliding_window")


@pytest.fixture
def clock() -> ManualClock:
    """A clock at 0 s that moves only when a test (or a waiting acquire) advances it."""
    return ManualClock()


@pytest.fixture
def make_limiter(clock: ManualClock) -> Callable[..., ShardedRateLimiter]:
    """``make_limiter(rate, period, **options)``: a limiter on the test's ManualClock."""

    def make(rate: float, period: float = 1.0, **options: Any) -> ShardedRateLimiter:
        options.setdefault("clock", clock)
        return ShardedRateLimiter(rate, period, **options)

    return make


def _drain(limiter: ShardedRateLimiter, key: str = "default", calls: int = 10_000) -> int:
    admitted = 0
    for _ in range(calls):
        if not limiter.try_acquire(key):
            return admitted
        admitted += 1
    raise AssertionError(f"still admitting after {calls} calls")


@pytest.fixture
def drain() -> Callable[..., int]:
    """``drain(limiter, key="default")``: ``try_acquire`` until the first refusal; returns the
    number admitted (meant for a ManualClock, where time stands still meanwhile)."""
    return _drain


RATE_ENV = [
    "RATE_LIMIT_RATE",
    "RATE_LIMIT_PERIOD",
    "RATE_LIMIT_SHARDS",
    "USE_NEW_RATE_LIMITER",
] + [
    f"{prefix}{name}"
    for prefix in ("", "COST_", "STAGE1_", "STAGE2_")
    for name in ("REQUESTS_PER_MINUTE", "REQUESTS_PER_HOUR", "BURST_SIZE")
]


@pytest.fixture
def clean_rate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No rate-limit environment variable from the machine leaks into the test."""
    for name in RATE_ENV:
        monkeypatch.delenv(name, raising=False)


def _run_threads(worker: Callable[[int], None], count: int = 4) -> None:
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.fixture
def run_threads() -> Callable[..., None]:
    """``run_threads(worker, count=4)``: ``worker(i)`` on ``count`` threads, all joined."""
    return _run_threads


# Brute-force checks of I1 over admission times, and the real-clock hammers' frame.

#: How long each real-clock hammer runs, in seconds.
HAMMER = 0.8
#: The hammers' burst. With a burst of 1 a caller that wakes late by d loses d of refill
#: (the bucket is full meanwhile): a property of the token bucket, not of the limiter, and
#: with asyncio's millisecond timers it caps 2000/s at about half. A burst of 10 leaves room
#: for timer lateness, so the utilisation floor measures the limiter.
HAMMER_BURST = 10


def max_in_window(times: list[float], window: float) -> int:
    """The largest number of ``times`` in any closed window ``[t, t + window]`` (brute force:
    every window starting at an admission, which is where the maximum is reached)."""
    ordered = sorted(times)
    return max(
        (sum(1 for u in ordered if t <= u <= t + window) for t in ordered),
        default=0,
    )


def max_excess_over_bucket(times: list[float], burst: float, rate: float, period: float) -> float:
    """The largest ``count - (burst + rate * t / period)`` over all intervals between two
    admissions (brute force); I1 for the token bucket says it is <= 0."""
    ordered = sorted(times)
    worst = float("-inf")
    for i, start in enumerate(ordered):
        for j in range(i, len(ordered)):
            count = j - i + 1
            worst = max(worst, count - (burst + rate * (ordered[j] - start) / period))
    return worst


def blocking_acquirer(limiter: Any, admitted: list[float]) -> Callable[[float], None]:
    """A :func:`thread_hammer` worker: blocking ``acquire("k")`` until the deadline, noting
    the time of each admission in ``admitted``."""

    def loop(deadline: float) -> None:
        while time.monotonic() < deadline:
            if limiter.acquire("k", max_wait=1.0):
                admitted.append(time.monotonic())

    return loop


def thread_hammer(workers: list, duration: float) -> tuple[float, float, float]:
    """Runs ``worker(deadline)`` on threads; returns (started, deadline, finished)."""
    started = time.monotonic()
    deadline = started + duration
    threads = [threading.Thread(target=w, args=(deadline,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    return started, deadline, time.monotonic()


def check_within_rate(
    admitted_at: list[float],
    started: float,
    deadline: float,
    finished: float,
    rate: float,
    burst: float = HAMMER_BURST,
    floor: float | None = 0.95,
) -> float:
    """I1 over every interval between two admissions seen (each seen just after it
    happened, so 2 ms of slack for the reads), and at least ``floor`` of the bound
    ``burst + rate * t`` over the loop, counting only admissions seen before the deadline
    (``floor=None``: a test that holds its own floor). Returns the share of the bound used."""
    assert len(admitted_at) <= burst + rate * (finished - started)
    slack = 0.002 * rate
    excess = max_excess_over_bucket(admitted_at, burst + slack, rate, period=1.0)
    assert excess <= 0, excess
    on_time = sum(1 for at in admitted_at if at <= deadline)
    used = on_time / (burst + rate * (deadline - started))
    assert floor is None or used >= floor, (on_time, used)
    return used
