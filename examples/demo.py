"""A realistic run: many simulated users share one rate-limited upstream.

Twenty asyncio "users" call a stub API as fast as the limiter lets them, each waiting its
turn with ``await limiter.acquire(user)``, while two worker threads poll with
``try_acquire`` and back off on refusals. The limiter is 50 requests per second with a burst
of 10, split over 4 shards. Every second the demo prints what was admitted against what the
budget allows; the total never exceeds burst + rate * elapsed.

Run with ``make demo`` (or ``python examples/demo.py --seconds 5``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections import Counter

from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter

RATE = 50.0
BURST = 10
USERS = 20
THREADS = 2


async def call_api(user: str) -> None:
    """Stands in for the upstream request."""
    await asyncio.sleep(0)


async def user_session(limiter: ShardedRateLimiter, user: str, stop: float, log: Counter) -> None:
    while time.monotonic() < stop:
        result = await limiter.acquire(user, max_wait=1.0)
        if result.allowed:
            log[int(time.monotonic() - START)] += 1
            await call_api(user)


def worker(limiter: ShardedRateLimiter, name: str, stop: float, log: Counter, lock: threading.Lock) -> None:
    while time.monotonic() < stop:
        result = limiter.try_acquire(name)
        if result.allowed:
            with lock:
                log[int(time.monotonic() - START)] += 1
        else:
            time.sleep(result.retry_after)


async def main(seconds: int) -> int:
    limiter = ShardedRateLimiter(rate=RATE, period=1.0, burst_size=BURST, shards=4)
    print(f"{limiter!r}: {USERS} asyncio users + {THREADS} threads for {seconds} s\n")
    stop = START + seconds
    log: Counter = Counter()
    lock = threading.Lock()
    threads = [
        threading.Thread(target=worker, args=(limiter, f"worker-{i}", stop, log, lock))
        for i in range(THREADS)
    ]
    for t in threads:
        t.start()
    await asyncio.gather(*(user_session(limiter, f"user-{i}", stop, log) for i in range(USERS)))
    for t in threads:
        t.join()

    print(f"{'second':>6} {'admitted':>9} {'allowed by budget':>18}")
    total = 0
    for second in range(seconds):
        allowed = (BURST if second == 0 else 0) + RATE
        total += log[second]
        print(f"{second:>6} {log[second]:>9} {allowed:>18.0f}")
    bound = BURST + RATE * seconds
    print(f"\ntotal admitted {total} of at most {bound:.0f} (burst + rate x {seconds} s)")
    balance = limiter.get_shard_balance()
    print(f"requests per shard {balance['distribution']}, imbalance {balance['imbalance_ratio']:.2f}")
    return 0 if total <= bound else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    if os.environ.get("REDIS_URL"):
        print("REDIS_URL is set, but the Redis backend is not built yet: running in memory.")
    START = time.monotonic()
    sys.exit(asyncio.run(main(args.seconds)))
