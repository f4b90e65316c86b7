"""A skewed workload with and without rebalancing, in one run.

Zipf(1.1) demand over 10,000 keys on 16 shards, offered at about twice the budget: a first
pass on a limiter with a budget no loop can reach measures this machine's calls per second,
and the budget is set to half of that. Then ``ShardedRateLimiter(shards=16)`` and
``AdaptiveShardedRateLimiter(initial_shards=16)`` each run for a few seconds, from one
thread and from four, on the real clock, after a warm-up as long (the adaptive limiter needs
about two seconds to settle on its shards: a shard it stops using first refills what was
taken from it). For each: calls per second; the tokens admitted as a share of what refilled
meanwhile (``rate * t``: the warm-up drained the burst); the slow-path share (admissions
gathered from shards other than the key's two, from ``get_shard_balance()``: for the
adaptive limiter, since its shares last moved); and the shards keys spread over at the end.

Run: ``make bench``, or ``.venv/bin/python benches/skewed.py [seconds]``.
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from typing import NamedTuple

from flashcard_pipeline.rate_limiter_v2 import AdaptiveShardedRateLimiter, ShardedRateLimiter

SHARDS = 16


def zipf_keys(count: int, seed: int = 7) -> list[str]:
    keys = [f"user-{k}" for k in range(10_000)]
    weights = list(itertools.accumulate(1 / (k + 1) ** 1.1 for k in range(len(keys))))
    return random.Random(seed).choices(keys, cum_weights=weights, k=count)


KEYS = zipf_keys(100_000)


class Result(NamedTuple):
    calls_per_second: float
    admitted_share: float
    slow_path_share: float
    active_shards: int


def hammer(limiter: ShardedRateLimiter, threads: int, seconds: float) -> tuple[int, int, float]:
    """Calls and admissions from ``threads`` threads for ``seconds``; and the elapsed time."""
    calls, admitted = [0] * threads, [0] * threads
    stop = time.perf_counter() + seconds

    def loop(t: int) -> None:
        try_acquire = limiter.try_acquire
        keys = KEYS[t::threads]
        n = a = 0
        while time.perf_counter() < stop:
            for key in keys[:1000]:
                a += bool(try_acquire(key))
            n += 1000
            keys = keys[1000:] + keys[:1000]
        calls[t], admitted[t] = n, a

    begin = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(calls), sum(admitted), time.perf_counter() - begin


def budget(seconds: float) -> float:
    """Half the calls per second one thread makes here: the offered load is then twice it."""
    calls, _, elapsed = hammer(ShardedRateLimiter(1e11, 1.0, shards=SHARDS), 1, seconds)
    return calls / elapsed / 2


def run(adaptive: bool, rate: float, threads: int, seconds: float) -> Result:
    burst = rate / 100  # 10 ms of refill
    if adaptive:
        limiter = AdaptiveShardedRateLimiter(rate, 1.0, initial_shards=SHARDS, burst_size=burst)
    else:
        limiter = ShardedRateLimiter(rate, 1.0, shards=SHARDS, burst_size=burst)
    hammer(limiter, threads, seconds)  # warm-up
    calls, admitted, elapsed = hammer(limiter, threads, seconds)
    balance = limiter.get_shard_balance()
    return Result(
        calls_per_second=calls / elapsed,
        admitted_share=admitted / (rate * elapsed),
        slow_path_share=balance["slow_path_share"],
        active_shards=balance["active_shards"],
    )


def main(seconds: float = 3.0) -> dict[tuple[str, int], Result]:
    rate = budget(min(seconds, 0.5))
    print(f"Zipf(1.1) over 10,000 keys, {SHARDS} shards, budget {rate:,.0f}/s (half of one")
    print("thread's calls/s here: about twice the budget is offered)\n")
    print(f"{'limiter':<24} {'threads':>7} {'calls/s':>12} {'admitted':>9} {'slow path':>10} {'shards':>7}")
    results = {}
    for threads in (1, 4):
        for name, adaptive in (("fixed shares", False), ("rebalancing", True)):
            result = run(adaptive, rate, threads, seconds)
            results[(name, threads)] = result
            print(
                f"{name:<24} {threads:>7} {result.calls_per_second:>12,.0f} "
                f"{result.admitted_share:>9.1%} {result.slow_path_share:>10.1%} "
                f"{result.active_shards:>7}"
            )
        fixed, adaptive_ = results[("fixed shares", threads)], results[("rebalancing", threads)]
        print(
            f"{'  rebalancing / fixed':<24} {'':>7} "
            f"{adaptive_.calls_per_second / fixed.calls_per_second:>11.2f}x\n"
        )
    return results


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
