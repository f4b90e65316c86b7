"""Per-key budgets at scale: sync calls over 1, 10,000 and 1,000,000 keys, and bytes
per key, for our limiter and its Python peers, in one run.

Run with ``.venv/bin/python benches/keys.py`` (``make bench`` does). It prints:

1. calls/s of a sync call cycling over 1, 10,000 and 1,000,000 distinct keys, every call
   allowed: ours ``try_acquire(key)`` (``scope="key"``: one budget per key), ``token-bucket``
   ``consume(key)`` and ``limits`` ``hit(item, key)`` on its ``MemoryStorage`` (fixed window,
   sliding-window counter, moving window); the time per call against the same contender's
   one-key figure, "ours / peer" per key count, and PASS/MISS for the per-key target (ours at
   10,000 and 1,000,000 keys at most 20 % slower per call than at one key);
2. bytes per key: the RSS of a fresh process before and after 1,000,000 keys (one call each),
   divided by the key count, with the key strings alive in both readings so that the figure
   is the limiter's own state; for ours a third reading after the keys went idle and
   ``len(limiter)`` dropped them;
3. (``scope="key"`` only; ``--flood`` runs this part alone) a flood of new keys into a full
   table: ours with ``max_keys`` keys kept, every one in use, and the calls/s of a known key
   in windows of 0.5 s, alone and while another thread sends 100,000 new keys a second (all
   refused ``too_many_keys``; in bursts every 50 ms, so that the GIL changes hands 20 times a
   second, not at every call), alternating; PASS/MISS for the known key keeping at least 80 %
   of its calls/s, and ``len(limiter)`` after (no key forgotten).

Method (as in ``side_by_side.py``): the timed loop is ``for k in order: if f(k): allowed += 1``
with the bound method in a local (limits: ``f(item, k)``), the same loop for everyone, its own
cost included and shown on the "loop alone" row. ``order`` is the key list in one fixed shuffled
order, repeated up to the number of calls, the same list for every contender. Every limiter is
built and warmed once per key count (a pass that touches every key, so that the timing measures
keys that already have state, not insertion) and then timed in repeats that go round-robin over
the contenders; the figure is the best repeat; the garbage collector stays on. Every call in the
warm-up pass and in the timed loops must be allowed: they are counted and printed.

``--scope key`` benchmarks ours with ``scope="key"``; ``--scope global`` runs ours with one
budget shared by all keys (keys then only pick a shard), a stand-in while ``scope="key"`` is
not built; ``--scope auto`` (the default) takes ``key`` when this build accepts it and says so
when it falls back to the stand-in. The script always exits 0 once it has run: it is a report,
MISS lines say what fell short.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import itertools
import json
import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import limits
import limits.storage
import limits.strategies
import token_bucket

from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter
from report import fmt_rate, section

perf_counter = time.perf_counter

KEY_COUNTS = (1, 10_000, 1_000_000)
REPEATS = 5
LIMITS_REPEATS = 3  # limits takes part in the first 3 rounds only: its runs take seconds
N_OURS = 2_000_000  # calls per timed run (~0.2 s); two cycles over 1,000,000 keys
N_TOKEN_BUCKET = 500_000  # ~0.2 s at one key, ~0.7 s at 1,000,000 keys
N_LIMITS = 50_000  # limits is 20-100x slower, and its 1,000,000-key runs pay its expiry pass
MEMORY_KEYS = 1_000_000
MAX_KEYS = 2_000_000
SEED = 9  # the shuffled order
HUGE = 10**12
TARGET_SLOWDOWN = 1.20  # the target: at most 20 % slower per call than one key

# Ours for throughput. scope="key": every key gets 2e7 tokens, refills 100/s. The warm-up call
# takes WARM_COUNT tokens from each key so that no key is back to a fresh key's state (which
# the limiter may drop) for 1000 s, longer than the run: the timed loops find every key with
# state. The stand-in (one budget for all keys) takes one token per warm-up call from 1e8.
OURS_KEY: dict[str, Any] = dict(rate=100.0, period=1.0, burst_size=2e7)
OURS_GLOBAL: dict[str, Any] = dict(rate=1000.0, period=1.0, burst_size=1e8)
WARM_COUNT_KEY = 100_000
# Ours for bytes per key: one call takes a key's whole budget (burst 1), which comes back after
# 2 s; inserting 1,000,000 keys takes well under that, so no key is idle before the "after"
# reading, and the idle step starts after one refill and polls until the keys are dropped.
OURS_MEMORY_KEY: dict[str, Any] = dict(rate=1.0, period=2.0)
OURS_MEMORY_GLOBAL: dict[str, Any] = dict(rate=1e7, period=2.0)  # the stand-in: one budget that takes them all


def extension_built() -> str:
    """When the extension this process loaded was built (the venv is shared while others work)."""
    import flashcard_pipeline._native as native

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(native.__file__)))


def make_keys(n: int) -> list[str]:
    return [f"user:{i}" for i in range(n)]


def make_ours(scope: str, *, algorithm: str = "token_bucket", **settings: Any) -> ShardedRateLimiter:
    if scope == "key":
        return ShardedRateLimiter(algorithm=algorithm, scope="key", max_keys=MAX_KEYS, **settings)
    return ShardedRateLimiter(algorithm=algorithm, **settings)


def has_len(limiter: object) -> bool:
    return hasattr(type(limiter), "__len__")


def pick_scope(requested: str) -> tuple[str, str]:
    """The scope ours runs with, and why, when it is not the one asked for."""
    if requested == "global":
        return "global", "asked for with --scope global"
    try:
        make_ours("key", rate=1.0, period=1.0)
    except (NotImplementedError, TypeError, ValueError) as exc:
        if requested == "key":
            raise SystemExit(f'--scope key: this build refuses scope="key": {exc}') from exc
        return "global", f"{type(exc).__name__}: {exc}"
    return "key", ""


# --------------------------------------------------------------------------------------------
# Contenders for throughput: each builds one limiter, warms it over every key, and times runs.
# --------------------------------------------------------------------------------------------


def loop_one_arg(f: Callable[[str], Any], order: list[str]) -> tuple[float, int]:
    allowed = 0
    t0 = perf_counter()
    for k in order:
        if f(k):
            allowed += 1
    return perf_counter() - t0, allowed


def loop_limits(f: Callable[[Any, str], Any], item: Any, order: list[str]) -> tuple[float, int]:
    allowed = 0
    it = item
    t0 = perf_counter()
    for k in order:
        if f(it, k):
            allowed += 1
    return perf_counter() - t0, allowed


def loop_alone(order: list[str]) -> tuple[float, int]:
    allowed = 0
    t0 = perf_counter()
    for k in order:
        if k:  # reads the key object, as every limiter must
            allowed += 1
    return perf_counter() - t0, allowed


@dataclass
class Instance:
    """One warmed limiter of a contender, for one key count."""

    run: Callable[[list[str]], tuple[float, int]]  # timed loop over ``order``: (seconds, allowed)
    warm_allowed: int  # calls allowed in the warm-up pass, one per key
    after_run: Callable[[], None] = lambda: None
    keys_with_state: Callable[[], int | None] = lambda: None


@dataclass
class Contender:
    name: str
    calls: int  # per timed run
    build: Callable[[list[str]], Instance]  # a fresh limiter, warmed with one call per key
    repeats: int = REPEATS
    layout: str = "visit"  # which list of key objects the timed loop walks
    describe: str = ""
    best: dict[int, float] = field(default_factory=dict)  # key count -> best seconds
    allowed: dict[int, tuple[int, int]] = field(default_factory=dict)  # key count -> (allowed, calls)
    warm_allowed: dict[int, tuple[int, int]] = field(default_factory=dict)
    state_after: dict[int, int | None] = field(default_factory=dict)


def contender_loop(layout: str = "visit") -> Contender:
    name = "loop alone  (no limiter)" if layout == "visit" else "loop alone, key objects scattered"
    return Contender(name, N_OURS, lambda keys: Instance(loop_alone, len(keys)), layout=layout)


def contender_ours(scope: str) -> Contender:
    settings = OURS_KEY if scope == "key" else OURS_GLOBAL
    warm_count = WARM_COUNT_KEY if scope == "key" else 1

    def build(keys: list[str]) -> Instance:
        limiter = make_ours(scope, **settings)
        f = limiter.try_acquire
        warm_allowed = sum(1 for k in keys if f(k, warm_count))

        def keys_with_state() -> int | None:
            return len(limiter) if scope == "key" and has_len(limiter) else None  # type: ignore[arg-type]

        return Instance(lambda order: loop_one_arg(f, order), warm_allowed,
                        keys_with_state=keys_with_state)

    return Contender("ours  try_acquire(key)", N_OURS, build, describe=repr(make_ours(scope, **settings)))


def contender_token_bucket() -> Contender:
    def build(keys: list[str]) -> Instance:
        limiter = token_bucket.Limiter(3e6, HUGE, token_bucket.MemoryStorage())
        f = limiter.consume
        warm_allowed = sum(1 for k in keys if f(k))
        return Instance(lambda order: loop_one_arg(f, order), warm_allowed)

    return Contender("token-bucket  consume(key)", N_TOKEN_BUCKET, build)


LIMITS_STRATEGIES = {
    # name: (strategy, item for throughput); the windows are an hour where nothing forces a
    # shorter one, so a key's state lives through the run (a one-second fixed window would
    # expire each key between two visits and time insertion)
    "fixed window   ": (limits.strategies.FixedWindowRateLimiter, limits.RateLimitItemPerHour(HUGE)),
    "sliding counter": (limits.strategies.SlidingWindowCounterRateLimiter, limits.RateLimitItemPerHour(HUGE)),
    # its list per key holds every call in the window and grows at the front: with an hour,
    # the one-key list would hold every call of the run; one second, as in side_by_side.py
    "moving window  ": (limits.strategies.MovingWindowRateLimiter, limits.RateLimitItemPerSecond(HUGE)),
}


class suspended_expiry:
    """limits' MemoryStorage runs a pass over every key 10 ms after any call (a timer thread).
    During an untimed warm-up of 1,000,000 keys that pass runs back to back and made the
    warm-up take 20 s per strategy; suspended there, the state at the end is the same (nothing
    has expired), and one pass runs before timing. The timed loops run it as usual."""

    def __init__(self, storage: limits.storage.MemoryStorage) -> None:
        self.storage = storage

    def __enter__(self) -> None:
        self.storage.timer.join()
        self.storage._MemoryStorage__schedule_expiry = lambda: None  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        del self.storage._MemoryStorage__schedule_expiry  # type: ignore[attr-defined]
        self.storage._MemoryStorage__schedule_expiry()  # type: ignore[attr-defined]
        self.storage.timer.join()


def contender_limits(label: str) -> Contender:
    strategy, item = LIMITS_STRATEGIES[label]

    def build(keys: list[str]) -> Instance:
        storage = limits.storage.MemoryStorage()
        f = strategy(storage).hit
        with suspended_expiry(storage):
            warm_allowed = sum(1 for k in keys if f(item, k))
        # after each timed run: its expiry pass (a thread, over every key) must not run on
        # into the next contender's loop
        return Instance(lambda order: loop_limits(f, item, order), warm_allowed,
                        after_run=storage.timer.join)

    return Contender(f"limits  {label} hit(item, key)", N_LIMITS, build, repeats=LIMITS_REPEATS)


def make_contenders(scope: str) -> list[Contender]:
    return [
        contender_loop(),
        contender_loop("scattered"),
        contender_ours(scope),
        contender_token_bucket(),
        *(contender_limits(label) for label in LIMITS_STRATEGIES),
    ]


def throughput(contenders: list[Contender]) -> None:
    """Every contender at every key count is built and warmed first; then each repeat times
    them all, key counts and contenders in turn, so that background load hits the 1-key and
    the 1,000,000-key figures alike (the ratio between them is the target)."""
    longest = max(c.calls for c in contenders)
    orders: dict[tuple[int, str, int], list[str]] = {}
    instances: dict[tuple[int, int], Instance] = {}
    for key_count in KEY_COUNTS:
        ids = list(range(key_count))
        random.Random(SEED).shuffle(ids)
        # The limiters are warmed with one set of key objects (in creation order) and timed
        # with another, equal but distinct, created in the order of the visits: the loop then
        # reads its key objects one after the other in memory, as a server reads the key it
        # has just parsed from a request, and each limiter must find its own stored key (a
        # peer's dict compares against the object it stored; ours its own copy). Visiting the
        # warm-up objects themselves in shuffled order costs the loop alone a cache miss per
        # call at 1,000,000 keys, which no limiter can help: the "scattered" row shows it.
        warm_keys = make_keys(key_count)
        layouts = {"visit": [f"user:{i}" for i in ids], "scattered": [warm_keys[i] for i in ids]}
        cycles = math.ceil(longest / key_count)
        for layout, keys in layouts.items():
            cycled = (keys * cycles)[:longest]
            for n in {c.calls for c in contenders}:
                orders[key_count, layout, n] = cycled[:n]
        for i, c in enumerate(contenders):
            instances[i, key_count] = inst = c.build(warm_keys)
            c.warm_allowed[key_count] = (inst.warm_allowed, key_count)
            c.best[key_count] = math.inf
            c.allowed[key_count] = (0, 0)
        del warm_keys, layouts, cycled
    gc.collect()
    for r in range(REPEATS):
        for key_count in KEY_COUNTS:
            for i, c in enumerate(contenders):
                if r >= c.repeats:
                    continue
                inst = instances[i, key_count]
                elapsed, a = inst.run(orders[key_count, c.layout, c.calls])
                inst.after_run()
                c.best[key_count] = min(c.best[key_count], elapsed)
                total_a, total_n = c.allowed[key_count]
                c.allowed[key_count] = (total_a + a, total_n + c.calls)
    for (i, key_count), inst in instances.items():
        contenders[i].state_after[key_count] = inst.keys_with_state()


def report_throughput(scope: str, contenders: list[Contender]) -> None:
    loop, scattered, ours, *peers = contenders
    heads = [f"{n:,} key{'s' if n > 1 else ''}" for n in KEY_COUNTS]
    print(f"{'contender':<42} {'calls/run':>10} " + " ".join(f"{h:>15}" for h in heads))
    for c in contenders:
        print(f"{c.name:<42} {c.calls:>10,} "
              + " ".join(f"{fmt_rate(c.calls / c.best[n], 6):>15}" for n in KEY_COUNTS))
    print("(loop alone: the timed loop without a call, over the key objects every contender walks;")
    print(" scattered: over the warm-up's key objects in the same shuffled order instead, which costs")
    print(" a cache miss per call on the key object alone at 1,000,000 keys: no row above pays it.")
    print(f" limits runs {N_LIMITS:,} calls where the others run {N_TOKEN_BUCKET:,} or {N_OURS:,}: "
          "it is 20-100x slower; at")
    print(" 1,000,000 keys its timed loop shares the interpreter with its own expiry pass over every key)")

    title = "ns per call, and against the same contender at 1 key (1.20x = 20 % slower)"
    print(f"\n{title}")
    print(f"{'contender':<42} " + " ".join(f"{h:>15}" for h in heads))
    for c in contenders:
        one = c.best[1] / c.calls
        cells = []
        for n in KEY_COUNTS:
            per = c.best[n] / c.calls
            cells.append(f"{per * 1e9:.0f}" if n == 1 else f"{per * 1e9:.0f}  {per / one:5.2f}x")
        print(f"{c.name:<42} " + " ".join(f"{cell:>15}" for cell in cells))

    print(f"\n{'ours / peer (calls/s)':<42} " + " ".join(f"{h:>15}" for h in heads))
    for p in peers:
        cells = [f"{(ours.calls / ours.best[n]) / (p.calls / p.best[n]):7.1f}x" for n in KEY_COUNTS]
        print(f"{p.name:<42} " + " ".join(f"{cell:>15}" for cell in cells))

    print(f"\n{'calls allowed: warm-up pass, timed loops':<42} " + " ".join(f"{h:>15}" for h in heads))
    for c in contenders[2:]:
        cells = []
        for n in KEY_COUNTS:
            (wa, wn), (ta, tn) = c.warm_allowed[n], c.allowed[n]
            cells.append("all" if (wa, ta) == (wn, tn) else f"{wa:,}/{wn:,} {ta:,}/{tn:,}")
        print(f"{c.name:<42} " + " ".join(f"{cell:>15}" for cell in cells))
    print(f"(timed loops: {REPEATS} runs each, limits {LIMITS_REPEATS}; 'all' = every call of the warm-up and of the "
          f"timed loops allowed, e.g. ours at 1,000,000 keys: {ours.allowed[KEY_COUNTS[-1]][1]:,} timed calls)")
    if scope == "key":
        cells = [f"{s:,}" if (s := ours.state_after[n]) is not None else "n/a" for n in KEY_COUNTS]
        print(f"{'ours len(limiter) after the timed loops':<42} " + " ".join(f"{c:>15}" for c in cells))

    stand_in = "" if scope == "key" else '  [stand-in: scope="global", not the per-key verdict]'
    section("Per-key targets (same run)" + ("" if scope == "key" else ' -- ours with scope="global"'))
    every = all(c.warm_allowed[n][0] == c.warm_allowed[n][1] and c.allowed[n][0] == c.allowed[n][1]
                for c in contenders[2:] for n in KEY_COUNTS)
    print(f"  {'PASS' if every else 'MISS'}  every call allowed (warm-up and timed loops, every contender)")
    one = ours.best[1] / ours.calls
    for n in KEY_COUNTS[1:]:
        ratio = (ours.best[n] / ours.calls) / one
        ok = ratio <= TARGET_SLOWDOWN
        label = f"ours at {n:,} keys <= 20 % slower per call than 1 key"
        print(f"  {'PASS' if ok else 'MISS'}  {label:<52} {ratio:.2f}x "
              f"({ours.best[n] / ours.calls * 1e9:.0f} ns vs {one * 1e9:.0f} ns){stand_in}")
    n = KEY_COUNTS[-1]
    extra = (ours.best[n] - ours.best[1]) / ours.calls
    miss = (scattered.best[n] - loop.best[n]) / scattered.calls
    print(f"        (ours at {n:,} keys: {extra * 1e9:+.0f} ns a call over 1 key; one random memory access "
          f"costs ~{miss * 1e9:.0f} ns here:")
    print("         the scattered loop minus the loop alone, at 1,000,000 keys)")
    if scope == "key":
        kept = ours.state_after[n]
        if kept is not None:
            ok = kept == n
            print(f"  {'PASS' if ok else 'MISS'}  ours kept every key's state through the timing"
                  f"{'':<14} len(limiter) = {kept:,} of {n:,}")


# --------------------------------------------------------------------------------------------
# Bytes per key: one fresh process per contender
# --------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak, the best that resource offers
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


MEMORY_CONTENDERS = {
    # name: description for the table
    "ours": "ours  token_bucket",
    "ours-sliding": "ours  sliding_window",
    "token-bucket": "token-bucket",
    "limits-fixed": "limits  fixed window (1 h)",
    "limits-sliding": "limits  sliding counter (1 h)",
    "limits-moving": "limits  moving window (1 h)",
}


def memory_child(name: str, scope: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: RSS before and after MEMORY_KEYS keys, one call each."""
    gc.collect()
    r_start = rss_bytes()
    keys = make_keys(MEMORY_KEYS)
    gc.collect()
    r_keys = rss_bytes()
    storage = None
    limiter: Any
    if name.startswith("ours"):
        algorithm = "sliding_window" if name == "ours-sliding" else "token_bucket"
        settings = OURS_MEMORY_KEY if scope == "key" else OURS_MEMORY_GLOBAL
        limiter = make_ours(scope, algorithm=algorithm, **settings)
        call: Callable[[str], Any] = limiter.try_acquire
    elif name == "token-bucket":
        limiter = token_bucket.Limiter(3e6, HUGE, token_bucket.MemoryStorage())
        call = limiter.consume
    else:
        strategy: type[Any] = {
            "limits-fixed": limits.strategies.FixedWindowRateLimiter,
            "limits-sliding": limits.strategies.SlidingWindowCounterRateLimiter,
            "limits-moving": limits.strategies.MovingWindowRateLimiter,
        }[name]
        storage = limits.storage.MemoryStorage()
        limiter = strategy(storage)
        item = limits.RateLimitItemPerHour(HUGE)  # nothing expires during the measurement
        hit = limiter.hit

        def call(k: str) -> Any:
            return hit(item, k)

    call("memory-warm-up")  # lazily made parts (and limits' timer thread) before the first reading
    out: dict[str, Any] = {"name": name, "repr": repr(limiter) if name.startswith("ours") else ""}
    if storage is not None:
        expiry = suspended_expiry(storage)  # nothing expires in an hour: the state is the same
        expiry.__enter__()
    gc.collect()
    r0 = rss_bytes()
    t0 = perf_counter()
    allowed = 0
    for k in keys:
        if call(k):
            allowed += 1
    t_end = perf_counter()
    gc.collect()
    r1 = rss_bytes()
    out.update(keys_bytes=r_keys - r_start, before=r0, after=r1, allowed=allowed,
               insert_s=t_end - t0, len_after=None, idle=None)
    if name.startswith("ours") and scope == "key" and has_len(limiter):
        out["len_after"] = len(limiter)  # no key is idle yet: a key's budget comes back after 2 s
        # The reading that matters: once the clock is past a full refill (one period:
        # a token bucket full again, a sliding window empty), len() drops keys that have been
        # full for a whole period (token-bucket keys go a period later). If
        # some are still there, len() is asked again every 0.25 s, up to 4 periods + 1 s, to
        # report when they went.
        period = limiter.period
        time.sleep(max(0.0, t_end + period + 0.2 - perf_counter()))
        readings = []
        while True:
            n_left = len(limiter)  # drops the idle keys
            gc.collect()
            readings.append(dict(slept=perf_counter() - t_end, len=n_left, rss=rss_bytes()))
            if n_left == 0 or perf_counter() - t_end > 4 * period + 1.0:
                break
            time.sleep(0.25)
        out["idle"] = readings
    out["extension"] = extension_built()
    return out


def run_memory_child(name: str, scope: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child", name, "--scope", scope],
        capture_output=True, text=True, timeout=300,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"name": name, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def memory(scope: str) -> None:
    section(f"Bytes per key: RSS of a fresh process before and after {MEMORY_KEYS:,} keys, one call each")
    # two children at a time on the 2 cores: each reads only its own RSS
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        # the slowest first, so that the two workers finish together; printed in table order
        slow_first = sorted(MEMORY_CONTENDERS, key=lambda n: not n.startswith("limits"))
        by_name = dict(zip(slow_first, pool.map(lambda n: run_memory_child(n, scope), slow_first)))
    results = [by_name[n] for n in MEMORY_CONTENDERS]
    builds = {r["extension"] for r in results if "extension" in r} - {extension_built()}
    if builds:
        print(f"NOTE: the extension was rebuilt since the throughput section: these processes loaded "
              f"the build of {', '.join(sorted(builds))}")
    mib = 1 << 20
    keys_bytes = [r["keys_bytes"] for r in results if "keys_bytes" in r]
    if keys_bytes:
        print(f"the {MEMORY_KEYS:,} key strings and their list: {min(keys_bytes) / MEMORY_KEYS:.0f} "
              "bytes/key, alive in both readings, so not counted below")
    print(f"{'contender':<32} {'before':>10} {'after':>10} {'bytes/key':>10} {'insert':>8} "
          f"{'allowed':>10} {'len()':>10}")
    for r in results:
        label = MEMORY_CONTENDERS[r["name"]]
        if "error" in r:
            print(f"{label:<32} failed: {r['error']}")
            continue
        per_key = (r["after"] - r["before"]) / MEMORY_KEYS
        n = r["len_after"]
        print(f"{label:<32} {r['before'] / mib:6.1f} MiB {r['after'] / mib:6.1f} MiB {per_key:10.0f} "
              f"{r['insert_s']:7.2f}s {r['allowed']:>10,} {'n/a' if n is None else f'{n:,}':>10}")
    ours_cfg = OURS_MEMORY_KEY if scope == "key" else OURS_MEMORY_GLOBAL
    if scope == "key":
        print(f"(ours: {', '.join(f'{k}={v:g}' for k, v in ours_cfg.items())}, scope='key', "
              f"max_keys={MAX_KEYS:,}: one call takes a key's whole budget, back after 2 s;")
        print(" len() right after the insertion, before any key can be idle, counts the keys plus the")
        print(" warm-up key;", end="")
    else:
        print(f"(ours: {', '.join(f'{k}={v:g}' for k, v in ours_cfg.items())}, scope='global': one "
              "budget that takes them all;", end="")
    print(" limits: 10**12 per hour, its expiry pass held back during the insertion (nothing")
    print(" expires in an hour); token-bucket: 3e6/s, capacity 10**12; 'before' is read after the")
    print(" imports, the keys, the limiter and one call on another key)")

    if scope != "key":
        print('(ours with scope="global" keeps no state per key: its rows are the stand-in\'s)')
        return
    print("(the target: <= 64 bytes of core state per token-bucket key including map overhead;")
    print(" RSS adds the allocator's slack and the map's spare room: an upper bound for it)")
    print("\nours after the keys went idle: len() (which drops idle keys) once the clock is past a full")
    print("refill (one period), then again every 0.25 s while keys remain; RSS against 'before':")
    for r in results:
        if not r["name"].startswith("ours") or "error" in r or not r["idle"]:
            continue
        grown = r["after"] - r["before"]
        shown = [r["idle"][0]] if len(r["idle"]) == 1 else [r["idle"][0], r["idle"][-1]]
        for idle in shown:
            back = r["after"] - idle["rss"]
            share = f"{back / grown * 100:.0f} % of the growth returned" if grown > 0 else "no growth"
            print(f"  {MEMORY_CONTENDERS[r['name']]:<22} {idle['slept']:4.1f} s after the last insert: "
                  f"len() = {idle['len']:>9,}, RSS {idle['rss'] / mib:.1f} MiB, "
                  f"{round((idle['rss'] - r['before']) / MEMORY_KEYS)} bytes/key above 'before' ({share})")


# --------------------------------------------------------------------------------------------
# A flood of new keys into a full table
# --------------------------------------------------------------------------------------------

FLOOD_KEYS = 1 << 20  # max_keys (the default), all kept and in use for the whole run
FLOOD_RATE = 100_000  # new keys a second from the flooding thread
FLOOD_BATCH = 1_000  # new keys at most between two looks at the clock and at `stop`
FLOOD_WINDOW = 0.5  # seconds per timed window
FLOOD_ROUNDS = 5  # windows alone and during the flood, alternating; the best of each counts
TARGET_FLOOD_SHARE = 0.80  # a known key keeps at least 80 % of its calls/s


def known_key_rate(f: Callable[[str], Any], key: str) -> float:
    """calls/s of ``f(key)`` in a loop for FLOOD_WINDOW seconds."""
    calls = 0
    t0 = perf_counter()
    end = t0 + FLOOD_WINDOW
    while perf_counter() < end:
        for _ in range(1000):
            f(key)
        calls += 1000
    return calls / (perf_counter() - t0)


def flood(f: Callable[[str], Any], keys: Iterator[str], stop: threading.Event, out: dict[str, Any]) -> None:
    """Sends new keys at FLOOD_RATE a second, in batches of at most FLOOD_BATCH, sleeping
    (without the GIL) for 50 ms whenever it is ahead, until ``stop`` is set."""
    sent = refused = 0
    t0 = perf_counter()
    while not stop.is_set():
        batch = min(int((perf_counter() - t0) * FLOOD_RATE) - sent, FLOOD_BATCH)
        for _ in range(batch):
            if f(next(keys)).reason == "too_many_keys":
                refused += 1
        sent += max(batch, 0)
        if batch < FLOOD_BATCH:
            stop.wait(0.05)
    out.update(sent=sent, refused=refused, seconds=perf_counter() - t0)


def flood_report() -> None:
    section(f"A flood of new keys into a full table: a known key's calls/s alone and while another "
            f"thread sends {FLOOD_RATE:,} new keys a second")
    limiter = ShardedRateLimiter(scope="key", max_keys=FLOOD_KEYS, **OURS_KEY)
    f = limiter.try_acquire
    t0 = perf_counter()
    filled = sum(1 for i in range(FLOOD_KEYS) if f(f"user:{i}", WARM_COUNT_KEY))
    fill_s = perf_counter() - t0
    t0 = perf_counter()
    kept = len(limiter)  # a pass over every key, as a refusal at max_keys made before
    pass_s = perf_counter() - t0
    print(f"ours: {limiter!r}, max_keys={FLOOD_KEYS:,}; {filled:,} keys filled in {fill_s:.1f} s, "
          f"{WARM_COUNT_KEY:,} tokens each (in use for 1000 s)")
    print(f"one pass over the table (len(), which sweeps every stripe): {pass_s * 1e3:.1f} ms, "
          f"{kept:,} keys kept")
    prebuilt = [f"flood:{i}" for i in range(int(FLOOD_RATE * FLOOD_WINDOW * FLOOD_ROUNDS * 1.2))]
    keys = itertools.chain(prebuilt, (f"flood:{i}" for i in itertools.count(len(prebuilt))))
    alone: list[float] = []
    during: list[float] = []
    floods: list[dict[str, Any]] = []
    for _ in range(FLOOD_ROUNDS):
        alone.append(known_key_rate(f, "user:0"))
        stop, out = threading.Event(), {}
        flooder = threading.Thread(target=flood, args=(f, keys, stop, out))
        flooder.start()
        during.append(known_key_rate(f, "user:0"))
        stop.set()
        flooder.join()
        floods.append(out)
    sent = sum(o["sent"] for o in floods)
    refused = sum(o["refused"] for o in floods)
    rate = sent / sum(o["seconds"] for o in floods)
    # Each flood window against the window alone just before it, so that both see the same
    # background load; the median of those ratios is the verdict.
    shares = sorted(d / a for a, d in zip(alone, during))
    share = shares[len(shares) // 2]
    print(f"known key alone, best of {FLOOD_ROUNDS} windows of {FLOOD_WINDOW} s:    {fmt_rate(max(alone), 6)}")
    print(f"known key during the flood, best of {FLOOD_ROUNDS}:        {fmt_rate(max(during), 6)}"
          f"  (the flood sent {rate:,.0f} new keys/s, {refused:,} of {sent:,} refused too_many_keys)")
    print(f"during / alone, each flood window against the window before it: "
          f"{', '.join(f'{x * 100:.0f} %' for x in shares)}")
    print("(paced: at full speed a second Python thread would take half of the interpreter's time")
    print(f" whatever each call costs; at {FLOOD_RATE:,} a second what the known key loses is what")
    print(" the refusals cost, and a refusal that passed over the table each time would not keep pace;")
    print(" on a busy machine each handover of the GIL also waits for a free core)")
    ok = share >= TARGET_FLOOD_SHARE
    print(f"  {'PASS' if ok else 'MISS'}  a known key keeps >= 80 % of its calls/s during the flood"
          f"{'':<12} {share * 100:.0f} % (median)")
    kept = len(limiter)
    print(f"  {'PASS' if kept == FLOOD_KEYS else 'MISS'}  no key forgotten{'':<50} "
          f"len(limiter) = {kept:,} of {FLOOD_KEYS:,}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scope", choices=("auto", "key", "global"), default="auto",
                        help='ours: "key" (per-key budgets), "global" (stand-in), auto: key if available')
    parser.add_argument("--flood", action="store_true",
                        help="only the known key during a flood of new keys into a full table")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.scope)))
        return 0
    if args.flood:
        flood_report()
        return 0

    warnings.simplefilter("default")
    t_start = perf_counter()
    scope, why = pick_scope(args.scope)
    load = os.getloadavg()
    print("Per-key benchmark: 1, 10,000 and 1,000,000 keys, and bytes per key")
    print(
        f"Python {platform.python_version()} ({sys.implementation.name}), {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"token-bucket {token_bucket.__version__}, limits {limits.__version__}"
    )
    import flashcard_pipeline

    print(f"ours: flashcard_pipeline {flashcard_pipeline.__version__}, extension built {extension_built()}")
    if scope == "key":
        print('ours: scope="key" (one budget per key)')
    else:
        print(f'ours: STAND-IN scope="global" (one budget for all keys; a key only picks a shard): {why}')
        print('      the per-key figures and verdicts below are for the stand-in, not for scope="key"')

    contenders = make_contenders(scope)
    section(f"Throughput: sync calls cycling over 1, 10,000 and 1,000,000 distinct keys, every call "
            f"allowed; best of {REPEATS} round-robin repeats (limits: {LIMITS_REPEATS})")
    print(f"ours: {contenders[2].describe}"
          + (f", max_keys={MAX_KEYS:,}; warm-up takes {WARM_COUNT_KEY:,} tokens per key" if scope == "key" else ""))
    print("token-bucket: Limiter(3e6, 10**12, MemoryStorage()); limits: MemoryStorage(), 10**12 per hour "
          "(moving window: per second)")
    throughput(contenders)
    report_throughput(scope, contenders)
    t_memory = perf_counter()
    memory(scope)
    memory_s = perf_counter() - t_memory
    if scope == "key":
        flood_report()
    load = os.getloadavg()
    print(f"\n(total {perf_counter() - t_start:.1f} s, bytes per key {memory_s:.1f} s; "
          f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
