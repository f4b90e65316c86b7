"""``back_off(s)`` admits nothing for ``s`` seconds whatever happens meanwhile (a reservation
cancelled, a re-rating up), then refills from empty; both algorithms, one budget and per key."""

from __future__ import annotations

import pytest

from flashcard_pipeline.rate_limiter_v2 import ShardedRateLimiter

#: The tests on make_limiter run on every backend (memory, Redis, Valkey); see conftest.
pytestmark = pytest.mark.conformance


def admitted_now(limiter: ShardedRateLimiter, tries: int = 60) -> int:
    return sum(1 for _ in range(tries) if limiter.try_acquire("k"))


@pytest.mark.parametrize("scope", ["global", "key"])
@pytest.mark.parametrize(
    ("algorithm", "burst"), [("token_bucket", 5), ("sliding_window", None)]
)
def test_a_reservation_cancelled_during_a_back_off_frees_nothing_until_it_ends(
    make_limiter, clock, scope, algorithm, burst
):
    limiter = make_limiter(
        rate=5, period=1.0, shards=1, algorithm=algorithm, burst_size=burst, scope=scope,
        clock=clock,
    )
    held = [limiter.reserve("k") for _ in range(4)]  # held at once: the burst has them
    limiter.back_off(1.0, "k")
    for reservation in held:
        assert limiter.cancel_reservation(reservation.id)
    assert admitted_now(limiter) == 0
    clock.advance(0.99)
    assert admitted_now(limiter) == 0


@pytest.mark.parametrize("scope", ["global", "key"])
def test_a_sliding_window_re_rated_up_during_a_back_off_admits_nothing_until_it_ends(
    make_limiter, clock, scope
):
    limiter = make_limiter(
        rate=10, period=1.0, shards=1, algorithm="sliding_window", scope=scope, clock=clock
    )
    assert limiter.try_acquire("k")  # the key has a budget of its own
    limiter.back_off(1.0, "k")
    limiter.set_rate(50)
    assert admitted_now(limiter) == 0
    clock.advance(1.1)  # a key's window frees a place up to a granule (1/30 s) late
    assert admitted_now(limiter) == 50
