"""A reservation is a promise at its slot: it is kept for everyone who executes on time, it
holds nothing before its slot, and capacity nobody was promised (given back by a cancel, or
refilled between promises) is usable at once by anyone it would not make late."""

from __future__ import annotations

import random
import threading
import time

import pytest

from conftest import blocking_acquirer, check_within_rate, max_excess_over_bucket, thread_hammer
from flashcard_pipeline.rate_limiter_v2 import ManualClock, RateLimitResult, ShardedRateLimiter

NS = 1e-9
LAYOUTS = [(shards, scope) for shards in (1, 4) for scope in ("global", "key")]


def move_to(clock: ManualClock, at: float) -> None:
    """Moves the clock forward to ``at`` (seconds since it started), to the nanosecond: the
    clock rounds a step up, so a step computed in floats is made a hair shorter first."""
    clock.advance(max(0.0, at - clock.time() - 1e-10))


def ten_per_second(shards: int, scope: str, burst: int = 1) -> tuple[ManualClock, ShardedRateLimiter]:
    clock = ManualClock()
    limiter = ShardedRateLimiter(
        rate=10, period=1.0, burst_size=burst, shards=shards, clock=clock, scope=scope
    )
    return clock, limiter


@pytest.mark.parametrize(("shards", "scope"), LAYOUTS)
def test_capacity_a_cancel_gives_back_is_usable_at_once(shards, scope):
    """One token now, ten reservations, the first nine cancelled: only the slot at 1.0 s is
    promised, so the tokens refilled before it go to whoever asks, and ``retry_after`` and
    ``peek`` say so (they used to refuse with ``retry_after=0.1`` until 1.0 s)."""
    clock, limiter = ten_per_second(shards, scope)
    assert limiter.try_acquire("k")
    reservations = [limiter.reserve("k") for _ in range(10)]
    assert [r.execute_at for r in reservations] == pytest.approx(
        [k / 10 for k in range(1, 11)], abs=NS
    )
    for r in reservations[:9]:
        assert limiter.cancel_reservation(r.id)
    move_to(clock, 0.5)
    assert limiter.peek("k") == pytest.approx(1.0)
    assert limiter.try_acquire("k")
    move_to(clock, 0.55)
    refused = limiter.try_acquire("k")
    assert not refused and refused.retry_after == pytest.approx(0.05, abs=NS)
    assert limiter.peek("k") < 1
    for at in (0.6, 0.7, 0.8, 0.9):
        move_to(clock, at)
        assert limiter.try_acquire("k"), at
    move_to(clock, 1.0)
    assert limiter.execute_reservation(reservations[9].id)
    assert not limiter.try_acquire("k")


@pytest.mark.parametrize(("shards", "scope"), LAYOUTS)
def test_a_new_booking_never_shares_a_promised_slot(shards, scope):
    """Reserve a, b, c; cancel b; reserve d: d comes after c (it used to get c's slot and be
    admitted 0.1 s late), and b's token is free at 0.2 s for anyone."""
    clock, limiter = ten_per_second(shards, scope)
    assert limiter.try_acquire("k")
    a, b, c = (limiter.reserve("k") for _ in range(3))
    assert limiter.cancel_reservation(b.id)
    d = limiter.reserve("k")
    assert [r.execute_at for r in (a, c, d)] == pytest.approx([0.1, 0.3, 0.4], abs=NS)
    for r, extra in ((a, False), (None, True), (c, False), (d, False)):
        move_to(clock, 0.1 if r is a else 0.2 if r is None else r.execute_at)
        if extra:
            assert limiter.try_acquire("k")
        else:
            assert limiter.execute_reservation(r.id), r


@pytest.mark.parametrize("burst", [1, 5])
@pytest.mark.parametrize(("shards", "scope"), LAYOUTS)
def test_a_batch_with_half_its_reservations_cancelled_and_a_polling_client_uses_the_budget(
    burst, shards, scope
):
    """100/s: 40 reservations, every other one cancelled, the rest executed on time, and a
    client calling try_acquire every millisecond: the budget is used (it was 50 % at burst 1
    and 70 % at burst 5)."""
    clock = ManualClock()
    limiter = ShardedRateLimiter(
        rate=100, period=1.0, burst_size=burst, shards=shards, clock=clock, scope=scope
    )
    batch = [limiter.reserve("k") for _ in range(40)]
    for r in batch[1::2]:
        assert limiter.cancel_reservation(r.id)
    kept = sorted(batch[::2], key=lambda r: r.execute_at)
    end = batch[-1].execute_at
    admitted: list[float] = []
    for step in range(round(end * 1000) + 1):
        move_to(clock, step / 1000)
        while kept and kept[0].execute_at <= clock.time():
            assert limiter.execute_reservation(kept.pop(0).id)
            admitted.append(clock.time())
        if limiter.try_acquire("k"):
            admitted.append(clock.time())
    assert not kept
    bound = burst + 100 * end
    assert max_excess_over_bucket(admitted, burst, 100, 1.0) <= 1e-9
    assert len(admitted) >= 0.95 * bound, (len(admitted), bound)


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_random_on_time_schedules_keep_every_promise(algorithm):
    """500 random schedules of reservations, cancels, takes and on-time executions at 1 and
    4 shards: every reservation executed at its slot is admitted then, and I1 holds (it
    used to break 463 token-bucket schedules in 3,000)."""
    rng = random.Random(20261207)
    for run in range(500):
        shards = rng.choice([1, 4])
        burst = rng.choice([1, 2, 3]) if algorithm == "token_bucket" else None
        clock = ManualClock()
        limiter = ShardedRateLimiter(
            rate=10, period=1.0, burst_size=burst, shards=shards, clock=clock, algorithm=algorithm
        )
        pending: list = []
        admitted: list[float] = []
        for _ in range(30):
            move = rng.random()
            if move < 0.35:
                pending.append(limiter.reserve("k", count=rng.choice([1, 1, min(2, burst or 2)])))
            elif move < 0.5 and pending:
                assert limiter.cancel_reservation(pending.pop(rng.randrange(len(pending))).id)
            elif move < 0.7:
                if limiter.try_acquire("k"):
                    admitted.append(clock.time())
            else:
                until = clock.time() + rng.choice([0.01, 0.05, 0.1, 0.3])
                for r in sorted(pending, key=lambda r: r.execute_at):
                    if r.execute_at > until:
                        break
                    move_to(clock, max(clock.time(), r.execute_at))
                    result = limiter.execute_reservation(r.id)
                    assert result, (run, r, result)
                    admitted.extend([clock.time()] * r.count)
                    pending.remove(r)
                move_to(clock, until)
        if algorithm == "token_bucket":
            assert max_excess_over_bucket(admitted, burst, 10, 1.0) <= 1e-9, run
        else:
            ordered = sorted(admitted)
            assert all(
                sum(1 for u in ordered if t <= u <= t + 1.0) <= 10 for t in ordered
            ), run


def execute_when_ready(limiter: ShardedRateLimiter, reservation_id: str) -> RateLimitResult:
    """Executes a reservation at its slot as a careful caller does: if someone ahead was
    late and it is ``not_ready``, waits the ``retry_after`` it is told and asks again."""
    result = limiter.execute_reservation(reservation_id)
    while result.reason == "not_ready":
        time.sleep(result.retry_after or 0.0)
        result = limiter.execute_reservation(reservation_id)
    return result


def test_threads_waiting_beside_a_reserver_use_the_whole_rate():
    """Real clock, 1000/s, burst 1, for 1 s: 4 threads in blocking acquire() and one that
    reserves, sleeps until just before the slot and executes: never over, at least 95 % of
    the bound in one of two runs (it was 67-70 %)."""
    rate = 1000
    used = []
    for _ in range(2):
        limiter = ShardedRateLimiter(rate=rate, period=1.0, burst_size=1, shards=1)
        admitted: list[list[float]] = [[] for _ in range(5)]
        lock = threading.Lock()

        def reserver(deadline: float, admitted: list[float] = admitted[4]) -> None:
            while time.monotonic() < deadline:
                r = limiter.reserve("k", max_wait=1.0)
                # A millisecond early: execute_reservation waits out the rest precisely.
                time.sleep(max(0.0, r.wait_time() - 0.001))
                if execute_when_ready(limiter, r.id):
                    with lock:
                        admitted.append(time.monotonic())

        workers = [blocking_acquirer(limiter, m) for m in admitted[:4]] + [reserver]
        started, deadline, finished = thread_hammer(workers, 1.0)
        times = [at for m in admitted for at in m]
        assert admitted[4], "the reserver was never admitted"
        used.append(check_within_rate(times, started, deadline, finished, rate, 1, floor=None))
        if used[-1] >= 0.95:
            return
    pytest.fail(f"under 95 % of the rate twice: {used}")


def test_a_half_cancelled_batch_beside_a_greedy_client_uses_the_budget_on_the_real_clock():
    """Real clock, 200/s, burst 5: a thread books 100 reservations, cancels every other one
    and executes the rest at their slots while another thread calls try_acquire as fast as
    it can: together they use at least 95 % of the budget over the batch's span."""
    rate, burst = 200, 5
    used = []
    for _ in range(2):
        limiter = ShardedRateLimiter(rate=rate, period=1.0, burst_size=burst, shards=1)
        started = time.monotonic()
        batch = [limiter.reserve("k") for _ in range(100)]
        span = batch[-1].execute_at - time.time()
        deadline = started + span
        admitted: list[list[float]] = [[], []]

        def executor(deadline: float) -> None:
            for r in batch[1::2]:
                limiter.cancel_reservation(r.id)
            for r in batch[::2]:
                time.sleep(r.wait_time())
                if execute_when_ready(limiter, r.id):
                    admitted[0].append(time.monotonic())

        def greedy(deadline: float) -> None:
            while time.monotonic() < deadline:
                if limiter.try_acquire("k"):
                    admitted[1].append(time.monotonic())

        _, _, finished = thread_hammer([executor, greedy], span)
        assert len(admitted[0]) == 50
        times = admitted[0] + admitted[1]
        used.append(
            check_within_rate(times, started, deadline, finished, rate, burst, floor=None)
        )
        if used[-1] >= 0.95:
            return
    pytest.fail(f"under 95 % of the budget twice: {used}")
