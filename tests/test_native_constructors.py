"""Issue 10: ``RateLimitResult`` and ``TokenReservation`` are made by hand as the previous
version's dataclasses were (same parameters, order and defaults), with checked arguments,
the old semantics for what they were given, and a limiter's own objects unchanged."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from flashcard_pipeline import _native
from flashcard_pipeline.rate_limiter_v2 import (
    ManualClock,
    RateLimitResult,
    Reservation,
    ShardedRateLimiter,
    TokenReservation,
)

NOW = 1_700_000_000.0  # a patched time.time()


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Pins ``time.time()`` to ``NOW``; calling the fixture moves it to another instant."""

    def set_to(at: float) -> None:
        monkeypatch.setattr(time, "time", lambda: at)

    set_to(NOW)
    return set_to


# --- RateLimitResult ---------------------------------------------------------------------


def test_result_defaults_as_the_dataclass():
    result = RateLimitResult(True)
    assert result.allowed is True
    assert (result.retry_after, result.tokens_remaining, result.shard_id, result.reason) == (
        None,
        None,
        None,
        None,
    )
    assert result.waited == 0.0  # not in the old dataclass; a result made by hand waited for nothing


def test_result_positional_and_keyword_arguments_in_the_dataclass_order():
    positional = RateLimitResult(False, 1.5, 2.0, 3, "Rate limit exceeded on all shards")
    keyword = RateLimitResult(
        reason="Rate limit exceeded on all shards",
        shard_id=3,
        tokens_remaining=2.0,
        retry_after=1.5,
        allowed=False,
    )
    for result in (positional, keyword):
        assert result.allowed is False
        assert result.retry_after == 1.5
        assert result.tokens_remaining == 2.0
        assert result.shard_id == 3
        assert result.reason == "Rate limit exceeded on all shards"  # any text, kept as given
    assert positional == keyword
    ints = RateLimitResult(True, retry_after=0, tokens_remaining=7)  # ints are numbers
    assert (ints.retry_after, ints.tokens_remaining) == (0.0, 7.0)
    assert isinstance(ints.retry_after, float) and isinstance(ints.tokens_remaining, float)


def test_the_old_integration_tests_construction():
    # tests/integration/test_sharded_rate_limiter_integration.py of the previous version
    assert RateLimitResult(allowed=True, tokens_remaining=99.25).tokens_remaining == 99.25
    refused = RateLimitResult(allowed=False, retry_after=1.0)
    assert not refused and refused.retry_after == 1.0


def test_result_truthiness_and_await():
    assert bool(RateLimitResult(True)) is True
    assert bool(RateLimitResult(False, retry_after=1.0)) is False

    async def main() -> tuple[RateLimitResult, list[RateLimitResult]]:
        made = RateLimitResult(False, retry_after=2.0)
        awaited = await made
        assert awaited is made
        gathered = await asyncio.gather(RateLimitResult(True), RateLimitResult(False))
        return awaited, gathered

    awaited, gathered = asyncio.run(main())
    assert not awaited and awaited.retry_after == 2.0
    assert [bool(r) for r in gathered] == [True, False]


def test_result_equality_is_the_dataclasses():
    a = RateLimitResult(False, 1.0, 0.0, 1, "rate_limited")
    assert a == RateLimitResult(False, 1.0, 0.0, 1, "rate_limited")
    assert not (a != RateLimitResult(False, 1.0, 0.0, 1, "rate_limited"))
    for other in (
        RateLimitResult(True, 1.0, 0.0, 1, "rate_limited"),
        RateLimitResult(False, 2.0, 0.0, 1, "rate_limited"),
        RateLimitResult(False, 1.0, None, 1, "rate_limited"),
        RateLimitResult(False, 1.0, 0.0, 2, "rate_limited"),
        RateLimitResult(False, 1.0, 0.0, 1, "other"),
        RateLimitResult(False, 1.0, 0.0, 1),
    ):
        assert a != other and not (a == other)
    # Another type is NotImplemented, as for a dataclass: never equal, no error.
    assert RateLimitResult(True) != True  # noqa: E712
    assert RateLimitResult(True) != (True, None, None, None, None)
    assert RateLimitResult(True).__eq__(True) is NotImplemented


def test_result_hash_follows_equality():
    a = RateLimitResult(False, 1.0, 0.0, 1, "rate_limited")
    b = RateLimitResult(False, 1.0, 0.0, 1, "rate_limited")
    assert a is not b and hash(a) == hash(b)
    assert len({a, b, RateLimitResult(True)}) == 2
    assert RateLimitResult(True, retry_after=0.0) == RateLimitResult(True, retry_after=-0.0)
    assert hash(RateLimitResult(True, retry_after=0.0)) == hash(RateLimitResult(True, retry_after=-0.0))


def test_result_repr():
    assert repr(RateLimitResult(True)) == (
        "RateLimitResult(allowed=True, tokens_remaining=None, retry_after=None, shard_id=None, "
        "reason=None, waited=0.0)"
    )
    assert repr(RateLimitResult(False, 1.5, 2.0, 3, "it's full")) == (
        "RateLimitResult(allowed=False, tokens_remaining=2.0, retry_after=1.5, shard_id=3, "
        "reason=\"it's full\", waited=0.0)"
    )


def test_result_is_still_immutable():
    result = RateLimitResult(True)
    with pytest.raises(AttributeError):
        result.allowed = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        result.extra = 1  # type: ignore[attr-defined]


BIG = 10**400

RESULT_CASES = [
    ({}, TypeError, None),  # allowed is required (Python's own message)
    ({"allowed": 1}, TypeError, "allowed"),
    ({"allowed": None}, TypeError, "allowed"),
    ({"allowed": "yes"}, TypeError, "allowed"),
    ({"allowed": True, "retry_after": -1}, ValueError, "retry_after"),
    ({"allowed": True, "retry_after": math.nan}, ValueError, "retry_after"),
    ({"allowed": True, "retry_after": math.inf}, ValueError, "retry_after"),
    ({"allowed": True, "retry_after": BIG}, ValueError, "retry_after"),
    ({"allowed": True, "retry_after": "1"}, TypeError, "retry_after"),
    ({"allowed": True, "retry_after": True}, TypeError, "retry_after"),
    ({"allowed": True, "tokens_remaining": -0.5}, ValueError, "tokens_remaining"),
    ({"allowed": True, "tokens_remaining": math.inf}, ValueError, "tokens_remaining"),
    ({"allowed": True, "tokens_remaining": False}, TypeError, "tokens_remaining"),
    ({"allowed": True, "tokens_remaining": [1]}, TypeError, "tokens_remaining"),
    ({"allowed": True, "shard_id": -1}, ValueError, "shard_id"),
    ({"allowed": True, "shard_id": 1024}, ValueError, "shard_id"),
    ({"allowed": True, "shard_id": BIG}, ValueError, "shard_id"),
    ({"allowed": True, "shard_id": 1.0}, TypeError, "shard_id"),
    ({"allowed": True, "shard_id": True}, TypeError, "shard_id"),
    ({"allowed": True, "reason": 3}, TypeError, "reason"),
    ({"allowed": True, "reason": b"rate_limited"}, TypeError, "reason"),
    ({"allowed": True, "waited": 1.0}, TypeError, None),  # not a parameter
]


@pytest.mark.parametrize(("kwargs", "exception", "argument"), RESULT_CASES, ids=repr)
def test_bad_result_arguments_are_refused_by_name(
    kwargs: dict[str, Any], exception: type[Exception], argument: str | None
):
    with pytest.raises(exception) as info:
        RateLimitResult(**kwargs)
    assert type(info.value) is exception
    if argument is not None:
        assert str(info.value).startswith(f"{argument}: "), str(info.value)


def message(call: Callable[[], Any], exception: type[Exception]) -> str:
    """The message of the ``exception`` that ``call`` raises (PyO3's notes aside)."""
    with pytest.raises(exception) as info:
        call()
    return str(info.value)


def test_result_error_messages_say_what_is_accepted():
    assert message(lambda: RateLimitResult(1), TypeError) == "allowed: must be a bool, got int"  # type: ignore[arg-type]
    assert (
        message(lambda: RateLimitResult(False, -1), ValueError)
        == "retry_after: must be None or a finite number >= 0, got -1"
    )
    assert (
        message(lambda: RateLimitResult(False, shard_id=-1), ValueError)
        == "shard_id: must be an int between 0 and 1023, got -1"
    )


# --- TokenReservation --------------------------------------------------------------------


def test_reservation_defaults_as_the_dataclass(frozen_time: Callable[[float], None]):
    made = TokenReservation()
    assert uuid.UUID(made.id).version == 4 and str(uuid.UUID(made.id)) == made.id
    assert made.id != TokenReservation().id
    assert (made.key, made.count, made.shard_id) == ("", 1, None)
    assert (made.reserved_at, made.execute_at, made.expires_at) == (NOW, NOW, NOW + 60.0)
    # expires_at defaults to time.time() + 60 whatever execute_at is, as the dataclass did.
    assert TokenReservation(execute_at=NOW + 120).expires_at == NOW + 60.0
    assert Reservation is TokenReservation


def test_reservation_positional_and_keyword_arguments_in_the_dataclass_order():
    positional = TokenReservation("r-1", "user1", 3, 10.0, 20.0, 80.0, 5)
    keyword = TokenReservation(
        shard_id=5, expires_at=80.0, execute_at=20.0, reserved_at=10.0, count=3, key="user1", id="r-1"
    )
    for made in (positional, keyword):
        assert (made.id, made.key, made.count, made.shard_id) == ("r-1", "user1", 3, 5)
        assert (made.reserved_at, made.execute_at, made.expires_at) == (10.0, 20.0, 80.0)
    assert TokenReservation(count=2**64 - 1).count == 2**64 - 1  # kept exactly
    # No order among the times is required, as before.
    assert TokenReservation(reserved_at=5, execute_at=1, expires_at=0).execute_at == 1.0


def test_the_old_unit_tests_construction():
    # tests/unit/test_sharded_rate_limiter.py::test_reservation_expiration of the previous version
    reservation = TokenReservation(key="user1", count=1, expires_at=time.time() - 1)
    assert reservation.is_expired()


def test_is_ready_and_is_expired_compare_time_time_with_the_fields():
    past = TokenReservation(execute_at=time.time() - 5, expires_at=time.time() - 1)
    assert past.is_ready() and past.is_expired() and past.wait_time() == 0.0
    future = TokenReservation(execute_at=time.time() + 30, expires_at=time.time() + 90)
    assert not future.is_ready() and not future.is_expired()
    assert 29 < future.wait_time() <= 30


def test_the_boundaries_are_the_dataclasses(frozen_time: Callable[[float], None]):
    at_now = TokenReservation(execute_at=NOW, expires_at=NOW)
    assert at_now.is_ready()  # time.time() >= execute_at
    assert not at_now.is_expired()  # time.time() > expires_at
    frozen_time(NOW + 0.001)
    assert at_now.is_expired()
    later = TokenReservation(execute_at=NOW + 10.0)
    assert later.wait_time() == pytest.approx(10.0 - 0.001)


def test_delay_execution_as_the_dataclass(frozen_time: Callable[[float], None]):
    future = TokenReservation(execute_at=NOW + 10.0)
    future.delay_execution(5)  # from the slot, which is still ahead
    assert future.execute_at == NOW + 15.0 and not future.is_ready()
    past = TokenReservation(execute_at=NOW - 100.0)
    past.delay_execution(2.5)  # from now, the slot having passed
    assert past.execute_at == NOW + 2.5
    frozen_time(NOW + 2.5)
    assert past.is_ready()
    past.delay_execution(0)
    assert past.execute_at == NOW + 2.5


def test_delay_execution_is_atomic_across_threads():
    made = TokenReservation(execute_at=time.time() + 3600.0)
    start = made.execute_at
    barrier = threading.Barrier(4)

    def delay() -> None:
        barrier.wait()
        for _ in range(250):
            made.delay_execution(1.0)

    threads = [threading.Thread(target=delay) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made.execute_at == start + 1000.0


@pytest.mark.parametrize(
    ("seconds", "exception"),
    [(-1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("1", TypeError), (None, TypeError)],
)
def test_delay_execution_refuses_bad_seconds(seconds: Any, exception: type[Exception]):
    made = TokenReservation(execute_at=1000.0)
    with pytest.raises(exception, match=r"^seconds: "):
        made.delay_execution(seconds)
    assert made.execute_at == 1000.0
    with pytest.raises(ValueError, match=r"^seconds: moves execute_at past any finite time"):
        made.delay_execution(1.7e308)
        made.delay_execution(1.7e308)


def test_a_reservation_made_by_hand_is_awaitable_and_immutable_but_for_delay():
    made = TokenReservation(id="r-1", key="k")

    async def main() -> TokenReservation:
        return await made

    assert asyncio.run(main()) is made
    with pytest.raises(AttributeError):
        made.execute_at = 0.0  # type: ignore[misc]
    assert "'k'" in repr(made) and '"r-1"' in repr(made) and "shard_id=None" in repr(made)


RESERVATION_CASES = [
    ({"id": 3}, TypeError, "id"),
    ({"id": b"r-1"}, TypeError, "id"),
    ({"key": None}, TypeError, "key"),
    ({"key": 1}, TypeError, "key"),
    ({"key": "k" * (_native.MAX_KEY_LEN + 1)}, ValueError, "key"),
    ({"count": 0}, ValueError, "count"),
    ({"count": -1}, ValueError, "count"),
    ({"count": 2**64}, ValueError, "count"),
    ({"count": 1.0}, TypeError, "count"),
    ({"count": True}, TypeError, "count"),
    ({"count": None}, TypeError, "count"),
    ({"reserved_at": "now"}, TypeError, "reserved_at"),
    ({"reserved_at": math.nan}, ValueError, "reserved_at"),
    ({"execute_at": math.inf}, ValueError, "execute_at"),
    ({"execute_at": True}, TypeError, "execute_at"),
    ({"expires_at": -math.inf}, ValueError, "expires_at"),
    ({"expires_at": BIG}, ValueError, "expires_at"),
    ({"shard_id": -1}, ValueError, "shard_id"),
    ({"shard_id": "0"}, TypeError, "shard_id"),
    ({"limiter": None}, TypeError, None),  # not a parameter
]


@pytest.mark.parametrize(("kwargs", "exception", "argument"), RESERVATION_CASES, ids=repr)
def test_bad_reservation_arguments_are_refused_by_name(
    kwargs: dict[str, Any], exception: type[Exception], argument: str | None
):
    with pytest.raises(exception) as info:
        TokenReservation(**kwargs)
    assert type(info.value) is exception
    if argument is not None:
        assert str(info.value).startswith(f"{argument}: "), str(info.value)


def test_reservation_error_messages_say_what_is_accepted():
    assert message(lambda: TokenReservation(count=0), ValueError) == "count: must be an int >= 1, got 0"
    assert (
        message(lambda: TokenReservation(count=1.5), TypeError)  # type: ignore[arg-type]
        == "count: must be an int >= 1, got float"
    )
    assert (
        message(lambda: TokenReservation(execute_at=math.nan), ValueError)
        == "execute_at: must be None or a finite number (epoch seconds), got nan"
    )


# --- a limiter and the objects made by hand ----------------------------------------------


def test_a_limiter_does_not_know_a_reservation_made_by_hand():
    limiter = ShardedRateLimiter(10, 1.0)
    made = TokenReservation(key="user1", execute_at=time.time() - 1)
    assert made.is_ready()
    result = limiter.execute_reservation(made.id)
    assert not result and result.reason == "unknown_reservation"
    assert not limiter.cancel_reservation(made.id)

    async def main() -> RateLimitResult:
        return await limiter.execute_reservation(made.id)

    assert asyncio.run(main()).reason == "unknown_reservation"
    engine = _native.Engine(10, 1.0)
    assert engine.execute_reservation(made.id).reason == "unknown_reservation"
    assert limiter.peek("user1") == 10  # it took nothing and gave nothing back


def test_a_limiters_reservation_cannot_be_delayed(clock: ManualClock):
    limiter = ShardedRateLimiter(1, 1.0, clock=clock)
    assert limiter.try_acquire()
    booked = limiter.reserve("k")
    execute_at = booked.execute_at
    with pytest.raises(RuntimeError, match=r"^delay_execution: .*cancel_reservation"):
        booked.delay_execution(5.0)
    assert booked.execute_at == execute_at
    clock.advance(1.0)
    assert booked.is_ready() and limiter.execute_reservation(booked.id)


def test_a_limiters_objects_are_unchanged(clock: ManualClock, frozen_time: Callable[[float], None]):
    limiter = ShardedRateLimiter(2, 1.0, clock=clock)
    admitted = limiter.try_acquire("k")
    assert isinstance(admitted.tokens_remaining, float) and admitted.tokens_remaining == 1.0
    assert isinstance(admitted.shard_id, int) and admitted.reason is None and admitted.waited == 0.0
    assert limiter.try_acquire("k")
    refused, again = limiter.try_acquire("k"), limiter.try_acquire("k")
    assert refused.reason == "rate_limited" and refused.tokens_remaining == 0.0
    assert refused == again and hash(refused) == hash(again)  # the same decision, same instant
    by_hand = RateLimitResult(False, refused.retry_after, 0.0, refused.shard_id, "rate_limited")
    assert by_hand == refused and refused == by_hand

    # A limiter's reservation reads the limiter's clock, not time.time().
    booked = limiter.reserve("k")
    assert isinstance(booked.shard_id, int) and not booked.is_ready()
    frozen_time(booked.execute_at + 3600)  # time.time() far past the slot: still not ready
    assert not booked.is_ready() and booked.wait_time() == pytest.approx(0.5)
    clock.advance(0.5)
    assert booked.is_ready() and booked.wait_time() == 0.0 and not booked.is_expired()
    assert limiter.execute_reservation(booked.id)


def test_the_classes_are_the_native_ones():
    assert RateLimitResult is _native.RateLimitResult
    assert TokenReservation is _native.TokenReservation
    assert isinstance(ShardedRateLimiter(1).try_acquire(), RateLimitResult)
