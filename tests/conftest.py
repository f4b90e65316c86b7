"""Shared fixtures: limiters on a ManualClock, so that no test has to sleep."""

from __future__ import annotations

import threading
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
