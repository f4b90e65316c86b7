"""The package's exceptions, as the old code base named them.

Every one is a :class:`PipelineError`, with ``message`` (also its ``str``) and a ``details``
dict. The rate limiters raise :class:`RateLimitError` (an :class:`ApiError` with
``status_code`` 429), :mod:`flashcard_pipeline.utils.retry` raises :class:`RetryExhausted`;
the others are kept so that code written against the old package still imports and raises
them. Every one pickles, whatever its constructor takes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "AuthenticationError",
    "CacheError",
    "CircuitBreakerError",
    "CircuitBreakerOpen",
    "ConfigurationError",
    "DatabaseError",
    "ExportError",
    "IngressError",
    "NetworkError",
    "ParsingError",
    "PipelineError",
    "ProcessingError",
    "RateLimitError",
    "RetryExhausted",
    "ValidationError",
]


class PipelineError(Exception):
    """The base of the package's exceptions.

    Args:
        message: What happened; also the error's ``str``.
        details: Facts about it; a copy is kept (an empty dict when omitted).
    """

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its args and attributes, without calling __init__ again: subclasses
        # whose constructor takes other arguments than ``args`` unpickle too.
        return (_unpickled, (type(self), self.args), self.__dict__)


def _unpickled(cls: type[PipelineError], args: tuple[Any, ...]) -> PipelineError:
    return cls.__new__(cls, *args)


class ApiError(PipelineError):
    """An API answered with an error; ``details`` holds ``status_code`` and ``response_body``."""

    def __init__(
        self, message: str, status_code: int | None = None, response_body: str | None = None
    ) -> None:
        super().__init__(message, {"status_code": status_code, "response_body": response_body})
        self.status_code = status_code
        self.response_body = response_body


class RateLimitError(ApiError):
    """A request was refused by a rate limiter: an :class:`ApiError` with ``status_code`` 429,
    ``details`` also holding ``retry_after`` and ``reset_at``.

    Args:
        message: What happened; a default naming the wait is used when omitted.
        retry_after: Seconds until a retry can succeed, when known.
        reset_at: Epoch seconds at which the budget is full again, when known.
    """

    def __init__(
        self,
        message: str | None = None,
        retry_after: float | None = None,
        reset_at: float | None = None,
    ) -> None:
        if message is None:
            # Any retry_after is kept as given; only a real number is worth printing.
            known = isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool)
            message = (
                f"Rate limit exceeded; retry after {retry_after:.3f}s"
                if known
                else "Rate limit exceeded"
            )
        super().__init__(message, status_code=429)
        self.retry_after = retry_after
        self.reset_at = reset_at
        self.details.update(retry_after=retry_after, reset_at=reset_at)


class AuthenticationError(ApiError):
    """The API refused the credentials: ``status_code`` 401."""

    def __init__(self, message: str = "Invalid API key") -> None:
        super().__init__(message, status_code=401)


class NetworkError(PipelineError):
    """The network failed; ``details["original_error"]`` is the ``str`` of the cause, if any."""

    def __init__(self, message: str, original_error: Exception | None = None) -> None:
        super().__init__(message)
        self.original_error = original_error
        if original_error is not None:
            self.details["original_error"] = str(original_error)


class RetryExhausted(PipelineError):
    """Every attempt failed; ``last_exception`` is the last failure (its ``str`` is in
    ``details["last_exception"]``)."""

    def __init__(self, message: str, last_exception: BaseException | None = None) -> None:
        super().__init__(message)
        self.last_exception = last_exception
        if last_exception is not None:
            self.details["last_exception"] = str(last_exception)


class ValidationError(PipelineError):
    """Data failed validation; ``details`` holds the ``field`` and its ``value``."""

    def __init__(self, message: str, field: str | None = None, value: Any = None) -> None:
        super().__init__(message, {"field": field, "value": value})
        self.field = field
        self.value = value


class CircuitBreakerError(PipelineError):
    """A circuit breaker is open; ``details`` holds ``service``, ``failure_count`` and
    ``threshold``."""

    def __init__(self, message: str, service: str, failure_count: int, threshold: int) -> None:
        super().__init__(
            message,
            {"service": service, "failure_count": failure_count, "threshold": threshold},
        )
        self.service = service
        self.failure_count = failure_count
        self.threshold = threshold


class CircuitBreakerOpen(CircuitBreakerError):
    """The old alias of :class:`CircuitBreakerError`."""


class CacheError(PipelineError):
    """A cache operation failed."""


class DatabaseError(PipelineError):
    """A database operation failed."""


class ParsingError(PipelineError):
    """An API's output could not be parsed."""


class ProcessingError(PipelineError):
    """Processing data failed."""


class IngressError(PipelineError):
    """Ingesting data failed."""


class ExportError(PipelineError):
    """Exporting data failed."""


class ConfigurationError(PipelineError):
    """The configuration is wrong."""
