"""Retrying calls that a rate limiter refused, honouring ``RateLimitError.retry_after``.

Also the attempt loop that every retrying decorator runs, this one and those of
:mod:`flashcard_pipeline.utils.retry`: call, and on a caught error wait and call again, on this
thread (``time.sleep``) or in an asyncio task (``asyncio.sleep``). A decorator states only its
policy as :class:`Retries`; :func:`call`, :func:`call_async` and :func:`retrying` run it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from flashcard_pipeline._arguments import integer, number
from flashcard_pipeline.exceptions import RateLimitError

__all__ = ["retry_on_rate_limit"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

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
    max_attempts = integer("max_attempts", max_attempts, at_least=1)
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

    retries = Retries(attempts=max_attempts, catch=(RateLimitError,), wait=delay)

    def decorate(function: F) -> F:
        return retrying(function, retries)  # type: ignore[return-value]

    return decorate


def _usable_wait(retry_after: object) -> float | None:
    """``retry_after`` as seconds to wait, or ``None`` when it says nothing usable."""
    try:
        return number("retry_after", retry_after, at_least=0)
    except (TypeError, ValueError):
        return None


# --- the attempt loop ----------------------------------------------------------------------


@dataclass(frozen=True)
class Retries(Generic[E]):
    """A retry policy.

    Attributes:
        attempts: Calls in all, >= 1.
        catch: The errors that lead to another call; any other error propagates at once.
        wait: Seconds to wait after ``error`` on the 0-based ``attempt``; called once per retry,
            not after the last call.
        exhausted: The error to raise, from the last one, when the last call has failed;
            ``None`` re-raises the last error as it is.
    """

    attempts: int
    catch: tuple[type[E], ...]
    wait: Callable[[E, int], float]
    exhausted: Callable[[E], BaseException] | None = None


def call(retries: Retries[E], function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)``, called again under ``retries``, sleeping on this thread."""
    attempt = 0
    while True:
        try:
            return function(*args, **kwargs)
        except retries.catch as error:
            if attempt + 1 >= retries.attempts:
                if retries.exhausted is None:
                    raise
                raise retries.exhausted(error) from error
            time.sleep(retries.wait(error, attempt))
        attempt += 1


async def call_async(
    retries: Retries[E], function: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
) -> T:
    """``await function(*args, **kwargs)``, called again under ``retries``, sleeping in this
    task."""
    attempt = 0
    while True:
        try:
            return await function(*args, **kwargs)
        except retries.catch as error:
            if attempt + 1 >= retries.attempts:
                if retries.exhausted is None:
                    raise
                raise retries.exhausted(error) from error
            await asyncio.sleep(retries.wait(error, attempt))
        attempt += 1


def retrying(function: Callable[..., Any], retries: Retries[E]) -> Callable[..., Any]:
    """``function`` retried under ``retries``: a coroutine function if it is one (it runs
    :func:`call_async`), a plain function otherwise (:func:`call`)."""
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def retried_async(*args: Any, **kwargs: Any) -> Any:
            return await call_async(retries, function, *args, **kwargs)

        return retried_async

    @functools.wraps(function)
    def retried(*args: Any, **kwargs: Any) -> Any:
        return call(retries, function, *args, **kwargs)

    return retried
