"""Retrying calls that a rate limiter refused, honouring ``RateLimitError.retry_after``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flashcard_pipeline.exceptions import RateLimitError

__all__ = ["retry_on_rate_limit"]

F = TypeVar("F", bound=Callable[..., Any])


def retry_on_rate_limit(
    max_attempts: int = 5,
    *,
    backoff: float = 1.0,
    max_delay: float = 60.0,
    jitter: float = 0.1,
) -> Callable[[F], F]:
    """Calls the decorated function (sync or async) again after a ``RateLimitError``.

    Each retry waits the error's ``retry_after`` (or, when it is unknown, ``backoff`` doubled
    at each attempt), capped at ``max_delay``, plus up to ``jitter`` of it at random so that
    many callers do not all come back at once. After ``max_attempts`` calls in all, the last
    error is raised.

    Raises:
        ValueError: ``max_attempts`` < 1, or a negative ``backoff``, ``max_delay`` or ``jitter``.
    """
    if not (isinstance(max_attempts, int) and max_attempts >= 1):
        raise ValueError(f"max_attempts: must be an int >= 1, got {max_attempts!r}")
    for name, value in (("backoff", backoff), ("max_delay", max_delay), ("jitter", jitter)):
        if not value >= 0:
            raise ValueError(f"{name}: must be a number >= 0, got {value!r}")

    def delay(error: RateLimitError, attempt: int) -> float:
        base = error.retry_after if error.retry_after is not None else backoff * 2**attempt
        base = min(base, max_delay)
        return base + random.uniform(0, jitter * base)

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
