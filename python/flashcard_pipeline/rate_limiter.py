"""The old rate limiter's API on the new engine, for code that has not migrated yet.

``RateLimiter`` keeps its old meaning: a token bucket of ``burst_size`` refilled at
``requests_per_minute / 60`` per second, and an exact sliding window of
``requests_per_hour`` per hour, checked and consumed together (all or nothing), now
thread-safe. ``AdaptiveRateLimiter`` and ``CompositeLimiter`` come along. What differs from
the old module is listed in ``docs/MIGRATION.md``.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from flashcard_pipeline._arguments import named, number, renamed
from flashcard_pipeline._native import Engine, ManualClock, RateLimitResult, try_acquire_all
from flashcard_pipeline._waiting import Steps, wait_async
from flashcard_pipeline.config import setting
from flashcard_pipeline.exceptions import RateLimitError

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


# The old module's caps and the adaptive limiter's bounds.
MAX_RPM = 600_000
MAX_RPH = 36_000_000
MAX_BURST = 10_000
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
            self._minute = Engine(
                self.requests_per_minute, 60.0, shards=1, burst_size=self.burst_size, clock=clock
            )
        with named(rate=rph.name):
            self._hour = Engine(
                self.requests_per_hour, 3600.0, shards=1, algorithm="sliding_window", clock=clock
            )
        self.requests_allowed = 0
        self.requests_denied = 0

    # --- decisions -----------------------------------------------------------------------

    def _parts(self, tokens: int) -> tuple[tuple[Engine, str, int], ...]:
        return ((self._minute, "default", tokens), (self._hour, "default", tokens))

    def _decide(self, tokens: int) -> RateLimitResult | _Silenced:
        try:
            result = try_acquire_all(self._parts(tokens))
        except (TypeError, ValueError) as error:
            raise renamed(error, count="tokens")
        self._count(result.allowed)
        return result

    def _count(self, allowed: bool) -> bool:
        # Statistics only; the GIL makes each += atomic here.
        if allowed:
            self.requests_allowed += 1
        else:
            self.requests_denied += 1
        return allowed

    def try_acquire(self, tokens: int = 1) -> bool:
        """Takes ``tokens`` from both the bucket and the hourly window, or from neither."""
        # The hot path: counted inline, a method call would cost a sixth of the whole call.
        try:
            admitted = self._minute.admit_with(self._hour, tokens)
        except (TypeError, ValueError) as error:
            raise renamed(error, count="tokens")
        if admitted:
            self.requests_allowed += 1
            return True
        self.requests_denied += 1
        return False

    async def acquire(self, tokens: int = 1) -> None:
        """Takes ``tokens`` now or raises.

        Raises:
            RateLimitError: limited; ``retry_after`` is whole seconds (``int(wait) + 1``), as
                in the old module.
        """
        _raise_if_refused(self._decide(tokens))

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """Waits for one token up to ``timeout`` seconds (``None`` or ``inf``: as long as it
        takes).

        Returns ``True`` once admitted, ``False`` when the wait would exceed ``timeout``.

        Raises:
            ValueError: ``timeout`` is negative or NaN.
        """
        with named(max_wait="timeout"):
            budget = self._minute.wait_budget(timeout)
        return await self._wait(1, budget)

    async def wait_if_needed(self, tokens: int = 1) -> None:
        """Waits until ``tokens`` are taken.

        Raises:
            ValueError: ``tokens`` exceeds ``burst_size`` or ``requests_per_hour``, so waiting
                could never end; raised at once.
        """
        if not await self._wait(tokens, math.inf):
            raise ValueError(
                f"tokens: must be at most burst_size ({self.burst_size}) and requests_per_hour "
                f"({self.requests_per_hour}), got {tokens}; it could never be served"
            )

    async def _wait(self, tokens: int, budget: float) -> bool:
        return await wait_async(self._retries(tokens, budget), self._clock)

    def _retries(self, tokens: int, budget: float) -> Steps[bool]:
        """Asks again after each ``retry_after`` until admitted, or until the next wait
        would run past ``budget`` seconds or could never end."""
        start = self._minute.now()
        while True:
            result = self._decide(tokens)
            if result.allowed:
                return True
            wait = result.retry_after
            if wait is None or self._minute.now() - start + wait > budget:
                return False
            yield wait

    # --- configuration and views ---------------------------------------------------------

    def set_rate(self, requests_per_minute: float) -> None:
        """Changes the minute rate (a finite number > 0, capped at 600,000); the bucket's
        capacity becomes ``max(1, int(rpm / 60))``."""
        rpm = min(number("requests_per_minute", requests_per_minute, above=0), MAX_RPM)
        burst = max(1, int(rpm / 60))
        with named(rate="requests_per_minute"):
            self._minute.set_rate(rpm, burst_size=burst)
        self.requests_per_minute = rpm
        self.burst_size = burst

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now."""
        return self._minute.peek()

    @property
    def rate(self) -> float:
        """The bucket's refill in tokens per second."""
        return self.requests_per_minute / 60.0

    def get_stats(self) -> dict[str, float]:
        tokens = self.tokens
        return {
            "requests_allowed": self.requests_allowed,
            "requests_denied": self.requests_denied,
            "capacity_utilization": 1.0 - tokens / self.burst_size,
            "current_tokens": tokens,
            "capacity": self.burst_size,
        }

    def get_status(self) -> dict[str, object]:
        return {
            "minute_tokens_available": self.tokens,
            "minute_limit": self.requests_per_minute,
            "hour_requests_made": int(self._hour.rate) - int(self._hour.peek()),
            "hour_limit": self.requests_per_hour,
            "burst_size": self.burst_size,
        }

    def reset(self) -> None:
        """Refills the bucket and empties the hourly window."""
        self._minute.reset()
        self._hour.reset()

    def reset_stats(self) -> None:
        self.requests_allowed = 0
        self.requests_denied = 0


class AdaptiveRateLimiter(RateLimiter):
    """A :class:`RateLimiter` whose minute rate follows the upstream's answers.

    ``on_rate_limit`` lowers the rate by 10 % (not below 10 per minute) and, given a
    ``retry_after``, takes nothing for that long; ``on_success`` raises it by 5 % after 10
    successes in a row (not above ``MAX_REQUESTS_PER_MINUTE``). ``initial_requests_per_minute``
    is the :class:`RateLimiter`'s ``requests_per_minute``.
    """

    def __init__(
        self,
        initial_requests_per_minute: float | None = None,
        requests_per_hour: float | None = None,
        burst_size: int | None = None,
        *,
        clock: ManualClock | None = None,
    ) -> None:
        with named(requests_per_minute="initial_requests_per_minute"):
            super().__init__(initial_requests_per_minute, requests_per_hour, burst_size, clock=clock)
        self.consecutive_successes = 0
        self.consecutive_failures = 0
        self._silent_until = 0.0

    def _now(self) -> float:
        return self._clock.monotonic() if self._clock is not None else time.monotonic()

    def _silence(self) -> _Silenced | None:
        left = self._silent_until - self._now()
        return _Silenced(left) if left > 0 else None

    def _decide(self, tokens: int) -> RateLimitResult | _Silenced:
        silenced = self._silence()
        if silenced is not None:
            self._count(False)
            return silenced
        return super()._decide(tokens)

    def try_acquire(self, tokens: int = 1) -> bool:
        if self._silent_until > self._now():
            return self._count(False)
        return super().try_acquire(tokens)

    def on_success(self) -> None:
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        if self.consecutive_successes >= 10:
            self.consecutive_successes = 0
            self.set_rate(min(self.requests_per_minute * 1.05, MAX_REQUESTS_PER_MINUTE))

    def on_rate_limit(self, retry_after: float | None = None) -> None:
        """Lowers the rate; a ``retry_after`` > 0 (seconds, a finite number) also silences the
        limiter that long (``None``, 0 or less: no silence)."""
        silence = 0.0 if retry_after is None else number("retry_after", retry_after)
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        self.set_rate(max(self.requests_per_minute * 0.9, MIN_REQUESTS_PER_MINUTE))
        if silence > 0:
            self._silent_until = max(self._silent_until, self._now() + silence)

    def get_status(self) -> dict[str, object]:
        status = super().get_status()
        status.update(
            adaptive_enabled=True,
            consecutive_successes=self.consecutive_successes,
            consecutive_failures=self.consecutive_failures,
            current_requests_per_minute=self.requests_per_minute,
        )
        return status


class _Silenced:
    """A refusal while an adaptive limiter is silenced: ``retry_after`` is the silence left."""

    allowed = False
    reason = "rate_limited"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after

    def __bool__(self) -> bool:
        return False


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

    def _stage_limiter(self, stage: int | str) -> RateLimiter:
        allowed = "1, 2, 'stage1' or 'stage2'"
        if isinstance(stage, bool) or not isinstance(stage, (int, str)):
            raise TypeError(f"stage: must be {allowed}, got {type(stage).__name__}")
        if stage not in _STAGES:
            raise ValueError(f"stage: must be {allowed}, got {stage!r}")
        return self.stage1_limiter if _STAGES[stage] == 1 else self.stage2_limiter

    async def acquire_for_stage(self, stage: int | str, estimated_tokens: int = 350) -> None:
        """Takes one request from every limiter that applies, or from none.

        Raises:
            RateLimitError: one of them is limited (``retry_after`` in whole seconds); the
                others are left untouched.
            TypeError, ValueError: unknown ``stage``, or ``estimated_tokens`` not a finite
                number >= 0.
        """
        limiters = [self.api_limiter, self._stage_limiter(stage)]
        if number("estimated_tokens", estimated_tokens, at_least=0) > 1000:
            limiters.insert(1, self.cost_limiter)
        silenced = self.api_limiter._silence()
        if silenced is not None:
            self.api_limiter._count(False)
            _raise_if_refused(silenced)
        parts = tuple(part for limiter in limiters for part in limiter._parts(1))
        result = try_acquire_all(parts)
        for limiter in limiters:
            limiter._count(result.allowed)
        _raise_if_refused(result)

    def on_success(self) -> None:
        self.api_limiter.on_success()

    def on_rate_limit(self, retry_after: float | None = None) -> None:
        self.api_limiter.on_rate_limit(retry_after)

    def get_status(self) -> dict[str, dict[str, object]]:
        return {
            "api": self.api_limiter.get_status(),
            "cost": self.cost_limiter.get_status(),
            "stage1": self.stage1_limiter.get_status(),
            "stage2": self.stage2_limiter.get_status(),
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


def _raise_if_refused(result: RateLimitResult | _Silenced) -> None:
    if result.allowed:
        return
    wait = result.retry_after
    raise RateLimitError(
        f"Rate limit exceeded ({result.reason})",
        retry_after=None if wait is None else int(wait) + 1,
    )
