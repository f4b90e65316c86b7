"""The compatibility shim against the old pure-Python algorithm, side by side in one process.

Run with ``.venv/bin/python benches/shim_vs_old.py`` from the repository root (~15 s). The
contenders are ``flashcard_pipeline.rate_limiter.RateLimiter`` (the shim over the Rust engine)
and ``benches/old_rate_limiter.py``'s ``OldRateLimiter`` (the previous implementation's
algorithm, ported as a baseline), both built as
``(requests_per_minute=600_000, requests_per_hour=1_000_000, burst_size=10_000)``: the shim's
maximum rate and burst, so no timed call is refused. It prints:

1. ``await acquire()`` with the hourly window already holding 20,000 admitted requests
   (µs per call, ratio old / shim; target: shim >= 20x faster), and the same on a fresh
   limiter (empty window);
2. sync ``try_acquire()`` per call (ns per call, ratio; target: shim >= 1.5x faster than the
   old one), plus where the shim's time goes (the engine called directly);
3. PASS/MISS lines for the two targets.

Method: every figure is the best of 5 repeats; the repeats go round-robin over the contenders
(alternating which goes first), each repeat on fresh limiters, the garbage collector on. The
awaited calls are timed inside one coroutine. Every timed call must be admitted: ``acquire``
raises when refused, and afterwards the old limiter's hourly list and the shim's counters must
show exactly the calls made; the sync loops are checked through the shim's counters, the last
result, and a counting pass on a fresh limiter of each kind. The script always exits 0: it is a
report, MISS lines say what fell short.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable

from old_rate_limiter import OldRateLimiter

from flashcard_pipeline.rate_limiter import RateLimiter
from report import section

repeat = itertools.repeat
perf_counter = time.perf_counter

REPEATS = 5
RPM, RPH, BURST = 600_000, 1_000_000, 10_000  # the shim's caps for rpm and burst
PREFILL = 20_000  # admitted requests already in the hourly window
N_FULL = 1_000  # awaited acquire() calls per repeat with the window pre-filled (20,000 -> 21,000)
N_EMPTY = 100  # awaited calls per fresh limiter, empty window (0 -> 100) ...
EMPTY_LIMITERS = 10  # ... on this many fresh limiters per repeat
N_SYNC = 9_000  # try_acquire() calls per fresh limiter (< burst 10,000: never refused) ...
SYNC_LIMITERS = 10  # ... on this many fresh limiters per repeat

SHIM = "shim (Rust engine)"
OLD = "old algorithm (pure Python)"


def new_old() -> OldRateLimiter:
    return OldRateLimiter(requests_per_minute=RPM, requests_per_hour=RPH, burst_size=BURST)


def new_shim() -> RateLimiter:
    return RateLimiter(requests_per_minute=RPM, requests_per_hour=RPH, burst_size=BURST)


def fail(message: str) -> None:
    raise SystemExit(f"benchmark setup broken: {message}")


# --------------------------------------------------------------------------------------------
# Pre-filling the hourly window
# --------------------------------------------------------------------------------------------


def prefilled_old() -> OldRateLimiter:
    """An old limiter whose hourly list holds PREFILL stamps (its bucket untouched, full)."""
    limiter = new_old()
    append = limiter.hour_requests.append
    for _ in repeat(None, PREFILL):
        append(time.time())
    return limiter


def prefilled_shims(count: int) -> list[RateLimiter]:
    """``count`` shims, each with PREFILL admitted try_acquire() calls in its hourly window.

    The shim's bucket holds at most 10,000 and refills 10,000/s, so 20,000 admissions take
    about a second: the shims are filled together, each taking what its bucket holds, then
    they rest until their buckets are full again, so the timed calls start from a full bucket
    as the old limiter's do.
    """
    shims = [new_shim() for _ in range(count)]
    admitted = [0] * count
    while min(admitted) < PREFILL:
        for i, shim in enumerate(shims):
            f = shim.try_acquire
            while admitted[i] < PREFILL and f():
                admitted[i] += 1
        time.sleep(0.05)
    deadline = perf_counter() + 5.0
    while min(shim.tokens for shim in shims) < BURST - 1 and perf_counter() < deadline:
        time.sleep(0.05)
    for shim in shims:
        made = shim.get_status()["hour_requests_made"]
        if made != PREFILL:
            fail(f"the shim's hourly window holds {made}, expected {PREFILL}")
        if shim.tokens < N_FULL:
            fail(f"the shim's bucket holds {shim.tokens:.0f} tokens, fewer than {N_FULL}")
        shim.reset_stats()
    return shims


# --------------------------------------------------------------------------------------------
# Timed loops
# --------------------------------------------------------------------------------------------


async def _awaited(limiter: OldRateLimiter | RateLimiter, n: int) -> float:
    f = limiter.acquire
    t0 = perf_counter()
    for _ in repeat(None, n):
        await f()  # raises RateLimitError if refused: the run stops there
    return perf_counter() - t0


def time_awaited(limiter: OldRateLimiter | RateLimiter, n: int, window_before: int) -> float:
    """Seconds for n awaited acquire() calls in one coroutine, checked afterwards."""
    elapsed = asyncio.run(_awaited(limiter, n))
    if isinstance(limiter, OldRateLimiter):
        if len(limiter.hour_requests) != window_before + n:
            fail(f"old: hourly list holds {len(limiter.hour_requests)}, expected {window_before + n}")
    elif (made := limiter.get_status()["hour_requests_made"]) != window_before + n:
        fail(f"shim: hourly window holds {made}, expected {window_before + n}")
    return elapsed


def time_awaited_fresh(make: Callable[[], OldRateLimiter | RateLimiter]) -> float:
    """Seconds for N_EMPTY awaited calls on each of EMPTY_LIMITERS fresh limiters, summed."""
    total = 0.0
    for _ in range(EMPTY_LIMITERS):
        total += time_awaited(make(), N_EMPTY, 0)
    return total


def time_sync(make: Callable[[], OldRateLimiter | RateLimiter]) -> float:
    """Seconds for N_SYNC try_acquire() calls on each of SYNC_LIMITERS fresh limiters, summed."""
    total = 0.0
    for _ in range(SYNC_LIMITERS):
        limiter = make()
        f = limiter.try_acquire
        r = None
        t0 = perf_counter()
        for _ in repeat(None, N_SYNC):
            r = f()
        total += perf_counter() - t0
        if r is not True:
            fail(f"{type(limiter).__name__}: the last timed try_acquire was refused")
        if isinstance(limiter, RateLimiter) and (
            limiter.stats["requests_allowed"] != N_SYNC or limiter.stats["requests_denied"] != 0
        ):
            fail(f"shim: {limiter.stats} after {N_SYNC} admissions")
    return total


def time_engine_parts(single: bool) -> float:
    """The shim's parts called directly, same loop: its minute limiter's own try_acquire()
    (``single``), or its group's, which takes from the bucket and the hourly window
    together and makes a result (the shim's try_acquire is the group's ``admits``, which
    makes none)."""
    total = 0.0
    for _ in range(SYNC_LIMITERS):
        shim = new_shim()
        if single:
            f, arg = shim._minute.try_acquire, ()
        else:
            f, arg = shim.limits.try_acquire, ()
        r = None
        t0 = perf_counter()
        for _ in repeat(None, N_SYNC):
            r = f(*arg)
        total += perf_counter() - t0
        if not r:
            fail("engine: the last timed call was refused")
    return total


def empty_loop() -> float:
    total = 0.0
    for _ in range(SYNC_LIMITERS):
        t0 = perf_counter()
        for _ in repeat(None, N_SYNC):
            pass
        total += perf_counter() - t0
    return total


def counting_pass() -> None:
    """A fresh limiter of each kind admits all N_SYNC calls of the sync loop."""
    for limiter in (new_old(), new_shim()):
        admitted = sum(1 for _ in repeat(None, N_SYNC) if limiter.try_acquire())
        if admitted != N_SYNC:
            fail(f"{type(limiter).__name__}: only {admitted} of {N_SYNC} try_acquire allowed")


def best_round_robin(plan: list[tuple[str, Callable[[int], float]]]) -> dict[str, float]:
    """Best seconds of each contender over REPEATS; contender order alternates per repeat.
    Each callable gets the repeat index (to pick its pre-built limiter)."""
    best = {name: float("inf") for name, _ in plan}
    for r in range(REPEATS):
        order = plan if r % 2 == 0 else plan[::-1]
        for name, run in order:
            best[name] = min(best[name], run(r))
    return best


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def awaited_section() -> tuple[float, float]:
    section(f"await acquire(): µs per call, best of {REPEATS} round-robin repeats")
    olds = [prefilled_old() for _ in range(REPEATS)]
    shims = prefilled_shims(REPEATS)
    full = best_round_robin(
        [
            (OLD, lambda r: time_awaited(olds[r], N_FULL, PREFILL)),
            (SHIM, lambda r: time_awaited(shims[r], N_FULL, PREFILL)),
        ]
    )
    empty = best_round_robin(
        [
            (OLD, lambda r: time_awaited_fresh(new_old)),
            (SHIM, lambda r: time_awaited_fresh(new_shim)),
        ]
    )
    full_us = {k: v / N_FULL * 1e6 for k, v in full.items()}
    empty_us = {k: v / (N_EMPTY * EMPTY_LIMITERS) * 1e6 for k, v in empty.items()}
    print(f"{'hourly window':<34}{'old µs/call':>12}{'shim µs/call':>14}{'old / shim':>12}")
    rows = [
        (f"{PREFILL:,} entries (+{N_FULL:,} calls)", full_us),
        (f"empty (0 -> {N_EMPTY} calls) x{EMPTY_LIMITERS}", empty_us),
    ]
    for label, us in rows:
        print(f"{label:<34}{us[OLD]:>12.2f}{us[SHIM]:>14.3f}{us[OLD] / us[SHIM]:>11.1f}x")
    print(
        f"({N_FULL:,} calls in one coroutine per repeat, each repeat on its own limiters pre-filled\n"
        f" with {PREFILL:,} admitted requests; every call admitted. The old rebuilds its hourly\n"
        f" list on every call, so its cost grows with the window; the shim's does not.)"
    )
    return full_us[OLD] / full_us[SHIM], empty_us[OLD] / empty_us[SHIM]


def sync_section() -> tuple[float, dict[str, float]]:
    section(f"try_acquire() (sync): ns per call, best of {REPEATS} round-robin repeats")
    counting_pass()
    best = best_round_robin(
        [
            (OLD, lambda r: time_sync(new_old)),
            (SHIM, lambda r: time_sync(new_shim)),
            ("engine: one limiter", lambda r: time_engine_parts(single=True)),
            ("engine: both limits", lambda r: time_engine_parts(single=False)),
            ("empty loop", lambda r: empty_loop()),
        ]
    )
    calls = N_SYNC * SYNC_LIMITERS
    ns = {k: v / calls * 1e9 for k, v in best.items()}
    print(f"{'contender':<58}{'ns/call':>9}")
    print(f"{'old   try_acquire()  (no lock, bucket only)':<58}{ns[OLD]:>9.0f}")
    print(f"{'shim  try_acquire()  (bucket + hourly window, atomically)':<58}{ns[SHIM]:>9.0f}")
    print(f"{'      old / shim':<58}{ns[OLD] / ns[SHIM]:>8.2f}x")
    print("where the shim's time goes (same loop, engine called directly):")
    print(f"{'  Engine.try_acquire()  (the bucket alone)':<58}{ns['engine: one limiter']:>9.0f}")
    print(
        f"{'  LimiterGroup.try_acquire()  (both, with a RateLimitResult)':<58}"
        f"{ns['engine: both limits']:>9.0f}"
    )
    print(f"{'  empty loop':<58}{ns['empty loop']:>9.0f}")
    print(
        f"({N_SYNC:,} calls on each of {SYNC_LIMITERS} fresh limiters per repeat, all admitted;"
        f" figures include the loop)"
    )
    return ns[OLD] / ns[SHIM], ns


def main() -> int:
    t_start = perf_counter()
    load = os.getloadavg()
    print("The compatibility shim against the old rate limiter algorithm")
    print(
        f"Python {platform.python_version()} ({sys.implementation.name}), {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"both limiters: rpm={RPM:,}, rph={RPH:,}, burst={BURST:,}"
    )
    full_ratio, empty_ratio = awaited_section()
    sync_ratio, ns = sync_section()
    section("Targets (same run)")
    print(
        f"  {'PASS' if full_ratio >= 20 else 'MISS'}  await acquire() with {PREFILL:,} in the "
        f"hourly window: shim >= 20x faster   {full_ratio:.1f}x"
    )
    print(
        f"  {'PASS' if sync_ratio >= 1.5 else 'MISS'}  try_acquire(): shim >= 1.5x faster than "
        f"the old one                {sync_ratio:.2f}x"
    )
    print(f"  info  await acquire() on an empty window (no target)                 {empty_ratio:.1f}x")
    load = os.getloadavg()
    print(
        f"\n(total {perf_counter() - t_start:.1f} s; load average at the end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
