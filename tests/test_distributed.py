"""``DistributedRateLimiter`` on every backend: the embedded one (``backend="memory"``) and
one budget in a real Redis and a real Valkey (``backend="redis"``).

The behaviour tests run on all three on a ManualClock (its time is passed to the server's
script, so nothing sleeps). Then what only a shared budget has: processes with different
hash seeds sharing one budget, waiting turns across processes, namespaces confined by an ACL
user, a server killed, restarted and stopped, and an event loop that never waits on it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from flashcard_pipeline import distributed
from flashcard_pipeline._native import REBALANCE_THRESHOLD
from flashcard_pipeline.rate_limiter_v2 import (
    DistributedRateLimiter,
    ManualClock,
    ShardedRateLimiter,
)
from redis_servers import Server, Servers, fresh_namespace

pytestmark = pytest.mark.conformance  # a test using ``make`` runs on every backend


@pytest.fixture(scope="module", params=["redis", "valkey"])
def server(request: pytest.FixtureRequest, servers: Servers) -> Server:
    return servers.get(request.param)


@pytest.fixture
def make(
    make_distributed: Callable[..., DistributedRateLimiter],
) -> Callable[..., DistributedRateLimiter]:
    """``make(rate, period=1.0, **options)``: a limiter on the test's ManualClock, on this
    parameter's backend (``memory``, ``redis``, ``valkey``), in a namespace of its own."""
    return make_distributed


# Behaviour, on every backend ------------------------------------------------------------


def test_a_burst_then_one_token_per_interval(make: Any, clock: ManualClock) -> None:
    limiter = make(10, 1.0, burst_size=5)
    assert [bool(limiter.try_acquire("u")) for _ in range(6)] == [True] * 5 + [False]
    refused = limiter.try_acquire("u")
    assert refused.reason == "rate_limited"
    assert refused.retry_after == pytest.approx(0.1, abs=1e-6)
    clock.advance(0.1)
    assert limiter.try_acquire("u")
    assert not limiter.try_acquire("u")


def test_more_than_the_burst_is_never_admitted(make: Any) -> None:
    limiter = make(10, 1.0, burst_size=5)
    result = limiter.try_acquire("u", 6)
    assert (result.allowed, result.reason, result.retry_after) == (
        False,
        "exceeds_capacity",
        None,
    )


def test_acquire_waits_its_turn_in_line(make: Any, clock: ManualClock) -> None:
    limiter = make(10, 1.0, burst_size=1)
    assert limiter.try_acquire()
    start = clock.monotonic()
    first = limiter.acquire()
    second = limiter.acquire()
    assert first.allowed and second.allowed
    assert clock.monotonic() - start == pytest.approx(0.2, abs=1e-6)
    assert not limiter.try_acquire()


def test_acquire_never_waits_past_max_wait(make: Any, clock: ManualClock) -> None:
    limiter = make(10, 1.0, burst_size=1)
    assert limiter.try_acquire()
    refused = limiter.acquire(max_wait=0.05)
    assert refused.reason == "max_wait_exceeded"
    assert refused.retry_after == pytest.approx(0.1, abs=1e-6)
    assert clock.monotonic() == 0.0


def test_back_off_admits_nothing_then_refills_from_empty(make: Any, clock: ManualClock) -> None:
    limiter = make(10, 1.0, burst_size=5)
    limiter.back_off(1.0)
    clock.advance(0.999)
    assert not limiter.try_acquire()
    clock.advance(0.101)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_reset_refills_and_peek_tells_what_is_left(make: Any) -> None:
    limiter = make(10, 1.0, burst_size=5)
    assert limiter.try_acquire("u", 3)
    assert limiter.peek("u") == pytest.approx(2.0)
    limiter.reset()
    assert limiter.peek("u") == pytest.approx(5.0)


def test_each_key_its_own_budget(make: Any) -> None:
    limiter = make(10, 1.0, burst_size=2, scope="key")
    assert limiter.try_acquire("a", 2) and limiter.try_acquire("b", 2)
    assert not limiter.try_acquire("a")
    limiter.reset("a")
    assert limiter.try_acquire("a", 2)
    assert not limiter.try_acquire("b")


def test_set_rate_changes_the_refill(make: Any, clock: ManualClock) -> None:
    limiter = make(10, 1.0, burst_size=1)
    assert limiter.try_acquire()
    limiter.set_rate(100, 1.0, 1)
    clock.advance(0.01)
    assert limiter.try_acquire()
    assert limiter.rate == 100


def test_namespaces_do_not_share(make: Any) -> None:
    a, b = make(10, 1.0, burst_size=1, namespace="a"), make(10, 1.0, burst_size=1, namespace="b")
    assert a.try_acquire() and b.try_acquire()
    assert not a.try_acquire()
    assert (a.namespace, a.rate) == ("a", 10)


@pytest.mark.asyncio
async def test_from_a_task(make: Any, clock: ManualClock) -> None:
    limiter = make(10, 1.0, burst_size=1)
    assert await limiter.try_acquire()
    waited = await limiter.acquire()
    assert waited.allowed
    assert clock.monotonic() == pytest.approx(0.1, abs=1e-6)


@pytest.mark.asyncio
async def test_a_task_cancelled_as_its_turn_arrives_gives_the_turn_back(
    make: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled after the server booked its turn but before it ran on that answer, a
    waiter still gives the turn back: nothing is promised to a task that is gone."""
    limiter = make(10, 1.0, burst_size=1)
    assert limiter.try_acquire()
    resolve = distributed._LoopAnswers.resolve

    def resolve_then_cancel(answers: Any) -> None:
        resolve(answers)  # the booked turn is the waiter's, which has not run yet
        waiter.cancel()

    monkeypatch.setattr(distributed._LoopAnswers, "resolve", resolve_then_cancel)
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    if limiter.backend == "memory":
        waiter.cancel()  # it booked at the call
    outcome = (await asyncio.gather(waiter, return_exceptions=True))[0]
    assert isinstance(outcome, asyncio.CancelledError)
    clock.advance(0.1)
    assert limiter.try_acquire()  # the token the turn was promised


@pytest.mark.asyncio
@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
async def test_tasks_asking_at_once_are_each_decided_alone(make: Any, algorithm: str) -> None:
    """Tasks asking at the same moment (a shared budget decides them in one script call
    per budget) get the answers of the same calls made one after another."""
    limiter = make(5, 3600.0, burst_size=5, scope="key", algorithm=algorithm)
    calls = [(key, count) for count in (2, 1, 3, 1, 2, 6) for key in "abc"]
    answers = await asyncio.gather(*(limiter.try_acquire_async(k, c) for k, c in calls))
    left = dict.fromkeys("abc", 5)
    expected = []
    for key, count in calls:
        expected.append(count <= left[key])
        left[key] -= count if count <= left[key] else 0
    assert [bool(answer) for answer in answers] == expected
    assert [answer.reason for answer in answers[-3:]] == ["exceeds_capacity"] * 3
    assert [limiter.peek(key) for key in "abc"] == [pytest.approx(1.0)] * 3


def test_the_balance_report_is_the_same_report(make: Any) -> None:
    limiter = make(10, 1.0, burst_size=5)
    assert limiter.try_acquire("u", 2)
    balance = limiter.get_shard_balance()
    assert balance.keys() == ShardedRateLimiter(10, 1.0).get_shard_balance().keys()
    assert sum(balance["shard_tokens"]) == pytest.approx(3.0)
    assert (sum(balance["rate_shares"]), sum(balance["burst_shares"])) == (10, 5)
    assert balance["threshold"] == REBALANCE_THRESHOLD
    keyed = make(10, 1.0, burst_size=5, scope="key").get_shard_balance()
    assert (keyed["shard_tokens"], keyed["rate_shares"], keyed["burst_shares"]) == ([], [], [])


def test_the_inner_limiter_of_old_is_this_budget_with_keys_as_given() -> None:
    limiter = DistributedRateLimiter(5, 60.0, namespace="svc", backend="memory", burst_size=5)
    inner = limiter._local_limiter
    assert [bool(inner.try_acquire("svc:u")) for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.try_acquire("u")  # the same budget, under the namespace
    assert limiter.get_status()["statistics"]["denied_requests"] == 2
    assert inner.rate == 5


def test_status_names_the_backend(make: Any) -> None:
    limiter = make(10, 1.0, namespace="ns")
    limiter.try_acquire()
    backend = limiter.get_status()["backend"]
    assert backend["namespace"] == "ns" and backend["healthy"] is True
    assert backend["type"] in ("memory", "redis")


def test_bad_arguments_are_named(make: Any) -> None:
    with pytest.raises(ValueError, match="^namespace"):
        make(10, namespace="a}b")
    with pytest.raises(ValueError, match="^rate"):
        make(-1)
    with pytest.raises(ValueError, match="^backend"):
        DistributedRateLimiter(10, backend="mongo")


# What only a shared budget does ---------------------------------------------------------


def test_a_reservation_key_carries_the_namespace() -> None:
    limiter = DistributedRateLimiter(10, 1.0, namespace="ns")
    assert limiter.reserve("user1").key == "ns:user1"


WORKER = textwrap.dedent(
    """
    import sys, time
    from flashcard_pipeline.rate_limiter_v2 import DistributedRateLimiter
    url, namespace, mode, start, seconds = sys.argv[1:6]
    start, seconds = float(start), float(seconds)
    limiter = DistributedRateLimiter(
        {rate}, 1.0, namespace=namespace, backend="redis", redis_url=url, burst_size={burst},
        timeout=2.0,
    )
    time.sleep(max(start - time.time(), 0))
    admitted = 0
    while time.time() < start + seconds:
        if mode == "take":
            admitted += bool(limiter.try_acquire("user_1"))
        else:
            left = start + seconds - time.time()
            admitted += bool(limiter.acquire("user_1", max_wait=max(left, 0)))
    print(admitted)
    """
)


def run_processes(server: Server, mode: str, rate: float, burst: float, seconds: float) -> int:
    namespace = fresh_namespace()
    start = time.time() + 1.5
    code = WORKER.format(rate=rate, burst=burst)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, server.url, namespace, mode, str(start), str(seconds)],
            stdout=subprocess.PIPE,
            env=os.environ | {"PYTHONHASHSEED": str(seed)},
        )
        for seed in (1, 2, 3, 4)
    ]
    outputs = [worker.communicate(timeout=seconds + 30)[0] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    return sum(int(output) for output in outputs)


def test_four_processes_share_one_budget(server: Server) -> None:
    rate, burst, seconds = 200, 20, 5.0
    admitted = run_processes(server, "take", rate, burst, seconds)
    bound = burst + rate * seconds
    assert 0.99 * bound <= admitted <= bound + 1  # + a token refilled in the last round trip


def test_four_processes_waiting_in_line(server: Server) -> None:
    rate, burst, seconds = 100, 1, 3.0
    admitted = run_processes(server, "acquire", rate, burst, seconds)
    bound = burst + rate * seconds
    assert 0.9 * bound <= admitted <= bound + 1


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_a_confined_user_runs_its_namespace_only(server: Server, algorithm: str) -> None:
    url = f"redis://confined:secret@127.0.0.1:{server.port}"
    own = DistributedRateLimiter(
        10, 1.0, namespace="a", backend="redis", redis_url=url, algorithm=algorithm
    )
    assert own.key_pattern == "rl:v2:{a}:*"
    assert own.try_acquire() and own.acquire()
    own.back_off(0.01)
    own.reset()
    other = DistributedRateLimiter(
        10, 1.0, namespace="b", backend="redis", redis_url=url, algorithm=algorithm
    )
    with pytest.raises(PermissionError, match="NOPERM|No permissions"):
        other.try_acquire()


def test_a_batch_decides_in_order(server: Server) -> None:
    limiter = DistributedRateLimiter(
        10, 1.0, namespace=fresh_namespace(), backend="redis", redis_url=server.url, burst_size=3
    )
    results = limiter.try_acquire_many([("u", 2), ("u", 1), ("u", 1), ("v", 5)])
    assert [r.reason for r in results] == [None, None, "rate_limited", "exceeds_capacity"]


def test_a_waiter_that_gives_up_gives_its_turn_back(server: Server) -> None:
    limiter = DistributedRateLimiter(
        10, 1.0, namespace=fresh_namespace(), backend="redis", redis_url=server.url, burst_size=1
    )

    async def main() -> None:
        assert limiter.try_acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # Its slot (at 0.1 s) is free again: the next waiter gets it, not the one after.
        start = time.monotonic()
        assert await limiter.acquire()
        assert time.monotonic() - start < 0.1

    asyncio.run(main())


async def asking_together(limiter: DistributedRateLimiter, tasks: int) -> list[Any]:
    """``tasks`` tasks' ``try_acquire_async()`` at the same moment: their answers."""
    return await asyncio.gather(*(limiter.try_acquire_async() for _ in range(tasks)))


def test_a_dead_server_fails_closed_fast_and_recovery_is_automatic() -> None:
    server = Server("redis")
    try:
        timeout = 0.3
        limiter = DistributedRateLimiter(
            1000, 1.0, namespace="n", backend="redis", redis_url=server.url, timeout=timeout
        )
        opened = DistributedRateLimiter(
            1000, 1.0, namespace="n", backend="redis", redis_url=server.url,
            on_backend_error="fail_open",
        )
        assert limiter.try_acquire() and opened.try_acquire()
        server.stop()
        start = time.monotonic()
        refused = limiter.try_acquire()
        assert time.monotonic() - start < timeout + 0.05
        assert (refused.allowed, refused.reason, refused.retry_after) == (
            False,
            "backend_unavailable",
            1.0,
        )
        assert limiter.get_status()["backend"]["healthy"] is False
        start = time.monotonic()
        together = asyncio.run(asking_together(limiter, 8))  # one script call, failed for all
        assert time.monotonic() - start < timeout + 0.05
        assert {result.reason for result in together} == {"backend_unavailable"}
        admitted = opened.try_acquire()
        assert admitted.allowed and admitted.reason == "backend_unavailable"
        server.start()
        back = time.monotonic()
        while not limiter.try_acquire():
            assert time.monotonic() - back < 1.0, "not recovered within a second"
            time.sleep(0.01)
        assert limiter.get_status()["backend"]["healthy"] is True
    finally:
        server.close()


def test_a_stopped_server_never_holds_a_caller_past_the_timeout() -> None:
    server = Server("redis")
    try:
        timeout = 0.3
        limiter = DistributedRateLimiter(
            1000, 1.0, namespace="n", backend="redis", redis_url=server.url, timeout=timeout
        )
        assert limiter.try_acquire()
        server.pause()
        for call in (
            limiter.try_acquire,
            limiter.acquire,
            lambda: asyncio.run(limiter.try_acquire_async()),
            lambda: asyncio.run(asking_together(limiter, 8))[-1],
        ):
            start = time.monotonic()
            result = call()
            assert time.monotonic() - start < timeout + 0.05
            assert result.reason == "backend_unavailable"
        server.resume()
    finally:
        server.close()


def test_tasks_awaiting_the_server_never_block_the_loop(server: Server) -> None:
    limiter = DistributedRateLimiter(
        1e9, 1.0, namespace=fresh_namespace(), backend="redis", redis_url=server.url,
        burst_size=1e9,
    )

    async def main() -> float:
        done = time.monotonic() + 1.0
        worst = 0.0

        async def decide() -> None:
            while time.monotonic() < done:
                assert await limiter.try_acquire_async("k")

        async def tick() -> None:
            nonlocal worst
            while time.monotonic() < done:
                before = time.monotonic()
                await asyncio.sleep(0.001)
                worst = max(worst, time.monotonic() - before - 0.001)

        await asyncio.gather(tick(), *(decide() for _ in range(16)))
        return worst

    assert asyncio.run(main()) < 0.020


def test_a_sliding_window_admits_its_limit_in_any_window(make: Any, clock: ManualClock) -> None:
    limiter = make(3, 1.0, algorithm="sliding_window")
    assert limiter.algorithm == "sliding_window"
    assert limiter.try_acquire("u", 2)
    clock.advance(0.5)
    assert limiter.try_acquire("u")
    refused = limiter.try_acquire("u")
    assert refused.reason == "rate_limited"
    # The first two leave the window just after a second from their admission.
    assert refused.retry_after == pytest.approx(0.5, abs=2e-6)
    clock.advance(refused.retry_after)
    assert limiter.try_acquire("u", 2)
    assert not limiter.try_acquire("u")
    waited = limiter.acquire("u")
    assert waited.allowed and clock.monotonic() == pytest.approx(1.5, abs=3e-6)


# The I/O thread is a thread: CPython 3.12+ warns that fork() copies only the forking one,
# which is what the limiter is built for (a child opens its own connection).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_limiter_made_before_fork_works_in_the_children(server: Server) -> None:
    # gunicorn --preload builds the app (and its limiter) before forking the workers.
    limiter = DistributedRateLimiter(
        10, 60.0, namespace=fresh_namespace(), backend="redis", redis_url=server.url
    )
    assert limiter.try_acquire()  # the parent's connection exists before the fork
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            admitted = sum(bool(limiter.try_acquire()) for _ in range(5))
            os._exit(admitted)
        children.append(pid)
    admitted = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children)
    assert admitted == 9  # the budget's 10, less the parent's one: shared, not copied
    assert not limiter.try_acquire()


def test_a_child_forked_while_a_turn_goes_back_owes_nothing() -> None:
    """A turn the parent is giving back when it forks is the parent's to wait for: the
    child's calls go at once."""
    server = Server("redis")
    try:
        limiter = DistributedRateLimiter(
            10, 1.0, burst_size=1, namespace="n", backend="redis", redis_url=server.url,
            timeout=2.0,
        )
        assert limiter.try_acquire()

        async def cancel_a_waiter() -> None:
            waiter = asyncio.create_task(limiter.acquire())
            await asyncio.sleep(0.02)  # booked: it sleeps to its slot
            server.pause()
            waiter.cancel()  # its turn goes back on the I/O thread, which cannot finish
            await asyncio.gather(waiter, return_exceptions=True)

        asyncio.run(cancel_a_waiter())
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            time.sleep(0.1)  # the parent resumes the server
            start = time.monotonic()
            answered = limiter.try_acquire().reason != "backend_unavailable"
            os._exit(0 if answered and time.monotonic() - start < 1.0 else 1)
        server.resume()
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        server.close()


@pytest.mark.parametrize("form", ["user", "database", "unix"])
def test_the_url_forms(form: str) -> None:
    server = Server("redis", unix=form == "unix")
    try:
        url = {
            "user": f"redis://confined:secret@127.0.0.1:{server.port}",
            "database": f"redis://127.0.0.1:{server.port}/3",
            "unix": f"unix://{server.socket}",
        }[form]
        namespace = "a" if form == "user" else fresh_namespace()
        limiter = DistributedRateLimiter(
            1, 60.0, namespace=namespace, backend="redis", redis_url=url
        )
        assert limiter.try_acquire() and not limiter.try_acquire()
        if form == "database":
            assert (server.dbsize(3), server.dbsize(0)) == (1, 0)
    finally:
        server.close()


def test_the_url_comes_from_the_environment(server: Server, monkeypatch: Any) -> None:
    monkeypatch.setenv("RATE_LIMIT_REDIS_URL", server.url)
    limiter = DistributedRateLimiter(1, 60.0, namespace=fresh_namespace(), backend="redis")
    assert limiter.try_acquire() and not limiter.try_acquire()
    with pytest.raises(ValueError, match="^redis_url"):
        DistributedRateLimiter(1, namespace="x", backend="redis", redis_url="http://nope")


def test_reservations_are_promises(make: Any, clock: ManualClock) -> None:
    limiter = make(10, 1.0, burst_size=1, namespace="ns")
    assert limiter.try_acquire("user1")
    first = limiter.reserve("user1")
    second = limiter.reserve("user1")
    assert first.key == "ns:user1" and first.count == 1
    assert second.execute_at - first.execute_at == pytest.approx(0.1, abs=2e-6)
    early = limiter.execute_reservation(first.id)
    assert early.reason == "not_ready" and early.retry_after == pytest.approx(0.1, abs=2e-6)
    # The refill until the slots is promised: a take waits until after the second.
    assert limiter.try_acquire("user1").retry_after == pytest.approx(0.3, abs=2e-6)
    clock.advance(0.1)
    assert limiter.execute_reservation(first.id)
    assert limiter.execute_reservation(first.id).reason == "already_executed"
    assert limiter.cancel_reservation(second.id)
    assert not limiter.cancel_reservation(second.id)
    clock.advance(0.1)
    assert limiter.try_acquire("user1")  # the cancelled slot went back to the budget


def test_a_reservation_beyond_max_wait_is_refused(make: Any) -> None:
    from flashcard_pipeline.rate_limiter_v2 import ReservationRefused

    limiter = make(10, 1.0, burst_size=1)
    assert limiter.try_acquire()
    with pytest.raises(ReservationRefused, match="max_wait"):
        limiter.reserve(max_wait=0.05)


RESERVER = textwrap.dedent(
    """
    import sys, time
    from flashcard_pipeline.rate_limiter_v2 import DistributedRateLimiter
    url, namespace, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    limiter = DistributedRateLimiter(
        100, 1.0, namespace=namespace, backend="redis", redis_url=url, burst_size=1, timeout=2.0
    )
    time.sleep(max(start - time.time(), 0))
    print(" ".join(repr(limiter.reserve("user_1").execute_at) for _ in range(25)))
    """
)


def test_reservations_across_processes_never_share_a_slot(server: Server) -> None:
    namespace = fresh_namespace()
    start = time.time() + 1.0
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", RESERVER, server.url, namespace, str(start)],
            stdout=subprocess.PIPE,
            env=os.environ | {"PYTHONHASHSEED": str(seed)},
        )
        for seed in (1, 2, 3, 4)
    ]
    slots = sorted(
        float(slot) for worker in workers for slot in worker.communicate(timeout=30)[0].split()
    )
    assert len(slots) == 100
    gaps = [later - earlier for earlier, later in zip(slots, slots[1:])]
    assert min(gaps) >= 0.01 - 2e-6  # one token's time apart: no slot given twice


def test_a_sliding_window_keeps_reservations_too(make: Any, clock: ManualClock) -> None:
    limiter = make(2, 1.0, algorithm="sliding_window")
    assert limiter.try_acquire("u", 2)
    reservation = limiter.reserve("u")
    assert reservation.execute_at - clock.time() == pytest.approx(1.0, abs=2e-6)
    assert limiter.execute_reservation(reservation.id).reason == "not_ready"
    clock.advance(1.0 + 2e-6)
    assert limiter.execute_reservation(reservation.id)
    assert limiter.try_acquire("u")
    assert not limiter.try_acquire("u")


@pytest.mark.asyncio
async def test_every_backend_offers_the_same_calls(make: Any) -> None:
    limiter = make(10, 1.0, burst_size=3, scope="key")
    assert (await limiter.try_acquire_async("a", 2)).allowed
    results = limiter.try_acquire_many([("a", 1), ("a", 1), ("b", 3)])
    assert [r.reason for r in results] == [None, "rate_limited", None]
    limiter.on_rate_limit(retry_after=1.0, key="b")
    assert limiter.peek("b") <= 0 and limiter.peek("a") == 0
    assert limiter.try_acquire("c")  # another key's budget is untouched
