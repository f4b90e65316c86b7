"""A sliding window re-rated to a longer period counts what the old window counted at the
re-rating: the same answer whether or not another call touched the limiter first, with one
budget or per key."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flashcard_pipeline.rate_limiter_v2 import ManualClock, ShardedRateLimiter

#: The tests on make_limiter run on every backend (memory, Redis, Valkey); see conftest.
pytestmark = pytest.mark.conformance


def after_history(
    make_limiter: Callable[..., ShardedRateLimiter], clock: ManualClock, scope: str, touched: bool
) -> float:
    limiter = make_limiter(
        rate=10, period=1.0, shards=1, algorithm="sliding_window", scope=scope, clock=clock
    )
    for _ in range(10):  # one admission every 100 ms, t = 0.0 .. 0.9
        assert limiter.try_acquire("k")
        clock.advance(0.1)
    clock.advance(0.45)  # t = 1.45: the old window counts t = 0.5 .. 0.9
    if touched:
        limiter.peek("k")  # an unrelated call, which may tidy the log
    limiter.set_rate(10, period=60.0)
    return limiter.peek("k")


@pytest.mark.parametrize("scope", ["global", "key"])
@pytest.mark.parametrize("touched", [False, True])
def test_a_longer_period_counts_what_the_old_window_counted(make_limiter, clock, scope, touched):
    assert after_history(make_limiter, clock, scope, touched) == 5
