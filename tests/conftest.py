"""Shared fixtures: limiters on a ManualClock, so that no test has to sleep."""

from __future__ import annotations

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


def _drain(limiter: ShardedRateLimiter, key: str | None = None, calls: int = 10_000) -> int:
    admitted = 0
    for _ in range(calls):
        if not limiter.try_acquire(key):
            return admitted
        admitted += 1
    raise AssertionError(f"still admitting after {calls} calls")


@pytest.fixture
def drain() -> Callable[..., int]:
    """``drain(limiter, key=None)``: ``try_acquire`` until the first refusal; returns the
    number admitted (meant for a ManualClock, where time stands still meanwhile)."""
    return _drain
