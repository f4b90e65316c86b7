"""The previous implementation's algorithm, kept only as a benchmark baseline.

A pure-Python port of the OLD ``flashcard_pipeline.rate_limiter.RateLimiter``, as it worked
before the module became a compatibility shim over the Rust engine. It exists so that
``benches/shim_vs_old.py`` can time the shim against what it replaced, side by side in one
process. Do not import it from the package or use it in programs: it is deliberately a copy of
the old behaviour, including its costs and its races, and nothing smarter.

The algorithm, exactly:

- a token bucket held in a float ``tokens`` that starts full at ``burst_size`` and is refilled
  on every call from ``time.monotonic()`` at ``requests_per_minute / 60`` tokens per second,
  capped at ``burst_size``;
- an hourly window kept as a Python list of ``time.time()`` stamps, one per token taken,
  rebuilt by a list comprehension on every ``acquire`` (keeping the stamps newer than
  ``now - 3600``), which is O(stamps in the last hour) per call;
- ``async acquire(tokens=1)`` holds an ``asyncio.Lock``, refills, rebuilds the hourly list and,
  if ``tokens > self.tokens`` or ``len(hour_list) + tokens > requests_per_hour``, raises
  ``RateLimitError(retry_after=int(wait) + 1)``; otherwise it subtracts ``tokens`` and appends
  ``tokens`` stamps;
- ``try_acquire(tokens=1) -> bool`` takes no lock and skips the hourly window: refill, compare,
  subtract.
"""

from __future__ import annotations

import asyncio
import time

from flashcard_pipeline.exceptions import RateLimitError

__all__ = ["OldRateLimiter"]


class OldRateLimiter:
    """The old limiter's algorithm (benchmark baseline only; see the module docstring)."""

    def __init__(
        self,
        requests_per_minute: float = 600,
        requests_per_hour: int = 36000,
        burst_size: int = 20,
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.requests_per_hour = requests_per_hour
        self.burst_size = burst_size
        self.rate = requests_per_minute / 60.0  # tokens per second
        self.tokens = float(burst_size)
        self.last_update = time.monotonic()
        self.hour_requests: list[float] = []  # time.time() stamps, one per token taken
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed = now - self.last_update
        self.tokens = min(self.burst_size, self.tokens + elapsed * self.rate)
        self.last_update = now

    async def acquire(self, tokens: int = 1) -> None:
        """Takes ``tokens`` from the bucket and the hourly window, or raises.

        Raises:
            RateLimitError: not enough tokens in the bucket, or the hourly window is full;
                ``retry_after`` is ``int(wait) + 1`` whole seconds.
        """
        async with self._lock:
            self._refill()
            now = time.time()
            hour_ago = now - 3600
            # O(n): the whole hourly list is rebuilt on every call.
            self.hour_requests = [t for t in self.hour_requests if t > hour_ago]

            if tokens > self.tokens:
                wait = (tokens - self.tokens) / self.rate
                raise RateLimitError(
                    f"Rate limit exceeded; retry after {wait:.2f}s", retry_after=int(wait) + 1
                )
            if len(self.hour_requests) + tokens > self.requests_per_hour:
                # (the port's one guard: with tokens > requests_per_hour the list can be empty)
                wait = (self.hour_requests[0] + 3600 - now) if self.hour_requests else 3600.0
                raise RateLimitError(
                    f"Hourly rate limit exceeded; retry after {wait:.2f}s",
                    retry_after=int(wait) + 1,
                )

            self.tokens -= tokens
            for _ in range(tokens):
                self.hour_requests.append(now)

    def try_acquire(self, tokens: int = 1) -> bool:
        """Takes ``tokens`` from the bucket if it holds them; no lock, no hourly window."""
        self._refill()
        if tokens <= self.tokens:
            self.tokens -= tokens
            return True
        return False
