"""One account of admission: regression tests for the issue's nine symptoms, plus hammers.

Each test named ``test_symptom_N_...`` reproduces symptom N of the issue; the
``test_hammer_...`` tests check the invariant I1 on the real clock under load.

The model these tests hold the engine to:

- Every admission happens at the moment the caller may proceed: ``try_acquire`` or
  ``acquire`` returning allowed, or ``execute_reservation`` admitting.
- A reservation's tokens are held in escrow from the moment its slot comes (it becomes
  ready) until it is executed, cancelled or expires, and count against the budget, burst
  included, the whole time.
- Executing before the reservation is ready is refused ``not_ready`` (no early tolerance).
- Reservations and waiters are FIFO: while any reservation waits for its slot,
  ``try_acquire`` is refused. Cancelled or expired tokens go to the next in line at once.
- The reservation book holds only live entries (an id that was executed or cancelled still
  answers ``already_executed`` / ``cancelled``).
- I1: the token bucket admits at most ``burst + rate * t / period`` over any interval of
  length t; the sliding window at most ``floor(rate)`` in any closed window of ``period``.

Manual-clock tests (fixtures ``clock``, ``make_limiter``, ``drain`` from conftest) give exact
numbers; the real-clock tests each run for about a second at most.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import pytest

from flashcard_pipeline.exceptions import RateLimitError
from conftest import (
    HAMMER,
    HAMMER_BURST,
    assert_book_active,
    blocking_acquirer,
    check_within_rate,
    max_excess_over_bucket,
    max_in_window,
    thread_hammer,
)
from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter

#: make_limiter's tests run on every backend (memory, Redis, Valkey); see conftest.
pytestmark = pytest.mark.conformance

#: Tolerance for times on the ManualClock (slots planned 1 ns after a window has passed).
NS = 1e-6
def admit_times_within_rate(admitted_at: list[float], started: float, burst: float, rate: float):
    """On the real clock: the k-th admission (1-based), seen at ``at`` (after it happened),
    satisfies k <= burst + rate * (at - started), with 2 ms for the clock reads."""
    for k, at in enumerate(sorted(admitted_at), start=1):
        assert k <= burst + rate * (at - started + 0.002), (k, at - started)


# ======================================================================================
# Symptom 1: a reservation booked after an execution gets its own slot
# ======================================================================================


@pytest.mark.parametrize("shards", [1, 4])
def test_symptom_1_a_reservation_booked_after_an_execution_gets_its_own_slot(
    clock, make_limiter, shards
):
    """Executing a reservation does not free its slot for a later booking: the next one
    still comes after every slot already promised."""
    limiter = make_limiter(1000, 1.0, burst_size=1, shards=shards)
    admitted = []
    assert limiter.try_acquire().allowed
    admitted.append(clock.monotonic())
    a = limiter.reserve()
    b = limiter.reserve()
    assert a.execute_at == pytest.approx(0.001, abs=NS)
    assert b.execute_at == pytest.approx(0.002, abs=NS)

    clock.advance(0.001)
    assert limiter.execute_reservation(a.id).allowed
    admitted.append(clock.monotonic())
    x = limiter.reserve()
    assert x.execute_at == pytest.approx(0.003, abs=NS)

    clock.advance(0.001)
    assert limiter.execute_reservation(b.id).allowed
    admitted.append(clock.monotonic())
    early = limiter.execute_reservation(x.id)
    assert not early.allowed
    assert early.reason == "not_ready"
    assert max_excess_over_bucket(admitted, burst=1, rate=1000, period=1.0) <= 1e-9


# ======================================================================================
# Symptom 2: the sliding window refuses an early execution
# ======================================================================================


def test_symptom_2_sliding_window_refuses_an_early_execution(clock, make_limiter):
    """No early tolerance: 2 ms before its slot a sliding-window reservation is not ready,
    at its slot it is, and no closed window of ``period`` ever holds more than ``rate``."""
    limiter = make_limiter(5, 0.010, algorithm="sliding_window", shards=1)
    admitted: list[float] = []
    for _ in range(5):
        assert limiter.try_acquire().allowed
        admitted.append(clock.monotonic())
    reservation = limiter.reserve()
    assert reservation.execute_at == pytest.approx(0.010, abs=NS)
    assert reservation.execute_at > 0.010

    clock.advance(reservation.execute_at - 0.002)
    early = limiter.execute_reservation(reservation.id)
    if early.allowed:
        admitted.append(clock.monotonic())
    assert not early.allowed
    assert early.reason == "not_ready"
    assert early.retry_after == pytest.approx(0.002, abs=NS)

    clock.advance(reservation.wait_time())
    on_time = limiter.execute_reservation(reservation.id)
    assert on_time.allowed and on_time.reason is None
    admitted.append(clock.monotonic())
    assert len(admitted) == 6
    assert max_in_window(admitted, 0.010) == 5


# ======================================================================================
# Symptom 3: set_rate keeps the sliding-window log
# ======================================================================================


@pytest.mark.parametrize("shards", [1, 4])
def test_symptom_3_set_rate_keeps_the_sliding_window_log(make_limiter, drain, shards):
    """Changing the rate and changing it back forgets no admission: the window is still
    full, until the first of its ten admissions has left it."""
    limiter = make_limiter(10, 1.0, algorithm="sliding_window", shards=shards)
    assert drain(limiter) == 10
    limiter.set_rate(5)
    assert drain(limiter) == 0
    limiter.set_rate(10)
    assert drain(limiter) == 0
    refused = limiter.try_acquire()
    assert refused.reason == "rate_limited"
    assert refused.retry_after == pytest.approx(1.0, abs=NS)


def test_symptom_3_flipping_the_rate_from_a_thread_never_exceeds_the_larger_rate():
    """Real clock: one thread flips the rate between 100 and 200 per second while two
    threads hammer for 0.9 s; all of it falls in one window, so at most 200 get in."""
    limiter = ShardedRateLimiter(100, 1.0, algorithm="sliding_window")
    admitted: list[list[float]] = [[], []]
    stop = threading.Event()
    started = time.monotonic()
    deadline = started + 0.9

    def flip() -> None:
        while not stop.is_set():
            limiter.set_rate(200)
            limiter.set_rate(100)
            time.sleep(0)

    def hammer(i: int) -> None:
        while (now := time.monotonic()) < deadline:
            if limiter.try_acquire(f"k{i}"):
                admitted[i].append(now)

    flipper = threading.Thread(target=flip)
    flipper.start()
    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
    stop.set()
    flipper.join(timeout=30)
    assert not flipper.is_alive()
    times = admitted[0] + admitted[1]
    assert len(times) >= 100
    assert max_in_window(times, 1.0) <= 200


# ======================================================================================
# Symptom 4: a late execution does not add a second burst
# ======================================================================================


def test_symptom_4_a_late_execution_does_not_add_a_second_burst(clock, make_limiter):
    """Token bucket: ten tokens held at 0 go back to the budget when the reservation's grace
    ends; executed 30 s later it takes its tokens anew, so after the refilled bucket has let ten
    through it waits for ten more: never a second burst."""
    limiter = make_limiter(10, 1.0, burst_size=10, shards=1)
    reservation = limiter.reserve(count=10)
    assert reservation.execute_at == 0.0
    clock.advance(30.0)
    assert limiter.peek() == pytest.approx(10.0)
    assert sum(bool(limiter.try_acquire()) for _ in range(10)) == 10
    late = limiter.execute_reservation(reservation.id)
    assert not late.allowed and late.reason == "not_ready"
    assert late.retry_after == pytest.approx(1.0, abs=NS)
    clock.advance(1.0)
    assert limiter.execute_reservation(reservation.id).allowed
    admitted = [30.0] * 10 + [31.0] * 10
    assert max_excess_over_bucket(admitted, burst=10, rate=10, period=1.0) <= 1e-9


def test_symptom_4_sliding_window_a_late_execution_counts_when_it_proceeds(clock, make_limiter):
    """Sliding window: ten places held at 0 go back when the grace ends; executed at 30 s the
    reservation is admitted at 30 s and fills the window, so nothing else is admitted until
    the window has room."""
    limiter = make_limiter(10, 1.0, algorithm="sliding_window", shards=1)
    reservation = limiter.reserve(count=10)
    assert reservation.execute_at == 0.0
    clock.advance(30.0)
    assert limiter.execute_reservation(reservation.id).allowed
    after = limiter.try_acquire()
    assert not after.allowed and after.reason == "rate_limited"
    assert after.retry_after == pytest.approx(1.0, abs=NS)


# ======================================================================================
# Symptom 5: capacity freed by a cancel goes to the next in line
# ======================================================================================


def test_symptom_5_capacity_freed_by_a_cancel_goes_to_the_next_in_line(clock, make_limiter, drain):
    """Nine cancelled reservations ahead of the tenth: the tenth is first in line, so it
    executes on the first token (1 s) rather than at its promised 10 s; then peek and
    try_acquire agree at every instant."""
    limiter = make_limiter(1, 1.0, burst_size=1, shards=1)
    assert drain(limiter) == 1
    reservations = [limiter.reserve() for _ in range(10)]
    assert [r.execute_at for r in reservations] == pytest.approx(
        [float(k) for k in range(1, 11)], abs=NS
    )
    for r in reservations[:9]:
        assert limiter.cancel_reservation(r.id)
    clock.advance(1.0)
    last = limiter.execute_reservation(reservations[9].id)
    assert last.allowed and last.reason is None
    for step in (0.0, 0.25, 0.5, 0.3, 0.45, 1.1, 0.05, 2.3):
        clock.advance(step)
        available = limiter.peek()
        decision = limiter.try_acquire()
        assert (available >= 1) == bool(decision), (clock.monotonic(), available, decision)


@pytest.mark.asyncio
async def test_symptom_5_cancelled_waiters_make_the_queue_move_up():
    """Real clock: 200 waiters at 100/s, every other one cancelled once queued; the 100 left
    are all admitted, within the rate, in about 1 s (not the 2 s of the original slots)."""
    limiter = ShardedRateLimiter(100, 1.0, burst_size=1, shards=1)
    started = time.monotonic()
    assert limiter.try_acquire().allowed
    admitted_at: list[float] = [started]

    async def waiter():
        result = await limiter.acquire(max_wait=5.0)
        at = time.monotonic()
        if result.allowed:
            admitted_at.append(at)
        return result, at

    tasks = [asyncio.create_task(waiter()) for _ in range(200)]
    await asyncio.sleep(0.02)
    for task in tasks[::2]:
        task.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10.0)
    kept = outcomes[1::2]
    assert all(not isinstance(o, BaseException) for o in kept)
    assert [result.allowed for result, _ in kept] == [True] * 100
    assert all(
        isinstance(o, asyncio.CancelledError) or o[0].allowed for o in outcomes[::2]
    )
    finished = max(at for _, at in kept)
    assert finished - started < 1.5
    admit_times_within_rate(admitted_at, started, burst=1, rate=100)


# ======================================================================================
# Symptom 6: finished entries leave the book
# ======================================================================================


@pytest.mark.memory_only(reason="the in-memory book over 10,050 reservations (on a server: a minute of round trips)")
def test_symptom_6_finished_entries_leave_the_book(clock, make_limiter):
    """10,050 reservations executed one after another never fill a book of 10,000: an
    executed reservation leaves it at once."""
    limiter = make_limiter(1e6, 1.0, shards=1)
    for i in range(10_050):
        reservation = limiter.reserve()
        clock.advance(max(0.0, reservation.execute_at - clock.monotonic()))
        result = limiter.execute_reservation(reservation.id)
        assert result.allowed, (i, result)
    assert_book_active(limiter, 0)
    again = limiter.execute_reservation(reservation.id)
    assert not again.allowed and again.reason == "already_executed"


@pytest.mark.asyncio
@pytest.mark.memory_only(reason="max_reservations and the in-memory book")
async def test_symptom_6_finished_waiters_leave_the_book(clock, make_limiter):
    """With one reservation held and a book of 50, sixty acquires that each wait their turn
    all get in: a waiter that was admitted leaves the book."""
    limiter = make_limiter(100, 1.0, burst_size=2, shards=1, max_reservations=50)
    held = limiter.reserve()
    assert held.execute_at == 0.0
    for i in range(60):
        result = await limiter.acquire()
        assert result.allowed, (i, result)
    assert_book_active(limiter, 1)


def test_symptom_6_a_finished_id_still_answers_what_became_of_it(clock, make_limiter):
    """The book keeps only live entries, yet an executed id answers ``already_executed``
    and a cancelled one ``cancelled``."""
    limiter = make_limiter(10, 1.0, shards=1)
    executed = limiter.reserve()
    assert limiter.execute_reservation(executed.id).allowed
    assert_book_active(limiter, 0)
    again = limiter.execute_reservation(executed.id)
    assert not again.allowed and again.reason == "already_executed"
    cancelled = limiter.reserve()
    assert limiter.cancel_reservation(cancelled.id)
    assert_book_active(limiter, 0)
    refused = limiter.execute_reservation(cancelled.id)
    assert not refused.allowed and refused.reason == "cancelled"


# ======================================================================================
# Symptom 7: a decision costs the same with a long queue
# ======================================================================================


def _median_refusal_ns(limiter: ShardedRateLimiter, calls: int) -> float:
    costs = []
    for _ in range(calls):
        begin = time.perf_counter_ns()
        result = limiter.try_acquire()
        costs.append(time.perf_counter_ns() - begin)
        assert not result.allowed
    return statistics.median(costs)


@pytest.mark.memory_only(reason="max_reservations, and the in-memory book's cost")
def test_symptom_7_a_decision_costs_the_same_with_a_long_queue(make_limiter, drain):
    """A refusal behind 100,000 pending reservations costs less than 5x a refusal behind
    none, and booking the 100,000 is fast."""
    options = dict(burst_size=1, shards=1, max_reservations=200_000)
    empty = make_limiter(1000, 1.0, **options)
    assert drain(empty) == 1
    queued = make_limiter(1000, 1.0, **options)
    assert drain(queued) == 1
    begin = time.perf_counter()
    for i in range(100_000):
        queued.reserve(max_wait=None)
        if i % 1000 == 999 and time.perf_counter() - begin > 20.0:
            pytest.fail(f"booking took more than 20 s for {i + 1} of 100,000 reservations")
    booked_in = time.perf_counter() - begin
    assert_book_active(queued, 100_000)
    baseline = _median_refusal_ns(empty, 2000)
    loaded = _median_refusal_ns(queued, 2000)
    assert loaded / baseline < 5, (loaded, baseline)
    assert booked_in < 5.0


@pytest.mark.memory_only(reason="a sliding window of 1,000,000: Redis keeps at most 100,000 (documented)")
def test_symptom_7_a_refusal_is_cheap_with_a_full_sliding_window(make_limiter):
    """A sliding window holding a million admissions, with one reservation waiting, refuses
    in under 1 ms (median of 50)."""
    limiter = make_limiter(1_000_000, 3600.0, algorithm="sliding_window", shards=1)
    assert all(limiter.try_acquire(count=1000).allowed for _ in range(1000))
    reservation = limiter.reserve(max_wait=None)
    assert reservation.execute_at == pytest.approx(3600.0, abs=NS)
    assert _median_refusal_ns(limiter, 50) < 1_000_000


# ======================================================================================
# Symptom 8: reset admits waiters on the fresh budget
# ======================================================================================


@pytest.mark.asyncio
async def test_symptom_8_reset_admits_waiters_on_the_fresh_budget():
    """Real clock: five asyncio waiters queued, then reset(): all five are admitted on the
    fresh budget (never ``unknown_reservation``), within 1 s."""
    limiter = ShardedRateLimiter(10, 1.0, burst_size=1, shards=1)
    started = time.monotonic()
    assert limiter.try_acquire().allowed
    tasks = [asyncio.create_task(limiter.acquire(max_wait=2.0)) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in tasks)
    limiter.reset()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    elapsed = time.monotonic() - started
    assert [(r.allowed, r.reason) for r in results] == [(True, None)] * 5
    assert elapsed < 1.0


def test_symptom_8_reset_admits_blocked_threads_on_the_fresh_budget(run_threads):
    """Real clock: five threads blocked in acquire(), then reset(): all five are admitted
    (never ``unknown_reservation``), within 1 s."""
    limiter = ShardedRateLimiter(10, 1.0, burst_size=1, shards=1)
    started = time.monotonic()
    assert limiter.try_acquire().allowed
    results: list = [None] * 5

    def resetter() -> None:
        time.sleep(0.05)
        limiter.reset()

    def work(i: int) -> None:
        if i == 5:
            resetter()
        else:
            results[i] = limiter.acquire(max_wait=2.0)

    # Workers 0-4 wait; worker 5 resets after 50 ms.
    run_threads(work, 6)
    results = results[:5]
    elapsed = time.monotonic() - started
    assert [(r.allowed, r.reason) for r in results] == [(True, None)] * 5
    assert elapsed < 1.0


# ======================================================================================
# Symptom 9: tokens_remaining is fixed at the decision
# ======================================================================================


@pytest.mark.parametrize("shards", [1, 4])
def test_symptom_9_tokens_remaining_is_fixed_at_the_decision(clock, make_limiter, shards):
    """A result tells the tokens left when it was decided, however much is taken or
    refilled afterwards; so does a refusal."""
    limiter = make_limiter(10, 1.0, burst_size=10, shards=shards)
    first = limiter.try_acquire()
    assert first.allowed
    for _ in range(5):
        assert limiter.try_acquire().allowed
    assert first.tokens_remaining == 9.0
    for _ in range(4):
        assert limiter.try_acquire().allowed
    refused = limiter.try_acquire()
    assert not refused.allowed
    assert refused.tokens_remaining == 0.0
    clock.advance(0.55)
    later = limiter.try_acquire()
    assert later.allowed
    assert later.tokens_remaining == pytest.approx(4.5, abs=1e-9)
    assert refused.tokens_remaining == 0.0
    assert first.tokens_remaining == 9.0


# ======================================================================================
# Real-clock hammers: I1 (never over) and no lost capacity
# ======================================================================================


@pytest.mark.parametrize("shards", [1, 3])
def test_hammer_threads_in_blocking_acquire_stay_within_the_rate(shards):
    """Three threads in blocking acquire() at 1000/s: never over, nothing lost."""
    rate = 1000
    limiter = ShardedRateLimiter(rate=rate, period=1.0, burst_size=HAMMER_BURST, shards=shards)
    admitted: list[list[float]] = [[] for _ in range(3)]

    started, deadline, finished = thread_hammer(
        [blocking_acquirer(limiter, m) for m in admitted], HAMMER
    )
    check_within_rate([at for m in admitted for at in m], started, deadline, finished, rate)


@pytest.mark.asyncio
async def test_hammer_asyncio_waiters_stay_within_the_rate():
    """Fifty asyncio tasks awaiting acquire() at 2000/s: never over, nothing lost."""
    rate = 2000
    limiter = ShardedRateLimiter(rate=rate, period=1.0, burst_size=HAMMER_BURST, shards=2)
    admitted: list[float] = []
    started = time.monotonic()
    deadline = started + HAMMER

    async def task() -> None:
        while time.monotonic() < deadline:
            if await limiter.acquire("k", max_wait=1.0):
                admitted.append(time.monotonic())

    await asyncio.wait_for(asyncio.gather(*(task() for _ in range(50))), 10.0)
    check_within_rate(admitted, started, deadline, time.monotonic(), rate)


def test_hammer_mixed_acquire_reserve_execute_and_cancel_stay_within_the_rate():
    """Threads in acquire(), one thread reserving and executing on time, one reserving and
    cancelling: admissions (acquires and executions) never over, nothing lost."""
    rate = 1000
    limiter = ShardedRateLimiter(rate=rate, period=1.0, burst_size=HAMMER_BURST, shards=2)
    admitted: list[list[float]] = [[] for _ in range(4)]
    cancelled = [0]

    def executor(mine: list[float]):
        def loop(deadline: float) -> None:
            while time.monotonic() < deadline:
                try:
                    reservation = limiter.reserve("r", max_wait=1.0)
                except RateLimitError:
                    continue
                time.sleep(max(0.0, reservation.execute_at - time.time()))
                give_up = time.monotonic() + 2.0
                while True:
                    result = limiter.execute_reservation(reservation.id)
                    if result.reason != "not_ready" or time.monotonic() > give_up:
                        break
                    time.sleep(result.retry_after or 1e-4)
                if result.allowed:
                    mine.append(time.monotonic())

        return loop

    def canceller(deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                reservation = limiter.reserve("c", max_wait=1.0)
            except RateLimitError:
                continue
            if limiter.cancel_reservation(reservation.id):
                cancelled[0] += 1
            time.sleep(0.001)

    workers = [blocking_acquirer(limiter, m) for m in admitted[:3]]
    workers += [executor(admitted[3]), canceller]
    started, deadline, finished = thread_hammer(workers, HAMMER)
    assert cancelled[0] > 0
    assert len(admitted[3]) > 0
    check_within_rate([at for m in admitted for at in m], started, deadline, finished, rate)
