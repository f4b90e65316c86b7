"""Configuration from the environment, shared by the old and the new API.

An error about a value read from a variable names the variable and shows its text,
``BURST_SIZE='0.5': must be a finite number >= 1, got 0.5``: :func:`setting` gives each value
the name its errors carry, and :func:`~flashcard_pipeline._arguments.named` applies it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple, overload

__all__ = ["Setting", "env_int", "env_label", "env_number", "setting"]


def _raw(name: str) -> str | None:
    raw = os.environ.get(name)
    return None if raw is None or raw.strip() == "" else raw.strip()


def env_label(name: str) -> str:
    """How errors name a value read from the variable ``name``: ``BURST_SIZE='0.5'``."""
    return f"{name}={os.environ.get(name, '')!r}"


@overload
def env_number(name: str, default: float) -> float: ...
@overload
def env_number(name: str, default: None) -> float | None: ...
def env_number(name: str, default: float | None) -> float | None:
    """An environment variable as a number, or ``default`` when unset or empty.

    Raises:
        ValueError: the variable is set but is not a number (the message names it).
    """
    raw = _raw(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{env_label(name)}: must be a number") from None


@overload
def env_int(name: str, default: int) -> int: ...
@overload
def env_int(name: str, default: None) -> int | None: ...
def env_int(name: str, default: int | None) -> int | None:
    """An environment variable as a whole number, or ``default`` when unset or empty.

    Raises:
        ValueError: the variable is set but is not a whole number (the message names it).
    """
    raw = _raw(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{env_label(name)}: must be a whole number") from None


class Setting(NamedTuple):
    """A value for an argument, and the name errors about it carry: the argument's own, or
    for a value read from the environment :func:`env_label` of the variable."""

    value: Any
    name: str


def setting(
    given: object,
    argument: str,
    default: float | None,
    *,
    prefix: str = "",
    parse: Callable[[str, None], float | None] = env_number,
) -> Setting:
    """``given`` unless it is ``None``; else the variable ``prefix + argument.upper()``
    (``burst_size`` reads ``BURST_SIZE``) when set; else ``default``.

    Raises:
        ValueError: the variable is set but malformed (the message names it).
    """
    if given is not None:
        return Setting(given, argument)
    variable = prefix + argument.upper()
    value = parse(variable, None)
    if value is None:
        return Setting(default, argument)
    return Setting(value, env_label(variable))
