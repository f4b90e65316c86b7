"""Configuration from the environment, shared by the old and the new API."""

from __future__ import annotations

import os
from typing import overload

__all__ = ["env_int", "env_number"]


def _raw(name: str) -> str | None:
    raw = os.environ.get(name)
    return None if raw is None or raw.strip() == "" else raw.strip()


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
        raise ValueError(f"{name}: must be a number, got {raw!r}") from None


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
        raise ValueError(f"{name}: must be a whole number, got {raw!r}") from None
