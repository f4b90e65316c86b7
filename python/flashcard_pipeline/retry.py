"""Retrying calls that a rate limiter refused, honouring ``RateLimitError.retry_after``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flashcard_pipeline._arguments import number
from flashcard_pipeline.exceptions import RateLimitError

__all__ = ["retry_on_rate_limit"]

F = TypeVar("F", bound=Callable[..., Any])

#: The longest ``max_delay`` (seconds): a year, well within what ``time.sleep`` takes.
LONGEST_DELAY = 365 * 24 * 3600


def retry_on_rate_limit(
    max_attempts: int = 5,
    *,
    backoff: float = 1.0,
    max_delay: float = 60.0,
    jitter: float = 0.1,
) -> Callable[[F], F]:
    """Calls the decorated function (sync or async) again after a ``RateLimitError``.

    Each retry waits the error's ``retry_after``, capped at ``max_delay``, plus up to
    ``jitter`` of it at random so that many callers do not all come back at once. When
    ``retry_after`` is unknown (``None``) or unusable (negative, NaN, infinite, not a
    number), the wait is ``backoff`` doubled at each attempt instead (``backoff``,
    ``2 * backoff``, ``4 * backoff``, ..., capped the same way). After ``max_attempts`` calls
    in all, the last error is raised.

    Args:
        max_attempts: Calls in all, an int >= 1.
        backoff: Seconds before the first retry when ``retry_after`` is not usable; >= 0.
        max_delay: The longest wait in seconds before jitter, from 0 to a year.
        jitter: The random extra, as a fraction of the wait, from 0 to 1.

    Raises:
        TypeError, ValueError: a bad argument (the message starts with its name).
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise TypeError(
            f"max_attempts: must be an int >= 1, got {type(max_attempts).__name__}"
        )
    if max_attempts < 1:
        raise ValueError(f"max_attempts: must be an int >= 1, got {max_attempts!r}")
    backoff = number("backoff", backoff, at_least=0)
    max_delay = number("max_delay", max_delay, at_least=0, at_most=LONGEST_DELAY)
    jitter = number("jitter", jitter, at_least=0, at_most=1)

    def delay(error: RateLimitError, attempt: int) -> float:
        wait = _usable_wait(error.retry_after)
        if wait is None:
            # Past 2**1000 the doubling no longer matters (and 2.0**1024 overflows).
            wait = backoff * 2.0 ** min(attempt, 1000)
        wait = min(wait, max_delay)
        return wait + random.uniform(0, jitter * wait)

    def decorate(function: F) -> F:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def retrying_async(*args: Any, **kwargs: Any) -> Any:
                for attempt in range(max_attempts):
                    try:
                        return await function(*args, **kwargs)
                    except RateLimitError as error:
                        if attempt + 1 == max_attempts:
                            raise
                        await asyncio.sleep(delay(error, attempt))
                raise AssertionError("unreachable")

            return retrying_async  # type: ignore[return-value]

        @functools.wraps(function)
        def retrying(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(max_attempts):
                try:
                    return function(*args, **kwargs)
                except RateLimitError as error:
                    if attempt + 1 == max_attempts:
                        raise
                    time.sleep(delay(error, attempt))
            raise AssertionError("unreachable")

        return retrying  # type: ignore[return-value]

    return decorate


def _usable_wait(retry_after: object) -> float | None:
    """``retry_after`` as seconds to wait, or ``None`` when it says nothing usable."""
    try:
        return number("retry_after", retry_after, at_least=0)
    except (TypeError, ValueError):
        return None
