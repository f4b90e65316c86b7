"""Decisions per second on Redis: our ``DistributedRateLimiter(backend="redis")`` side by side
with the Python limiters that keep their budget in Redis, against one throwaway server.

Run with ``.venv/bin/python benches/redis_side_by_side.py [seconds]`` (``make bench`` does;
``seconds`` is the length of one measurement, 1.0 by default: ``0.05`` is a quick smoke run).
It needs ``redis-server`` on the PATH and the peers of ``requirements-bench.txt``. It starts
its own ``redis-server`` on a free loopback port with no persistence, in a temporary
directory, and kills it when it is done, whatever happens.

What it measures: one key, every decision admitted (a budget of 1e9 per second with a burst
of 1e9, so each figure is the cost of an admission round trip, never of a refusal), in four
modes:

- ``1 thread``: one Python thread calling in a loop; ours ``lim.try_acquire("k")``;
- ``4 threads``: 4 Python threads sharing one limiter, each calling in a loop (ours releases
  the GIL for the round trip; the peers' redis-py clients release it while they wait on the
  socket);
- ``4 processes``: 4 forked processes, each calling in a loop with the clients it inherited
  (every client here makes its own connections in a forked child): the deployment a shared
  budget is for (gunicorn or uvicorn workers);
- ``16 tasks``: 16 asyncio tasks on one event loop, each awaiting in a loop; ours
  ``await lim.try_acquire_async("k")``, the peers on redis-py's asyncio client;
- ``batch x100``: ours only, ``lim.try_acquire_many([("k", 1)] * 100)``, counted as 100
  decisions a call.

Contenders: ours (``DistributedRateLimiter(1e9, 1.0, namespace="bench", backend="redis",
burst_size=1e9)``); ``limits`` ``FixedWindowRateLimiter`` and ``MovingWindowRateLimiter`` on
``RedisStorage`` (``limits.aio`` with ``implementation="redispy"`` for the tasks);
``pyrate-limiter``'s ``RedisBucket`` (its sliding log in a sorted set) behind a ``Limiter``,
``try_acquire("k")`` (``try_acquire_async`` for the tasks); ``throttled-py``'s GCRA on its
``RedisStore``, ``limit("k")``. Each peer keeps its own Redis keys. As a reference (not a
peer), the rate of redis-py ``PING`` from one thread: one bare round trip through a Python
client.

Method: one measurement runs for ``seconds`` after a 0.1 s warm-up of the same loop; every
loop checks each answer, so a refusal cannot pass for speed (the refusals are counted and
printed). There are 3 rounds; in each, every contender of every mode is measured once,
ours and the peers alternating, the order rotated from round to round; the figure is the
median of the 3. Clients are built once: sync ones up front, asyncio ones on the one event
loop that all the task measurements share. The script always exits 0 once it has run: it is
a report, MISS lines say what fell short (a missing ``redis-server`` is an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from flashcard_pipeline.rate_limiter_v2 import DistributedRateLimiter
from report import fmt_rate, section

repeat = itertools.repeat
perf_counter = time.perf_counter

ROUNDS = 3
SECONDS = 1.0  # one measurement, after the warm-up
WARMUP = 0.1
THREADS = 4
PROCESSES = 4
TASKS = 16
BATCH = 100
KEY = "k"
RATE = 1e9  # per second, burst as large: no decision of this script is ever refused
LIMITS_RATE = "1000000000/second"
MODES = ("1 thread", f"{THREADS} threads", f"{PROCESSES} processes", f"{TASKS} tasks",
         f"batch x{BATCH}")
SINGLE, THREADED, FORKED, TASKED, BATCHED = MODES
OURS = "ours"
REFERENCE = "redis-py PING"  # a bare round trip: a reference, not a peer
TARGETS = {SINGLE: 1.3, THREADED: 3.0, TASKED: 3.0}  # ours / best peer
BATCH_TARGET = 100_000  # decisions/s

# A sync decider makes one call and returns how many decisions it admitted (True is 1).
Decide = Callable[[], int]
# An asyncio decider is a coroutine function doing the same.
DecideAsync = Callable[[], Awaitable[int]]


# --------------------------------------------------------------------------------------------
# The throwaway server
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A fresh ``redis-server`` on a free loopback port, no persistence; killed on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: apt-get install redis-server")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="redis-bench-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tmp, "--logfile", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = perf_counter() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or perf_counter() > deadline:
                    raise SystemExit(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Timed loops: each returns (decisions, admitted, seconds)
# --------------------------------------------------------------------------------------------


def loop_sync(decide: Decide, per_call: int, seconds: float) -> tuple[int, int, float]:
    calls = admitted = 0
    t0 = perf_counter()
    stop = t0 + seconds
    while True:
        for _ in repeat(None, 10):
            admitted += decide()
        calls += 10
        now = perf_counter()
        if now >= stop:
            return calls * per_call, admitted, now - t0


def loop_threads(decide: Decide, per_call: int, seconds: float) -> tuple[int, int, float]:
    """THREADS threads sharing ``decide``, started together; their total over the wall time."""
    counts = [(0, 0)] * THREADS
    barrier = threading.Barrier(THREADS + 1)

    def worker(i: int) -> None:
        barrier.wait()
        decisions, admitted, _ = loop_sync(decide, per_call, seconds)
        counts[i] = (decisions, admitted)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = perf_counter()
    for t in threads:
        t.join()
    elapsed = perf_counter() - t0
    return sum(d for d, _ in counts), sum(a for _, a in counts), elapsed


def loop_processes(decide: Decide, per_call: int, seconds: float) -> tuple[int, int, float]:
    """PROCESSES forked processes calling ``decide`` in a loop (each warms up first, making
    its own connections: every client here reconnects in a forked child), started together;
    their total over the wall time."""
    fork = multiprocessing.get_context("fork")
    start = fork.Barrier(PROCESSES + 1)
    totals = fork.Queue()

    def worker() -> None:
        loop_sync(decide, per_call, WARMUP)
        start.wait(timeout=60)
        decisions, admitted, _ = loop_sync(decide, per_call, seconds)
        totals.put((decisions, admitted))

    workers = [fork.Process(target=worker) for _ in range(PROCESSES)]
    for w in workers:
        w.start()
    start.wait(timeout=60)  # a worker that failed to start breaks it: reported, not hung
    t0 = perf_counter()
    counts = [totals.get(timeout=seconds + 60) for _ in workers]
    elapsed = perf_counter() - t0
    for w in workers:
        w.join()
    return sum(d for d, _ in counts), sum(a for _, a in counts), elapsed


async def loop_tasks(decide: DecideAsync, seconds: float) -> tuple[int, int, float]:
    """TASKS tasks on the running loop, each awaiting ``decide`` until the deadline."""

    async def worker(stop: float) -> tuple[int, int]:
        calls = admitted = 0
        while perf_counter() < stop:
            admitted += await decide()
            calls += 1
        return calls, admitted

    t0 = perf_counter()
    counts = await asyncio.gather(*(worker(t0 + seconds) for _ in range(TASKS)))
    elapsed = perf_counter() - t0
    return sum(c for c, _ in counts), sum(a for _, a in counts), elapsed


# --------------------------------------------------------------------------------------------
# Contenders: one entry per (contender, mode), each a run(seconds) -> (decisions, admitted, s)
# --------------------------------------------------------------------------------------------

Run = Callable[[float], tuple[int, int, float]]


class Bench:
    """What to measure: ``plan[mode][contender]`` is a run; and what to say and to close."""

    # (plain classes, not dataclasses: tests/test_bench_scripts.py loads bench scripts without
    # registering them in sys.modules, which dataclasses with string annotations need)
    def __init__(self, url: str, runner: asyncio.Runner) -> None:
        self.url = url
        self.runner = runner
        self.plan: dict[str, dict[str, Run]] = {mode: {} for mode in MODES}
        self.skipped: list[str] = []
        self.versions: dict[str, str] = {}
        self.closers: list[Callable[[], Any]] = []

    def add_sync(self, name: str, decide: Decide, threads: bool = True) -> None:
        self.plan[SINGLE][name] = lambda s: warm_then(loop_sync, decide, 1, s)
        if threads:
            self.plan[THREADED][name] = lambda s: warm_then(loop_threads, decide, 1, s)
            self.plan[FORKED][name] = lambda s: loop_processes(decide, 1, s)

    def add_async(self, name: str, make: Callable[[], Awaitable[DecideAsync]]) -> None:
        """``make`` builds the client on the shared loop (asyncio clients bind to a loop)."""
        try:
            decide = self.runner.run(make())
            self.runner.run(decide())  # connects, loads scripts, and checks the call works
        except Exception as error:  # a peer that cannot run is reported, not fatal
            self.skipped.append(f"{name} ({TASKED}): skipped: {type(error).__name__}: {error}")
            return

        def run(seconds: float) -> tuple[int, int, float]:
            self.runner.run(loop_tasks(decide, WARMUP))
            return self.runner.run(loop_tasks(decide, seconds))

        self.plan[TASKED][name] = run

    def peer(self, name: str, build: Callable[[], None]) -> None:
        """Runs a peer's setup; a peer that is not installed or fails is skipped, with why."""
        try:
            build()
        except Exception as error:
            self.skipped.append(f"{name}: skipped: {type(error).__name__}: {error}")


def warm_then(loop: Callable[[Decide, int, float], tuple[int, int, float]], decide: Decide,
              per_call: int, seconds: float) -> tuple[int, int, float]:
    loop(decide, per_call, WARMUP)
    return loop(decide, per_call, seconds)


def build_ours(bench: Bench) -> None:
    lim = DistributedRateLimiter(
        RATE, 1.0, namespace="bench", backend="redis", redis_url=bench.url, burst_size=RATE
    )
    try_acquire, try_acquire_async, many = lim.try_acquire, lim.try_acquire_async, lim.try_acquire_many
    requests = [(KEY, 1)] * BATCH

    def decide() -> int:
        return bool(try_acquire(KEY))

    async def decide_async() -> int:
        return bool(await try_acquire_async(KEY))

    def decide_batch() -> int:
        return sum(map(bool, many(requests)))

    async def make() -> DecideAsync:
        return decide_async

    bench.add_sync(OURS, decide)
    bench.add_async(OURS, make)
    bench.plan[BATCHED][OURS] = lambda s: warm_then(loop_sync, decide_batch, BATCH, s)


def build_reference(bench: Bench) -> None:
    import redis

    client = redis.Redis.from_url(bench.url)
    ping = client.ping
    bench.versions["redis-py"] = redis.__version__
    bench.versions["redis-server"] = str(client.info("server")["redis_version"])
    bench.plan[SINGLE][REFERENCE] = lambda s: warm_then(loop_sync, lambda: bool(ping()), 1, s)
    bench.closers.append(client.close)


def build_limits(bench: Bench) -> None:
    import limits
    import limits.aio.strategies
    import limits.storage
    import limits.strategies

    bench.versions["limits"] = limits.__version__
    item = limits.parse(LIMITS_RATE)
    for label, sync_cls, async_cls in (
        ("fixed", limits.strategies.FixedWindowRateLimiter, limits.aio.strategies.FixedWindowRateLimiter),
        ("moving", limits.strategies.MovingWindowRateLimiter, limits.aio.strategies.MovingWindowRateLimiter),
    ):
        name = f"limits {label}"
        # one key prefix per strategy and client: the strategies' keys would collide
        storage = limits.storage.storage_from_string(bench.url, key_prefix=f"LIMITS-{label}")
        hit = sync_cls(storage).hit

        def decide(hit: Any = hit) -> int:
            return hit(item, KEY)

        decide()
        bench.add_sync(name, decide)

        async def make(async_cls: Any = async_cls, label: str = label) -> DecideAsync:
            storage = limits.storage.storage_from_string(
                "async+" + bench.url, implementation="redispy", key_prefix=f"LIMITS-aio-{label}"
            )
            bench.closers.append(lambda: bench.runner.run(storage.bridge.storage.aclose()))
            hit = async_cls(storage).hit

            async def decide() -> int:
                return await hit(item, KEY)

            return decide

        bench.add_async(name, make)


def build_pyrate(bench: Bench) -> None:
    import pyrate_limiter as pl
    import redis
    import redis.asyncio

    bench.versions["pyrate-limiter"] = pl.__version__
    name = "pyrate"
    rates = [pl.Rate(int(RATE), pl.Duration.SECOND)]
    client = redis.Redis.from_url(bench.url)
    limiter = pl.Limiter(pl.RedisBucket.init(rates, client, "pyrate-bench"))
    bench.closers += [limiter.close, client.close]
    try_acquire = limiter.try_acquire

    # blocking=True (its default): with blocking=False a thread that finds the Limiter's lock
    # held by another thread gives up at once, so 4 threads would be refused most calls. The
    # budget never runs out here, so the call never sleeps.
    def decide() -> int:
        return try_acquire(KEY)

    decide()
    bench.add_sync(name, decide)

    async def make() -> DecideAsync:
        aclient = redis.asyncio.Redis.from_url(bench.url)
        alimiter = pl.Limiter(await pl.RedisBucket.init(rates, aclient, "pyrate-bench-aio"))
        bench.closers += [alimiter.close, lambda: bench.runner.run(aclient.aclose())]
        try_acquire_async = alimiter.try_acquire_async

        async def decide() -> int:
            return await try_acquire_async(KEY)

        return decide

    bench.add_async(name, make)


def build_throttled(bench: Bench) -> None:
    import throttled
    import throttled.asyncio

    bench.versions["throttled-py"] = throttled.__version__
    name = "throttled"
    quota = throttled.per_sec(int(RATE), burst=int(RATE))
    limiter = throttled.Throttled(
        using="gcra", quota=quota, store=throttled.RedisStore(server=bench.url),
        key_prefix="throttled-bench",
    )
    limit = limiter.limit

    def decide() -> int:
        return not limit(KEY).limited

    decide()
    bench.add_sync(name, decide)

    async def make() -> DecideAsync:
        store = throttled.asyncio.RedisStore(server=bench.url)
        alimiter = throttled.asyncio.Throttled(
            using="gcra", quota=throttled.asyncio.per_sec(int(RATE), burst=int(RATE)),
            store=store, key_prefix="throttled-bench-aio",
        )
        bench.closers.append(lambda: bench.runner.run(store._backend.get_client().aclose()))
        alimit = alimiter.limit

        async def decide() -> int:
            return not (await alimit(KEY)).limited

        return decide

    bench.add_async(name, make)


# --------------------------------------------------------------------------------------------
# Measurement and report
# --------------------------------------------------------------------------------------------


class Figure:
    """One contender in one mode: decisions/s of each round, refusals, and why it failed."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.refused = 0
        self.failed = ""

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


def measure(bench: Bench, seconds: float) -> dict[str, dict[str, Figure]]:
    figures = {mode: {name: Figure() for name in runs} for mode, runs in bench.plan.items()}
    for round_ in range(ROUNDS):
        for mode, runs in bench.plan.items():
            names = list(runs)
            # ours first in round 1, then later in the order: no contender always goes first
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                figure = figures[mode][name]
                if figure.failed:
                    continue
                try:
                    decisions, admitted, elapsed = runs[name](seconds)
                except Exception as error:  # reported in the table
                    figure.failed = f"{type(error).__name__}: {error}"
                    traceback.print_exc()
                    continue
                figure.rates.append(decisions / elapsed)
                figure.refused += decisions - admitted
    return figures


def best_peer(row: dict[str, Figure]) -> tuple[str, float]:
    peers = [(name, f.median) for name, f in row.items()
             if name not in (OURS, REFERENCE) and f.rates and not f.refused]
    return max(peers, key=lambda p: p[1]) if peers else ("", 0.0)


def report(bench: Bench, figures: dict[str, dict[str, Figure]], seconds: float) -> None:
    names = [OURS] + [n for n in dict.fromkeys(n for row in figures.values() for n in row)
                      if n not in (OURS, REFERENCE)]
    if any(REFERENCE in row for row in figures.values()):
        names.append(REFERENCE)
    title = (f"Decisions/s, one key, every decision admitted: median of {ROUNDS} interleaved "
             f"rounds of {seconds:g} s")
    section(title)
    width = max(12, *(len(n) + 2 for n in names))
    print(f"{'mode':<12}" + "".join(f"{n:>{width}}" for n in names) + "   ours / best peer")
    for mode in MODES:
        row = figures.get(mode, {})
        cells = []
        for name in names:
            f = row.get(name)
            if f is None:
                cells.append("-")
            elif f.failed and not f.rates:
                cells.append("failed")
            else:
                cells.append(fmt_rate(f.median) + ("*" if f.refused else ""))
        peer, peer_rate = best_peer(row)
        ours = row.get(OURS)
        ratio = f"{ours.median / peer_rate:.2f}x ({peer})" if ours and ours.rates and peer_rate else ""
        print(f"{mode:<12}" + "".join(f"{c:>{width}}" for c in cells) + f"   {ratio}")
    notes = []
    for name, label in ((OURS, "ours, one thread"), (REFERENCE, "a bare redis-py PING round trip")):
        f = figures[SINGLE].get(name)
        if f and f.median:
            notes.append(f"{label}: {1e6 / f.median:.0f} us a call")
    notes.append(f"batch x{BATCH}: one call decides {BATCH}, counted as {BATCH} decisions")
    print(f"({'; '.join(notes)})")

    refused = [(mode, name, f.refused) for mode, row in figures.items() for name, f in row.items()
               if f.refused]
    for mode, name, count in refused:
        print(f"  * {name}, {mode}: {count} decisions refused (left out of the best peer)")
    for mode, row in figures.items():
        for name, f in row.items():
            if f.failed:
                print(f"  {name}, {mode}: failed after {len(f.rates)} rounds: {f.failed}")
    for line in bench.skipped:
        print(f"  {line}")

    section(f"Every round (decisions/s, rounds 1 to {ROUNDS}; each round rotates the order of the contenders)")
    for mode in MODES:
        for name, f in figures.get(mode, {}).items():
            rounds = "  ".join(f"{fmt_rate(r):>10}" for r in f.rates)
            print(f"{mode:<12} {name:<16} {rounds}")

    section("Targets (same run)")
    for mode, label in ((SINGLE, "single thread"), (THREADED, f"{THREADS} threads"),
                        (TASKED, f"{TASKS} tasks")):
        target = TARGETS[mode]
        ours = figures.get(mode, {}).get(OURS)
        peer, peer_rate = best_peer(figures.get(mode, {}))
        if not ours or not ours.rates or not peer_rate:
            print(f"{label}: not measured (no figure for ours or for any peer) (target >= {target:g}x): MISS")
            continue
        ratio = ours.median / peer_rate
        verdict = "OK" if ratio >= target and not ours.refused else "MISS"
        print(f"{label}: {ratio:.2f}x the best peer ({peer}, {fmt_rate(peer_rate)}) "
              f"(target >= {target:g}x): {verdict}")
    batch = figures.get(BATCHED, {}).get(OURS)
    rate = batch.median if batch else 0.0
    verdict = "OK" if rate >= BATCH_TARGET and batch and not batch.refused else "MISS"
    print(f"batch: {rate:,.0f} decisions/s (target >= {BATCH_TARGET:,}): {verdict}")


def main(seconds: float = SECONDS) -> dict[str, dict[str, Figure]]:
    t_start = perf_counter()
    load = os.getloadavg()
    print("Redis side-by-side rate limiter benchmark")
    with redis_server() as url, asyncio.Runner() as runner:
        bench = Bench(url, runner)
        try:
            build_ours(bench)
            bench.peer("redis-py", lambda: build_reference(bench))
            bench.peer("limits", lambda: build_limits(bench))
            bench.peer("pyrate", lambda: build_pyrate(bench))
            bench.peer("throttled", lambda: build_throttled(bench))
            versions = ", ".join(f"{k} {v}" for k, v in bench.versions.items())
            print(
                f"Python {platform.python_version()} ({sys.implementation.name}), "
                f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
                f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {versions}; server at {url}"
            )
            figures = measure(bench, seconds)
        finally:
            for close in reversed(bench.closers):
                with contextlib.suppress(Exception):
                    close()
    report(bench, figures, seconds)
    load = os.getloadavg()
    print(f"\n(total {perf_counter() - t_start:.1f} s; load average at the end "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    return figures


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else SECONDS)
    sys.exit(0)
