"""The old rate limiter's API on the new engine, for code that has not migrated yet.

``RateLimiter`` keeps its old meaning: a token bucket of ``burst_size`` refilled at
``requests_per_minute / 60`` per second, and an exact sliding window of
``requests_per_hour`` per hour, taken together (all or nothing), now thread-safe.
``AdaptiveRateLimiter`` and ``CompositeLimiter`` come along; ``DatabaseRateLimiter`` and
``UsageAlert`` live in :mod:`flashcard_pipeline.usage`. Built on the public API of
:mod:`flashcard_pipeline.rate_limiter_v2` only: each limiter is a
:class:`~flashcard_pipeline.rate_limiter_v2.LimiterGroup` of two ``ShardedRateLimiter``\\ s.
What differs from the old module is listed in ``docs/MIGRATION.md``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from flashcard_pipeline._arguments import named, number, renamed
from flashcard_pipeline.config import setting
from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline.rate_limiter_v2 import (
    LimiterGroup,
    ManualClock,
    RateLimitResult,
    ShardedRateLimiter,
)

if TYPE_CHECKING:
    from flashcard_pipeline.usage import DatabaseRateLimiter, UsageAlert

__all__ = [
    "AdaptiveRateLimiter",
    "CompositeLimiter",
    "DatabaseRateLimiter",
    "MAX_REQUESTS_PER_MINUTE",
    "RateLimitError",
    "RateLimiter",
    "UsageAlert",
]


def __getattr__(name: str) -> object:
    # DatabaseRateLimiter subclasses RateLimiter, so its module imports this one: loaded on use.
    if name in ("DatabaseRateLimiter", "UsageAlert"):
        from flashcard_pipeline import usage

        return getattr(usage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The old module's logger: adaptive rate changes and ``DatabaseRateLimiter``'s usage alerts
#: are logged on it, looked up at each message, so that patching it (as tests of code
#: written for the old module do) sees them.
logger = logging.getLogger(__name__)

# The old module's caps and the adaptive limiter's bounds.
MAX_RPM = 600_000
MAX_RPH = 36_000_000
MAX_BURST = 10_000
#: The adaptive limiter's ceiling when ``MAX_REQUESTS_PER_MINUTE`` is not set.
MAX_REQUESTS_PER_MINUTE = 1200
MIN_REQUESTS_PER_MINUTE = 10


class RateLimiter:
    """The old limiter: a minute bucket and an hourly window, enforced together.

    Args:
        requests_per_minute: Refill of the bucket (per minute); default ``REQUESTS_PER_MINUTE``
            or 600. A finite number > 0; above 600,000 it is capped.
        requests_per_hour: Exact sliding-window limit per hour; default ``REQUESTS_PER_HOUR``
            or 36,000. A finite number > 0; above 36,000,000 it is capped.
        burst_size: Bucket capacity; default ``BURST_SIZE`` or 20. A finite number >= 1,
            rounded down; above 10,000 it is capped.
        clock: A :class:`ManualClock` for tests (new; the old module had none).

    Raises:
        TypeError, ValueError: an argument, or the variable it was read from, is not a
            number in its range; the message names it (a variable with its text).

    ``limits`` (new) is the :class:`LimiterGroup` of the bucket and the window: use it to
    take from this limiter and others at once.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        requests_per_hour: float | None = None,
        burst_size: float | None = None,
        *,
        clock: ManualClock | None = None,
    ) -> None:
        rpm = setting(requests_per_minute, "requests_per_minute", 600)
        rph = setting(requests_per_hour, "requests_per_hour", 36000)
        burst = setting(burst_size, "burst_size", 20)
        # Checked here, not only by the engine: the caps must not turn inf into a limit.
        self.requests_per_minute = min(number(rpm.name, rpm.value, above=0), MAX_RPM)
        self.requests_per_hour = min(number(rph.name, rph.value, above=0), MAX_RPH)
        self.burst_size = int(min(number(burst.name, burst.value, at_least=1), MAX_BURST))
        self._clock = clock
        with named(rate=rpm.name, burst_size=burst.name):
            self._minute = ShardedRateLimiter(
                self.requests_per_minute, 60.0, 1, burst_size=self.burst_size, clock=clock
            )
        with named(rate=rph.name):
            hour = ShardedRateLimiter(
                self.requests_per_hour, 3600.0, 1, "sliding_window", clock=clock
            )
        self._hour = hour
        self.limits = LimiterGroup(self._minute, hour)
        self._take = self.limits.try_acquire
        if type(self).try_acquire is RateLimiter.try_acquire:
            # The hot path: the group's native call itself, with no Python frame in between.
            self.__dict__["try_acquire"] = self.limits.admits
        self.reset_stats()

    # --- decisions -----------------------------------------------------------------------

    def try_acquire(self, tokens: int = 1) -> bool:
        """Takes ``tokens`` from both the bucket and the hourly window, or from neither."""
        return self.limits.admits(tokens)

    async def acquire(self, tokens: int = 1) -> None:
        """Takes ``tokens`` now or raises.

        Raises:
            RateLimitError: limited; ``retry_after`` is whole seconds (``int(wait) + 1``), as
                in the old module.
        """
        try:
            result = self._take("default", tokens)
        except (TypeError, ValueError) as error:
            raise renamed(error, count="tokens")
        _raise_if_refused(result)

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """Waits for one token up to ``timeout`` seconds (``None`` or ``inf``: as long as it
        takes); returns ``True`` once admitted.

        Raises:
            RateLimitError: ``Rate limit timeout after {timeout}s``, as soon as the wait is
                known to exceed ``timeout`` (``retry_after``: whole seconds it would take).
            ValueError: ``timeout`` is negative or NaN.
        """
        with named(max_wait="timeout"):
            result = await self.limits.acquire("default", 1, timeout)
        if not result.allowed:
            wait = result.retry_after
            raise RateLimitError(
                f"Rate limit timeout after {timeout}s",
                retry_after=None if wait is None else int(wait) + 1,
            )
        return True

    async def wait_if_needed(self, tokens: int = 1) -> None:
        """Waits until ``tokens`` are taken.

        Raises:
            ValueError: ``tokens`` exceeds ``burst_size`` or ``requests_per_hour``, so waiting
                could never end; raised at once.
        """
        try:
            result = await self.limits.acquire("default", tokens)
        except (TypeError, ValueError) as error:
            raise renamed(error, count="tokens")
        if not result.allowed:
            raise ValueError(
                f"tokens: must be at most burst_size ({self.burst_size}) and requests_per_hour "
                f"({self.requests_per_hour}), got {tokens}; it could never be served"
            )

    # --- configuration and views ---------------------------------------------------------

    def set_rate(self, requests_per_minute: float) -> None:
        """Changes the minute rate (a finite number > 0, capped at 600,000); the bucket's
        capacity becomes ``max(1, int(rpm / 60))``."""
        rpm = min(number("requests_per_minute", requests_per_minute, above=0), MAX_RPM)
        burst = max(1, int(rpm / 60))
        with named(rate="requests_per_minute"):
            self._minute.set_rate(rpm, 60.0, burst)
        self.requests_per_minute = rpm
        self.burst_size = burst

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now, rounded to a whole number as the old module did."""
        return round(self._minute.peek(), 0)

    @property
    def minute_tokens(self) -> float:
        """Tokens in the bucket now, unrounded (0 while a back-off is owed)."""
        return self._minute.peek()

    @property
    def minute_rate(self) -> float:
        """The bucket's refill in tokens per second."""
        return self.requests_per_minute / 60.0

    rate = minute_rate

    @property
    def capacity(self) -> int:
        """The bucket's capacity: ``burst_size``."""
        return self.burst_size

    def get_stats(self) -> dict[str, float]:
        tokens, stats = self.tokens, self.stats
        return {
            "requests_allowed": stats["requests_allowed"],
            "requests_denied": stats["requests_denied"],
            "capacity_utilization": 1.0 - tokens / self.burst_size,
            "current_tokens": tokens,
            "capacity": self.burst_size,
        }

    def get_status(self) -> dict[str, object]:
        return {
            "minute_tokens_available": self.minute_tokens,
            "minute_limit": self.requests_per_minute,
            "hour_requests_made": int(self._hour.rate) - int(self._hour.peek()),
            "hour_limit": self.requests_per_hour,
            "burst_size": self.burst_size,
        }

    def reset(self) -> None:
        """Refills the bucket, empties the hourly window and clears the statistics."""
        self.limits.reset()
        self.reset_stats()

    @property
    def stats(self) -> dict[str, float]:
        """``requests_allowed`` and ``requests_denied`` since ``start_time`` (epoch seconds):
        every decision of this limiter, counted by the engine (atomic, so exact from any
        thread)."""
        allowed, denied = self._counted()
        return {
            "requests_allowed": allowed - self._counted_before[0],
            "requests_denied": denied - self._counted_before[1],
            "start_time": self._stats_start,
        }

    def _counted(self) -> tuple[int, int]:
        statistics = self._minute.get_status()["statistics"]
        return statistics["allowed_requests"], statistics["denied_requests"]

    def reset_stats(self) -> None:
        """Zeroes ``stats`` and restarts its ``start_time``."""
        self._counted_before = self._counted()
        self._stats_start = self._clock.time() if self._clock is not None else time.time()


class AdaptiveRateLimiter(RateLimiter):
    """A :class:`RateLimiter` whose minute rate follows the upstream's answers.

    ``await on_rate_limit(retry_after)`` lowers the rate to ``adjustment_factor`` (0.9) of
    it, not below ``min_requests_per_minute`` (10), and with a ``retry_after`` > 0 takes
    nothing for that long: the bucket owes that much refill (the old negative balance).
    ``await on_success()`` raises it by ``recovery_factor`` (1.05) after 10 successes in a
    row, up to ``max_requests_per_minute`` (``MAX_REQUESTS_PER_MINUTE`` or 1200). Only the
    rate changes; ``burst_size`` stays.
    """

    def __init__(
        self,
        initial_requests_per_minute: float | None = None,
        initial_requests_per_hour: float | None = None,
        burst_size: float | None = None,
        *,
        clock: ManualClock | None = None,
    ) -> None:
        with named(
            requests_per_minute="initial_requests_per_minute",
            requests_per_hour="initial_requests_per_hour",
        ):
            super().__init__(
                initial_requests_per_minute, initial_requests_per_hour, burst_size, clock=clock
            )
        ceiling = setting(None, "max_requests_per_minute", MAX_REQUESTS_PER_MINUTE)
        self.min_requests_per_minute: float = MIN_REQUESTS_PER_MINUTE
        self.max_requests_per_minute = number(ceiling.name, ceiling.value, above=0)
        self.adjustment_factor = 0.9
        self.recovery_factor = 1.05
        self.consecutive_successes = 0
        self.consecutive_failures = 0
        self._adapting = threading.Lock()

    async def on_success(self) -> None:
        """Counts a success; the 10th in a row raises the rate (see the class)."""
        with self._adapting:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            if self.consecutive_successes >= 10:
                rpm = min(
                    self.max_requests_per_minute,
                    self.requests_per_minute * self.recovery_factor,
                )
                if rpm > self.requests_per_minute:
                    self._rerate(rpm)
                    self.consecutive_successes = 0
                    logger.info("Increased rate to %.1f requests per minute", rpm)

    async def on_rate_limit(self, retry_after: float | None = None) -> None:
        """Lowers the rate; a ``retry_after`` > 0 (seconds) also backs off that long
        (``None``, 0 or less: no back-off).

        Raises:
            TypeError, ValueError: ``retry_after`` is not ``None`` or a finite number.
        """
        pause = 0.0 if retry_after is None else number("retry_after", retry_after)
        with self._adapting:
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            rpm = max(
                self.min_requests_per_minute,
                self.requests_per_minute * self.adjustment_factor,
            )
            if rpm < self.requests_per_minute:
                self._rerate(rpm)
                logger.info("Rate limited: reduced rate to %.1f requests per minute", rpm)
            if pause > 0:
                with named(seconds="retry_after"):
                    self._minute.back_off(pause)

    def _rerate(self, requests_per_minute: float) -> None:
        """The rate alone changes: the burst and the tokens (or what is owed) stay."""
        self._minute.set_rate(requests_per_minute, 60.0, self.burst_size)
        self.requests_per_minute = requests_per_minute

    def get_status(self) -> dict[str, object]:
        status = super().get_status()
        status.update(
            adaptive_enabled=True,
            consecutive_successes=self.consecutive_successes,
            consecutive_failures=self.consecutive_failures,
            current_requests_per_minute=self.requests_per_minute,
        )
        return status


class CompositeLimiter:
    """The pipeline's limiters, consulted together, all or nothing.

    ``api_limiter`` (adaptive; ``REQUESTS_PER_MINUTE``/``REQUESTS_PER_HOUR``/``BURST_SIZE``,
    600/36000/20), ``cost_limiter`` (``COST_*``, 300/1000/10; consulted only when
    ``estimated_tokens > 1000``), ``stage1_limiter`` and ``stage2_limiter`` (``STAGE1_*`` and
    ``STAGE2_*``, 300/18000/10 each).
    """

    def __init__(self, *, clock: ManualClock | None = None) -> None:
        self.api_limiter = AdaptiveRateLimiter(clock=clock)
        self.cost_limiter = _limiter_from_env("COST_", (300, 1000, 10), clock)
        self.stage1_limiter = _limiter_from_env("STAGE1_", (300, 18000, 10), clock)
        self.stage2_limiter = _limiter_from_env("STAGE2_", (300, 18000, 10), clock)
        api, cost = self.api_limiter.limits, self.cost_limiter.limits
        self._groups = {
            (stage, costly): LimiterGroup(api, *([cost] if costly else []), limiter.limits)
            for stage, limiter in ((1, self.stage1_limiter), (2, self.stage2_limiter))
            for costly in (False, True)
        }

    async def acquire_for_stage(self, stage: int | str, estimated_tokens: int = 350) -> None:
        """Takes one request from every limiter that applies, or from none.

        Raises:
            RateLimitError: one of them is limited (``retry_after`` in whole seconds); the
                others are left untouched.
            TypeError, ValueError: unknown ``stage``, or ``estimated_tokens`` not a finite
                number >= 0.
        """
        allowed = "1, 2, 'stage1' or 'stage2'"
        if isinstance(stage, bool) or not isinstance(stage, (int, str)):
            raise TypeError(f"stage: must be {allowed}, got {type(stage).__name__}")
        if stage not in _STAGES:
            raise ValueError(f"stage: must be {allowed}, got {stage!r}")
        costly = number("estimated_tokens", estimated_tokens, at_least=0) > 1000
        _raise_if_refused(self._groups[_STAGES[stage], costly].try_acquire())

    async def on_success(self) -> None:
        await self.api_limiter.on_success()

    async def on_rate_limit(self, retry_after: float | None = None) -> None:
        await self.api_limiter.on_rate_limit(retry_after)

    def get_status(self) -> dict[str, dict[str, object]]:
        return {
            "api_limiter": self.api_limiter.get_status(),
            "cost_limiter": self.cost_limiter.get_status(),
            "stage1_limiter": self.stage1_limiter.get_status(),
            "stage2_limiter": self.stage2_limiter.get_status(),
        }


_STAGES: dict[int | str, int] = {1: 1, 2: 2, "stage1": 1, "stage2": 2}


def _limiter_from_env(
    prefix: str, defaults: tuple[float, float, float], clock: ManualClock | None
) -> RateLimiter:
    """A :class:`RateLimiter` read from ``{prefix}REQUESTS_PER_MINUTE``,
    ``{prefix}REQUESTS_PER_HOUR`` and ``{prefix}BURST_SIZE``, or ``defaults``; its errors name
    the variable a bad value came from."""
    arguments = ("requests_per_minute", "requests_per_hour", "burst_size")
    settings = [
        setting(None, argument, default, prefix=prefix)
        for argument, default in zip(arguments, defaults)
    ]
    with named(**{argument: s.name for argument, s in zip(arguments, settings)}):
        return RateLimiter(*(s.value for s in settings), clock=clock)


def _raise_if_refused(result: RateLimitResult) -> None:
    if result.allowed:
        return
    wait = result.retry_after
    if wait is None:
        raise RateLimitError(f"Rate limit exceeded ({result.reason})")
    raise RateLimitError(
        f"Rate limit exceeded: need to wait {wait:.1f}s", retry_after=int(wait) + 1
    )
