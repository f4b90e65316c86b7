"""Per-key budgets (``scope="key"``): each key its own budget of ``rate`` per ``period``.

Manual-clock tests give exact numbers; the real-clock hammers run for about a second and check
I1 per key over every interval of admission times, and that no capacity is lost. Memory per
key and the sweep of idle keys are measured by the allocator in
``rust/core/tests/key_memory.rs``; threads inserting the same new keys at once in
``rust/core/tests/keyed_threads.rs``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import (
    ALGORITHMS,
    HAMMER,
    HAMMER_BURST,
    assert_book_active,
    check_within_rate,
    max_in_window,
    thread_hammer,
)
from flashcard_pipeline.rate_limiter_v2 import (
    AdaptiveShardedRateLimiter,
    ManualClock,
    RateLimitError,
    ShardedRateLimiter,
    TokenReservation,
)

#: make_limiter's tests run on every backend (memory, Redis, Valkey); see conftest.
pytestmark = pytest.mark.conformance

SHARDS = (1, 4, 16)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("shards", SHARDS)
def test_two_keys_never_affect_each_other(make_limiter, drain, algorithm, shards):
    limiter = make_limiter(10, 1.0, scope="key", algorithm=algorithm, shards=shards)
    assert drain(limiter, "alice") == 10
    assert limiter.peek("alice") == 0
    assert limiter.peek("bob") == 10
    assert drain(limiter, "bob") == 10
    # A reservation and a reset on one key leave the other alone.
    assert isinstance(limiter.reserve("alice", max_wait=5.0), TokenReservation)
    limiter.reset("bob")
    assert limiter.peek("bob") == 10
    assert not limiter.try_acquire("alice")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("shards", SHARDS)
def test_i3_exact_numbers_per_key(clock, make_limiter, algorithm, shards):
    """At 100/s, burst 100: calls every 1 ms from 0 s to 2 s admit 300 (token bucket) or 200
    (sliding window) for each key, whatever the other keys do."""
    limiter = make_limiter(100, 1.0, scope="key", algorithm=algorithm, shards=shards)
    admitted = {"a": 0, "b": 0, "c": 0}
    for _ in range(2001):
        for key in admitted:
            admitted[key] += bool(limiter.try_acquire(key))
        clock.advance(0.001)
    expected = 300 if algorithm == "token_bucket" else 200
    assert all(n == expected for n in admitted.values()), admitted


def test_the_sliding_window_per_key_never_admits_more_than_the_limit_in_any_window(clock, make_limiter):
    limiter = make_limiter(7, 1.0, scope="key", algorithm="sliding_window")
    times: dict[str, list[float]] = {"a": [], "b": []}
    for step in range(5000):
        key = "a" if step % 3 else "b"
        if limiter.try_acquire(key):
            times[key].append(clock.time())
        clock.advance(0.0013)
    assert all(max_in_window(t, 1.0) <= 7 for t in times.values())
    assert all(len(t) >= 7 * 6 for t in times.values())


def test_acquire_waits_for_its_own_key_only(clock, make_limiter, drain):
    limiter = make_limiter(2, 1.0, scope="key")
    drain(limiter, "busy")
    start = clock.time()
    assert limiter.acquire("idle")
    assert clock.time() == start  # no wait: its budget is full
    assert limiter.acquire("busy")
    assert clock.time() - start == pytest.approx(0.5, abs=1e-6)  # one token of 2/s


@pytest.mark.asyncio
async def test_awaited_acquire_waits_fairly_per_key():
    """Tasks on two keys: each key admits its own burst plus its own refill, in FIFO order."""
    clock = ManualClock()
    limiter = ShardedRateLimiter(10, 1.0, scope="key", clock=clock)
    done: dict[str, list[int]] = {"a": [], "b": []}

    async def caller(key: str, n: int) -> None:
        result = await limiter.acquire(key, max_wait=10.0)
        assert result
        done[key].append(n)

    await asyncio.gather(*(caller(key, n) for n in range(15) for key in ("a", "b")))
    assert done == {"a": list(range(15)), "b": list(range(15))}
    # 10 at once and 5 more at 10/s: half a second, for both keys together.
    assert clock.time() == pytest.approx(0.5, abs=1e-6)


def test_reservations_queue_per_key(clock, make_limiter):
    limiter = make_limiter(1, 1.0, scope="key")
    first = limiter.reserve("a", max_wait=10.0)
    second = limiter.reserve("a", max_wait=10.0)
    other = limiter.reserve("b", max_wait=10.0)
    assert second.execute_at - first.execute_at == pytest.approx(1.0, abs=1e-6)
    assert other.execute_at == pytest.approx(first.execute_at, abs=1e-6)
    assert limiter.execute_reservation(first.id)
    assert limiter.execute_reservation(other.id)
    assert limiter.execute_reservation(first.id).reason == "already_executed"
    assert limiter.cancel_reservation(second.id)
    assert limiter.peek("a") == 0  # the cancelled token goes back, the executed one not
    clock.advance(1.0)
    assert limiter.peek("a") == 1
    assert_book_active(limiter, 0)


@pytest.mark.memory_only(reason="max_keys: the in-memory key table")
def test_max_keys_refuses_new_keys_and_keeps_live_ones(clock, make_limiter):
    limiter = make_limiter(5, 1.0, scope="key", max_keys=3)
    for key in "abc":
        assert limiter.try_acquire(key)
    refused = limiter.try_acquire("d")
    assert (refused.allowed, refused.reason, refused.retry_after) == (False, "too_many_keys", None)
    with pytest.raises(RateLimitError, match="too_many_keys"):
        limiter.reserve("d")
    refused = limiter.acquire("d", max_wait=5.0)
    assert (refused.allowed, refused.reason) == (False, "too_many_keys")
    assert clock.time() == 0  # refused at once: waiting would not help
    assert limiter.try_acquire("a")  # kept keys go on
    assert len(limiter) == 3
    assert limiter.get_status()["keys"] == 3
    assert limiter.get_status()["max_keys"] == limiter.max_keys == 3
    # Once "b" and "c" have been full for a period they are dropped, and new keys fit again.
    clock.advance(1.5)
    assert limiter.try_acquire("d") and limiter.try_acquire("e")
    assert len(limiter) == 2


@pytest.mark.memory_only(reason="max_keys: the in-memory key table")
def test_a_full_table_looks_for_room_at_most_once_a_period(clock, make_limiter):
    """A new key refused at ``max_keys`` sweeps a stripe for droppable keys at most once a
    period, so that a flood of new keys costs a look-up each; a key that has become droppable
    makes room at most a period after its stripe's last sweep."""
    limiter = make_limiter(1, 1.0, scope="key", max_keys=3, shards=1)
    for key in "abc":
        assert limiter.try_acquire(key)  # full again at 1 s, droppable at 2 s
    clock.advance(1.9)
    assert limiter.try_acquire("a")  # stays in use
    assert limiter.try_acquire("d").reason == "too_many_keys"  # swept: nothing droppable yet
    clock.advance(0.6)
    assert limiter.try_acquire("d").reason == "too_many_keys"  # "b", "c" droppable since 2 s
    assert limiter.peek("a") == pytest.approx(0.6, abs=1e-6)  # kept, never forgotten
    clock.advance(0.4)  # a period after the sweep
    assert limiter.try_acquire("d") and limiter.try_acquire("e")
    assert limiter.try_acquire("f").reason == "too_many_keys"


@pytest.mark.memory_only(reason="len(): the in-memory key table (a Redis budget's len() is 1)")
def test_idle_keys_are_dropped_and_come_back_fresh(clock, make_limiter, drain):
    limiter = make_limiter(10, 1.0, scope="key")
    for i in range(1000):
        limiter.try_acquire(f"user:{i}")
    assert len(limiter) == 1000
    clock.advance(1.09)  # full again at 0.1 s, but not for a whole period yet
    assert len(limiter) == 1000
    clock.advance(0.01)
    assert len(limiter) == 0
    assert drain(limiter, "user:1") == 10


@pytest.mark.memory_only(reason="len(): the in-memory key table (a Redis budget's len() is 1)")
def test_a_key_with_a_live_reservation_is_not_dropped(clock, make_limiter):
    limiter = make_limiter(10, 1.0, scope="key")
    reservation = limiter.reserve("a", count=3)
    clock.advance(5.0)
    assert len(limiter) == 1
    assert limiter.execute_reservation(reservation.id)


def test_set_rate_applies_to_every_key_and_keeps_what_each_used(make_limiter, drain):
    limiter = make_limiter(10, 1.0, scope="key")
    drain(limiter, "a")
    limiter.try_acquire("b", count=4)
    limiter.set_rate(20, burst_size=20)
    assert limiter.peek("a") == 0
    assert limiter.peek("b") == 6
    assert drain(limiter, "c") == 20


@pytest.mark.memory_only(reason="len(): the in-memory key table (a Redis budget's len() is 1)")
def test_reset_refills_every_key(make_limiter, drain):
    limiter = make_limiter(3, 1.0, scope="key")
    for key in "abc":
        drain(limiter, key)
    limiter.reset()
    assert len(limiter) == 0
    assert [drain(limiter, key) for key in "abc"] == [3, 3, 3]


@pytest.mark.memory_only(reason="the key table's stripes (shards) and len()")
def test_scope_key_configuration_is_reported(make_limiter):
    limiter = make_limiter(10, 1.0, scope="key", shards=5)
    assert (limiter.scope, limiter.shards) == ("key", 8)  # stripes: a power of two
    assert bool(limiter) and len(limiter) == 0
    assert ShardedRateLimiter(10, scope="key").shards >= 16
    assert ShardedRateLimiter(10).max_keys is None


def test_the_hourly_limit_is_per_key_too(clock, drain):
    limiter = ShardedRateLimiter(
        requests_per_minute=600, requests_per_hour=5, scope="key", clock=clock
    )
    assert drain(limiter, "a") == 5
    assert drain(limiter, "b") == 5
    limiter.reset("a")
    assert drain(limiter, "a") == 5


@pytest.mark.memory_only(reason="max_reservations: an in-memory option")
def test_too_many_reservations_per_key_raise(make_limiter):
    limiter = make_limiter(1, 1.0, scope="key", max_reservations=2)
    limiter.reserve("a")
    limiter.reserve("a")
    with pytest.raises(RateLimitError):
        limiter.reserve("a")
    assert isinstance(limiter.reserve("b"), TokenReservation)


# ======================================================================================
# Real-clock hammers, per key
# ======================================================================================


@pytest.mark.parametrize("shards", [1, 16])
def test_hammer_threads_in_blocking_acquire_stay_within_each_keys_rate(shards):
    """Four threads in blocking acquire() over three keys at 500/s each: per key never over,
    nothing lost."""
    rate = 500
    limiter = ShardedRateLimiter(rate, 1.0, burst_size=HAMMER_BURST, shards=shards, scope="key")
    keys = ("k1", "k2", "k3")
    admitted: dict[str, list[float]] = {key: [] for key in keys}

    def worker(t: int):
        def loop(deadline: float) -> None:
            i = t
            while time.monotonic() < deadline:
                key = keys[i % len(keys)]
                i += 1
                if limiter.acquire(key, max_wait=1.0):
                    admitted[key].append(time.monotonic())

        return loop

    started, deadline, finished = thread_hammer([worker(t) for t in range(4)], HAMMER)
    for times in admitted.values():
        check_within_rate(times, started, deadline, finished, rate)


@pytest.mark.asyncio
async def test_hammer_asyncio_waiters_stay_within_each_keys_rate():
    """Forty asyncio tasks on four keys at 1000/s each: per key never over, nothing lost."""
    rate = 1000
    limiter = ShardedRateLimiter(rate, 1.0, burst_size=HAMMER_BURST, scope="key")
    admitted: dict[str, list[float]] = {f"k{i}": [] for i in range(4)}
    started = time.monotonic()
    deadline = started + HAMMER

    async def task(key: str) -> None:
        while time.monotonic() < deadline:
            if await limiter.acquire(key, max_wait=1.0):
                admitted[key].append(time.monotonic())

    await asyncio.wait_for(asyncio.gather(*(task(k) for k in admitted for _ in range(10))), 10.0)
    for times in admitted.values():
        check_within_rate(times, started, deadline, time.monotonic(), rate)


def test_the_adaptive_limiter_takes_scope_key(clock, drain):
    limiter = AdaptiveShardedRateLimiter(3, 1.0, scope="key", clock=clock)
    assert [drain(limiter, key) for key in "ab"] == [3, 3]
    assert len(limiter) == 2 and limiter.scope == "key"
