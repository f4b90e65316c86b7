"""Exceptions shared by the old (`rate_limiter`) and the new (`rate_limiter_v2`) API."""

from __future__ import annotations

__all__ = ["RateLimitError"]


class RateLimitError(Exception):
    """A request was refused by a rate limiter.

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
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.reset_at = reset_at
