"""What the benchmark scripts print with: section headings and rates."""

from __future__ import annotations


def section(title: str) -> None:
    print()
    print(title)
    print("-" * len(title))


def fmt_rate(x: float, width: int = 0) -> str:
    """Calls (or decisions) per second, in M/s or k/s, right-aligned to ``width``."""
    if x >= 1e6:
        return f"{x / 1e6:{width}.2f} M/s"
    return f"{x / 1e3:{width}.1f} k/s"
