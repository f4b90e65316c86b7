"""Shared fixtures: limiters on a ManualClock, so that no test has to sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flashcard_pipeline.rate_limiter_v2 import (
    DistributedRateLimiter,
    ManualClock,
    ShardedRateLimiter,
)
from redis_servers import Servers, fresh_namespace

ALGORITHMS = ("token_bucket", "sliding_window")

#: Where a conformance test's budget lives: in this process, in Redis, in Valkey.
BACKENDS = ("memory", "redis", "valkey")


# The known differences of a budget in Redis or Valkey from the in-memory limiter: the
# reasons of the conformance tests' ``server_xfail`` marks (each a bug report to the engine).

#: Sliding-window slots on the server are whole microseconds.
SERVER_MICROSECOND_SLOTS = (
    "sliding window on Redis/Valkey: a slot (and so retry_after and execute_at) comes 1 us "
    "after the window has passed (e.g. retry_after 0.500001 for 0.5, execute_at 2.000002 "
    "for 2.0), in memory 1 ns after: not within the 1e-6 the tests allow"
)
#: Why acquire() is awaited on a server: the memory_only reason of the tests that call it
#: in a running event loop without awaiting it.
SERVER_ACQUIRE_AWAITED = (
    "in a running event loop, acquire() on a server is always an awaitable: its round trips "
    "are awaited in the task, never made on the loop's thread at the call (the in-memory "
    "limiter decides at the call, and books a turn then)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "conformance: the test's make_limiter (or make) runs once per backend: the in-memory "
        "ShardedRateLimiter and a DistributedRateLimiter budget in Redis and in Valkey",
    )
    config.addinivalue_line(
        "markers",
        "memory_only(reason, **params): a test of a conformance module that runs on the "
        "in-memory limiter only, for the reason given (with params: its parametrisations "
        "whose parameters equal them are skipped on the servers)",
    )
    config.addinivalue_line(
        "markers",
        "server_xfail(reason, **params): a conformance test that the Redis and Valkey budgets "
        "fail (a known behaviour difference from the in-memory limiter): xfail(strict=True) "
        "on them, for the parametrisations whose parameters equal ``params`` (all if none)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``conformance`` (by itself, its class or its module's ``pytestmark``)
    that uses ``make_limiter``/``make`` runs on every backend, unless marked
    ``memory_only``."""
    if "backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("conformance") is None:
        return
    if any(not mark.kwargs.keys() - {"reason"} for mark in metafunc.definition.iter_markers("memory_only")):
        return  # memory_only(reason=...) with no parameters: not parametrised over backends
    metafunc.parametrize("backend", BACKENDS, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``server_xfail``: a known difference stays visible, as a strict xfail on the servers."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend", "memory") == "memory":
            continue
        for mark in item.iter_markers("server_xfail"):
            if all(params.get(name) == value for name, value in mark.kwargs.items()):
                item.add_marker(pytest.mark.xfail(strict=True, reason=mark.args[0]))
        for mark in item.iter_markers("memory_only"):
            wanted = {name: value for name, value in mark.kwargs.items() if name != "reason"}
            if wanted and all(params.get(name) == value for name, value in wanted.items()):
                item.add_marker(pytest.mark.skip(reason=f"memory only: {mark.kwargs['reason']}"))


@pytest.fixture
def clock() -> ManualClock:
    """A clock at 0 s that moves only when a test (or a waiting acquire) advances it."""
    return ManualClock()


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """A Redis and a Valkey server for the whole run, each started when first used."""
    started = Servers()
    yield started
    started.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``"memory"``, ``"redis"`` or ``"valkey"``: the conformance parameter (``"memory"``
    for a test that is not a conformance test)."""
    return getattr(request, "param", "memory")


@pytest.fixture
def make_distributed(
    request: pytest.FixtureRequest, backend: str, clock: ManualClock
) -> Iterator[Callable[..., DistributedRateLimiter]]:
    """``make_distributed(rate, period=1.0, **options)``: a ``DistributedRateLimiter`` on
    the test's ManualClock, on this test's backend, in a namespace of its own (unless the
    test names one: the server is emptied before and after, so named ones start afresh)."""
    server = None if backend == "memory" else request.getfixturevalue("servers").get(backend)
    if server is not None:
        server.flush()

    def build(rate: float, period: float = 1.0, **options: Any) -> DistributedRateLimiter:
        options.setdefault("clock", clock)
        options.setdefault("namespace", fresh_namespace())
        if server is None:
            return DistributedRateLimiter(rate, period, **options)
        return DistributedRateLimiter(
            rate, period, backend="redis", redis_url=server.url, **options
        )

    yield build
    if server is not None:
        server.flush()


@pytest.fixture
def make_limiter(
    backend: str, clock: ManualClock, make_distributed: Callable[..., DistributedRateLimiter]
) -> Callable[..., ShardedRateLimiter]:
    """``make_limiter(rate, period, **options)``: a limiter on the test's ManualClock. In a
    ``conformance`` test on ``redis``/``valkey``, a ``DistributedRateLimiter`` budget in that
    server instead, in a fresh namespace; ``shards`` is dropped there (a server's budget is
    one budget, and shards never change what a budget admits)."""

    def make(rate: float, period: float = 1.0, **options: Any) -> ShardedRateLimiter:
        options.setdefault("clock", clock)
        if backend == "memory":
            return ShardedRateLimiter(rate, period, **options)
        options.pop("shards", None)
        return make_distributed(rate, period, **options)

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


# Conformance: what only the in-memory limiter reports ------------------------------------


def _in_memory(limiter: Any) -> bool:
    return getattr(limiter, "backend", "memory") == "memory"


def assert_book_active(limiter: Any, active: int) -> None:
    """The in-memory reservation book holds ``active`` entries (a budget in Redis or Valkey
    keeps its book in the server: its ``get_status()`` has no ``reservations``)."""
    if _in_memory(limiter):
        assert limiter.get_status()["reservations"]["active"] == active


def assert_requests_allowed(limiter: Any, allowed: int) -> None:
    """The in-memory limiter's counter of admissions is ``allowed`` (a budget in Redis or
    Valkey counts none: its ``get_status()`` has no ``requests_allowed``)."""
    if _in_memory(limiter):
        assert limiter.get_status()["requests_allowed"] == allowed


def assert_shards(limiter: Any, shards: int) -> None:
    """The in-memory limiter has ``shards`` shards (a budget in a server is one budget)."""
    if _in_memory(limiter):
        assert limiter.shards == shards
