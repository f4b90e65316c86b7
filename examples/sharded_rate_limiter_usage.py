"""Short, runnable examples of the sharded rate limiter (the migration guide's "examples").

Run with ``python examples/sharded_rate_limiter_usage.py``; it takes well under a second.
"""

from __future__ import annotations

import asyncio
import threading

from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter
from flashcard_pipeline.retry import retry_on_rate_limit


def non_blocking() -> None:
    limiter = ShardedRateLimiter(rate=5, period=1.0)
    results = [limiter.try_acquire("user_123") for _ in range(7)]
    print("try_acquire:", [bool(r) for r in results], "retry after", results[-1].retry_after, "s")


def threads_waiting_their_turn() -> None:
    limiter = ShardedRateLimiter(rate=200, period=1.0, burst_size=5)
    admitted: list[str] = []

    def worker(name: str) -> None:
        for _ in range(5):
            if limiter.acquire(name, max_wait=1.0):  # blocks with the GIL released
                admitted.append(name)

    threads = [threading.Thread(target=worker, args=(f"thread-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("threads admitted:", len(admitted))


async def batch_with_reservations() -> None:
    limiter = ShardedRateLimiter(rate=200, period=1.0, burst_size=5)
    reservations = [await limiter.reserve(f"item-{i}", max_wait=5.0) for i in range(15)]
    done = []
    for reservation in reservations:
        await asyncio.sleep(reservation.wait_time())
        if (await limiter.execute_reservation(reservation.id)).allowed:
            done.append(reservation.key)
    print("batch processed in order:", done == [r.key for r in reservations])


@retry_on_rate_limit(max_attempts=5)
async def call_upstream(limiter: ShardedRateLimiter) -> str:
    result = limiter.try_acquire("upstream")
    if not result:
        raise RateLimitError(retry_after=result.retry_after)
    return "ok"


async def retrying() -> None:
    limiter = ShardedRateLimiter(rate=100, period=1.0, burst_size=1)
    print("with retries:", [await call_upstream(limiter) for _ in range(3)])


def main() -> None:
    non_blocking()
    threads_waiting_their_turn()
    asyncio.run(batch_with_reservations())
    asyncio.run(retrying())


if __name__ == "__main__":
    main()
