"""What a call costs with 0, 1,000 and 100,000 reservations pending (every call
must be O(log n) or better in the pending reservations: at most 3x its empty-book cost).

Two limiters per size, on a manual clock so that no slot comes due while measuring:

- *queued*: 1000/s, burst 1, drained, with ``n`` reservations waiting for their slots. A
  ``try_acquire`` is refused behind the queue, a ``reserve`` books the slot after the last,
  ``execute`` of a waiting reservation answers ``not_ready``, ``cancel`` gives back the
  last booking.
- *held*: a budget large enough to hold ``n`` reservations in escrow at once. A
  ``try_acquire`` is admitted, a ``reserve`` is held at once, ``execute`` admits it and
  ``cancel`` gives one back.

Each figure is the median over batches of 100 calls (ns per call, perf_counter_ns around
the batch), through the public Python API. Run: ``make bench`` or
``.venv/bin/python benches/pending_reservations.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from flashcard_pipeline.rate_limiter_v2 import ManualClock, ShardedRateLimiter

SIZES = (0, 1_000, 100_000)
BATCH = 100
BATCHES = 40


def per_call(batch: Callable[[], None]) -> float:
    """Median ns per call over BATCHES runs of ``batch`` (BATCH calls each)."""
    costs = []
    for _ in range(BATCHES):
        begin = time.perf_counter_ns()
        batch()
        costs.append((time.perf_counter_ns() - begin) / BATCH)
    return statistics.median(costs)


def timed_pairs(first: Callable[[], object], then: Callable[[object], object]) -> tuple[float, float]:
    """Median ns per call of ``first`` and of ``then(result of first)``, each batch timed
    on its own, so the pending count stays where it was."""
    firsts, thens = [], []
    for _ in range(BATCHES):
        begin = time.perf_counter_ns()
        made = [first() for _ in range(BATCH)]
        middle = time.perf_counter_ns()
        for item in made:
            then(item)
        end = time.perf_counter_ns()
        firsts.append((middle - begin) / BATCH)
        thens.append((end - middle) / BATCH)
    return statistics.median(firsts), statistics.median(thens)


def queued(n: int) -> dict[str, float]:
    clock = ManualClock()
    limiter = ShardedRateLimiter(
        1000, 1.0, burst_size=1, shards=1, clock=clock, max_reservations=n + 2 * BATCH + 1
    )
    assert limiter.try_acquire()
    waiting = [limiter.reserve(max_wait=None) for _ in range(n)]

    def refusals() -> None:
        for _ in range(BATCH):
            limiter.try_acquire()

    costs = {"try_acquire (refused)": per_call(refusals)}
    costs["reserve (queued)"], costs["cancel (queued)"] = timed_pairs(
        lambda: limiter.reserve(max_wait=None), lambda r: limiter.cancel_reservation(r.id)
    )
    # With none pending there is nothing to execute: this one reservation is the probe.
    probe = waiting[0].id if waiting else limiter.reserve(max_wait=None).id

    def not_ready() -> None:
        for _ in range(BATCH):
            limiter.execute_reservation(probe)

    costs["execute (not ready)"] = per_call(not_ready)
    assert limiter.get_status()["reservations"]["active"] == max(n, 1)
    return costs


def held(n: int) -> dict[str, float]:
    clock = ManualClock()
    limiter = ShardedRateLimiter(
        1e6, 1.0, burst_size=1e6, shards=1, clock=clock, max_reservations=n + 2 * BATCH + 1
    )
    pending = [limiter.reserve() for _ in range(n)]
    assert all(r.execute_at == r.reserved_at for r in pending)

    def admissions() -> None:
        clock.advance(0.01)  # refills what the last batch took
        for _ in range(BATCH):
            limiter.try_acquire()

    reserve, execute = timed_pairs(
        limiter.reserve, lambda r: limiter.execute_reservation(r.id)
    )
    _, cancel = timed_pairs(limiter.reserve, lambda r: limiter.cancel_reservation(r.id))
    costs = {
        "try_acquire (admitted)": per_call(admissions),
        "reserve (held)": reserve,
        "execute (admitted)": execute,
        "cancel (held)": cancel,
    }
    assert limiter.get_status()["reservations"]["active"] == n
    return costs


def main() -> None:
    rows: dict[str, dict[int, float]] = {}
    for n in SIZES:
        for name, cost in {**queued(n), **held(n)}.items():
            rows.setdefault(name, {})[n] = cost
    header = "".join(f"{f'{n:,} pending':>16}" for n in SIZES)
    print(f"Cost per call (ns, median of {BATCHES} batches of {BATCH}); ratio to 0 pending")
    print(f"{'':26}{header}{'100,000 / 0':>14}")
    for name, costs in rows.items():
        cells = "".join(f"{costs[n]:>16.0f}" for n in SIZES)
        print(f"{name:26}{cells}{costs[SIZES[-1]] / costs[0]:>13.2f}x")


if __name__ == "__main__":
    main()
