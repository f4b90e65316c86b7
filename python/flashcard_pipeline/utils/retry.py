"""Retrying failed calls with exponential backoff, as the old package's ``utils.retry`` did.

:class:`RetryConfig` says how many calls and how long to wait between them; :func:`retry_async`
and :func:`retry_sync` decorate a function with it, :func:`retry_with_config` awaits one call
with it. An error in ``retry_on`` leads to another call, any other error propagates at once as
it is; when the last call fails, :class:`~flashcard_pipeline.exceptions.RetryExhausted` is
raised from the last error (which is also its ``last_exception``). Each retry is logged as a
warning and giving up as an error on the ``flashcard_pipeline.utils.retry`` logger.

The waits ignore what the error says; for a rate limiter's refusals, which carry
``retry_after``, use :func:`flashcard_pipeline.retry.retry_on_rate_limit`.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from flashcard_pipeline._arguments import integer, number
from flashcard_pipeline.exceptions import RetryExhausted
from flashcard_pipeline.retry import LONGEST_DELAY, Retries, call_async, retrying

__all__ = ["RetryConfig", "retry_async", "retry_sync", "retry_with_config"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class RetryConfig:
    """How to retry; every field is checked when the config is made.

    Attributes:
        max_attempts: Calls in all, an int >= 1.
        initial_delay: Seconds before the first retry, >= 0.
        max_delay: The longest wait in seconds, from 0 to a year.
        exponential_base: The factor by which the wait grows at each retry, >= 1.
        jitter: Whether each wait is multiplied by a random factor in [0.5, 1), so that many
            callers do not all come back at once.
        retry_on: The errors that lead to another call: ``Exception`` subclasses (a single
            class is taken as a tuple of one).

    Raises:
        TypeError, ValueError: a bad field (the message starts with its name).
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0
    exponential_base: float = 2.0
    jitter: bool = True
    retry_on: tuple[type[Exception], ...] = (Exception,)

    def __post_init__(self) -> None:
        self.max_attempts = integer("max_attempts", self.max_attempts, at_least=1)
        self.initial_delay = number("initial_delay", self.initial_delay, at_least=0)
        self.max_delay = number("max_delay", self.max_delay, at_least=0, at_most=LONGEST_DELAY)
        self.exponential_base = number("exponential_base", self.exponential_base, at_least=1)
        if not isinstance(self.jitter, bool):
            raise TypeError(f"jitter: must be a bool, got {type(self.jitter).__name__}")
        self.retry_on = _exception_types(self.retry_on)

    def calculate_delay(self, attempt: int) -> float:
        """Seconds to wait after the 0-based ``attempt`` failed:
        ``min(initial_delay * exponential_base ** attempt, max_delay)``, times a random factor
        in [0.5, 1) when ``jitter`` is set."""
        attempt = integer("attempt", attempt, at_least=0)
        try:
            delay = min(self.initial_delay * self.exponential_base**attempt, self.max_delay)
        except OverflowError:  # the growth is far past any max_delay
            delay = self.max_delay if self.initial_delay > 0 else 0.0
        if self.jitter:
            delay *= 0.5 + random.random() * 0.5
        return delay


def retry_async(config: RetryConfig | None = None) -> Callable[[F], F]:
    """Decorates a coroutine function to be called again as ``config`` says (the defaults
    when ``None``), as it is when decorating.

    Raises:
        TypeError: ``config`` is not a ``RetryConfig``; or, when decorating, the function is
            not a coroutine function (use :func:`retry_sync`).
    """
    retry_config = _config(config)

    def decorate(function: F) -> F:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(
                f"retry_async: {_name(function)} is not a coroutine function (use retry_sync)"
            )
        return retrying(function, _retries(retry_config, function))  # type: ignore[return-value]

    return decorate


def retry_sync(config: RetryConfig | None = None) -> Callable[[F], F]:
    """Decorates a plain function to be called again as ``config`` says (the defaults when
    ``None``), as it is when decorating.

    Raises:
        TypeError: ``config`` is not a ``RetryConfig``; or, when decorating, the function is
            a coroutine function (use :func:`retry_async`).
    """
    retry_config = _config(config)

    def decorate(function: F) -> F:
        if inspect.iscoroutinefunction(function):
            raise TypeError(
                f"retry_sync: {_name(function)} is a coroutine function (use retry_async)"
            )
        return retrying(function, _retries(retry_config, function))  # type: ignore[return-value]

    return decorate


async def retry_with_config(
    func: Callable[..., Awaitable[T]],
    *args: Any,
    config: RetryConfig | None = None,
    **kwargs: Any,
) -> T:
    """``await func(*args, **kwargs)``, called again as ``config`` says (the defaults when
    ``None``).

    Raises:
        RetryExhausted: every call failed with an error in ``config.retry_on``.
        TypeError: ``config`` is not a ``RetryConfig``.
    """
    return await call_async(_retries(_config(config), func), func, *args, **kwargs)


def _config(config: object) -> RetryConfig:
    """A checked copy of ``config``: changing the caller's config later changes nothing."""
    if config is None:
        return RetryConfig()
    if not isinstance(config, RetryConfig):
        raise TypeError(f"config: must be a RetryConfig or None, got {type(config).__name__}")
    return replace(config)


def _exception_types(retry_on: object) -> tuple[type[Exception], ...]:
    types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not all(isinstance(kind, type) and issubclass(kind, Exception) for kind in types):
        raise TypeError(
            f"retry_on: must be an Exception subclass or a tuple of them, got {retry_on!r}"
        )
    return types


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__name__", None) or repr(function)


def _retries(config: RetryConfig, function: Callable[..., Any]) -> Retries[Exception]:
    """``config`` as the attempt loop's policy, logging for ``function``."""
    attempts, name = config.max_attempts, _name(function)

    def wait(error: Exception, attempt: int) -> float:
        delay = config.calculate_delay(attempt)
        logger.warning(
            "Retry %d/%d for %s after %s: %s. Waiting %.2fs before next attempt.",
            attempt + 1, attempts, name, type(error).__name__, error, delay,
        )
        return delay

    def exhausted(error: Exception) -> RetryExhausted:
        logger.error("All %d retry attempts exhausted for %s", attempts, name)
        return RetryExhausted(f"Retry exhausted after {attempts} attempts", last_exception=error)

    return Retries(attempts=attempts, catch=config.retry_on, wait=wait, exhausted=exhausted)
