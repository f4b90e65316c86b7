"""Arguments checked under the name the caller wrote.

The native engine checks its own arguments and names them as it knows them (``rate``,
``count``, ``max_wait``). Where the Python layer passes a caller's value on under another
name (``requests_per_minute`` becomes ``rate``, the shim's ``tokens`` becomes ``count``) or
has read it from the environment, :func:`named` and :func:`renamed` put the caller's name back
in the error. :func:`number` and :func:`integer` check the numbers that only the Python layer
uses.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["integer", "named", "number", "renamed"]


def number(
    argument: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> float:
    """``value`` as a float, if it is a finite real number within the bounds given.

    Raises:
        TypeError: ``value`` is not a real number (bools are not numbers).
        ValueError: NaN, infinite or out of bounds; the message states the allowed range.
        Both messages start with ``argument``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument}: must be a number, got {type(value).__name__}")
    try:
        real = float(value)
    except OverflowError:  # an int beyond any float
        real = math.inf
    bounds = [
        (f"{relation} {bound}", within)
        for relation, bound, within in (
            (">", above, above is None or real > above),
            (">=", at_least, at_least is None or real >= at_least),
            ("<=", at_most, at_most is None or real <= at_most),
        )
        if bound is not None
    ]
    if not (math.isfinite(real) and all(within for _, within in bounds)):
        allowed = " and ".join(text for text, _ in bounds)
        raise ValueError(f"{argument}: must be a finite number {allowed}".rstrip() + f", got {value!r}")
    return real


def integer(argument: str, value: object, *, at_least: int) -> int:
    """``value`` if it is an int (not a bool) >= ``at_least``.

    Raises:
        TypeError: ``value`` is not an int (floats, even whole ones, are refused).
        ValueError: ``value`` is below ``at_least``.
        Both messages start with ``argument`` and state the allowed range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument}: must be an int >= {at_least}, got {type(value).__name__}")
    if value < at_least:
        raise ValueError(f"{argument}: must be an int >= {at_least}, got {value!r}")
    return value


def renamed(error: Exception, **names: str) -> Exception:
    """``error`` under the caller's name for its argument.

    An error whose message starts ``"rate: "``, with ``names={"rate": "requests_per_minute"}``,
    comes back as the same type of error starting ``"requests_per_minute: "`` (its context
    suppressed, as ``raise ... from None`` would); any other error comes back as it is. Raise
    what it returns.
    """
    argument, colon, rest = str(error).partition(": ")
    caller = names.get(argument) if colon else None
    if caller is None or caller == argument:
        return error
    better = type(error)(f"{caller}: {rest}")
    better.__suppress_context__ = True
    return better


@contextmanager
def named(**names: str) -> Iterator[None]:
    """Inside, a ``TypeError``/``ValueError`` about an argument in ``names`` is raised under the
    caller's name for it (see :func:`renamed`): ``with named(rate="requests_per_minute"):``."""
    try:
        yield
    except (TypeError, ValueError) as error:
        raise renamed(error, **names)
