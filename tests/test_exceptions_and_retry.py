"""The old package's exceptions and ``utils.retry`` work as they did: the exception family
(``RateLimitError`` inside it, its own signature kept), ``RetryConfig`` (now checked) and the
``retry_async`` / ``retry_sync`` / ``retry_with_config`` helpers. Nothing sleeps for real."""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import time
from typing import Any

import pytest

from flashcard_pipeline.exceptions import (
    ApiError,
    AuthenticationError,
    CircuitBreakerOpen,
    NetworkError,
    PipelineError,
    RateLimitError,
    RetryExhausted,
    ValidationError,
)
from flashcard_pipeline.usage import QuotaExceededError
from flashcard_pipeline.utils.retry import RetryConfig, retry_async, retry_sync, retry_with_config

# --- exceptions ------------------------------------------------------------------------------


def test_rate_limit_error_is_an_api_error_with_status_429():
    error = RateLimitError(retry_after=2.5, reset_at=1000.0)
    assert isinstance(error, ApiError) and isinstance(error, PipelineError)
    assert isinstance(error, Exception)
    assert error.status_code == 429 and error.response_body is None
    assert error.details == {
        "status_code": 429,
        "response_body": None,
        "retry_after": 2.5,
        "reset_at": 1000.0,
    }
    assert str(error) == error.message == "Rate limit exceeded; retry after 2.500s"
    assert RateLimitError().message == "Rate limit exceeded"


def test_rate_limit_error_caught_as_its_bases():
    for base in (ApiError, PipelineError):
        with pytest.raises(base):
            raise RateLimitError()


def test_old_style_construction():
    limited = RateLimitError("slow down", retry_after=5)
    assert (str(limited), limited.retry_after, limited.reset_at) == ("slow down", 5, None)
    assert limited.details["retry_after"] == 5

    api = ApiError("x", status_code=500, response_body="b")
    assert (api.message, api.status_code, api.response_body) == ("x", 500, "b")
    assert api.details == {"status_code": 500, "response_body": "b"}

    cause = OSError("y")
    network = NetworkError("x", original_error=cause)
    assert network.original_error is cause and network.details == {"original_error": "y"}
    assert NetworkError("x").details == {}

    base = PipelineError("p", details={"k": 1})
    assert (str(base), base.details) == ("p", {"k": 1})
    assert PipelineError("p").details == {}

    auth = AuthenticationError()
    assert (str(auth), auth.status_code, isinstance(auth, ApiError)) == ("Invalid API key", 401, True)
    assert ValidationError("bad", field="term", value=3).details == {"field": "term", "value": 3}


def test_retry_exhausted_keeps_the_last_exception():
    last = ValueError("boom")
    exhausted = RetryExhausted("gave up", last_exception=last)
    assert isinstance(exhausted, PipelineError)
    assert exhausted.last_exception is last and exhausted.details == {"last_exception": "boom"}
    assert RetryExhausted("gave up").details == {}


@pytest.mark.parametrize(
    "error",
    [
        RateLimitError(retry_after=1.5, reset_at=10.0),
        RateLimitError("custom", retry_after=3),
        ApiError("x", status_code=500, response_body="b"),
        NetworkError("x", original_error=OSError("y")),
        RetryExhausted("gave up", last_exception=ValueError("boom")),
        CircuitBreakerOpen("open", service="api", failure_count=5, threshold=3),
        QuotaExceededError(
            "Daily token quota exceeded: 10/10",
            quota_type="daily_tokens", used=10, quota=10, now=0.0, reset_at=86400.0,
        ),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_pickle_and_print(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error) and copy.args == error.args
    assert copy.details == error.details
    public = {name: value for name, value in vars(error).items() if name != "details"}
    assert {name: repr(value) for name, value in vars(copy).items() if name != "details"} == {
        name: repr(value) for name, value in public.items()
    }
    assert repr(error).startswith(f"{type(error).__name__}(")


def test_quota_exceeded_error_is_still_a_rate_limit_error():
    error = QuotaExceededError(
        "Monthly budget exceeded: $5.00/$5.00",
        quota_type="monthly_budget", used=5.0, quota=5.0, now=100.0, reset_at=200.0,
    )
    assert isinstance(error, RateLimitError) and isinstance(error, ApiError)
    assert (error.retry_after, error.reset_at, error.status_code) == (101, 200.0, 429)
    assert error.details["retry_after"] == 101 and error.quota_type == "monthly_budget"


# --- RetryConfig -----------------------------------------------------------------------------


def test_retry_config_defaults():
    config = RetryConfig()
    assert (
        config.max_attempts,
        config.initial_delay,
        config.max_delay,
        config.exponential_base,
        config.jitter,
        config.retry_on,
    ) == (3, 1.0, 60.0, 2.0, True, (Exception,))


def test_calculate_delay_without_jitter_is_exact_and_capped():
    config = RetryConfig(initial_delay=0.5, exponential_base=3.0, max_delay=10.0, jitter=False)
    assert [config.calculate_delay(n) for n in range(5)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert config.calculate_delay(10_000) == 10.0  # no OverflowError
    assert RetryConfig(initial_delay=0.0, jitter=False).calculate_delay(10_000) == 0.0


def test_calculate_delay_with_jitter_is_half_to_all_of_the_exact_value():
    config = RetryConfig(initial_delay=1.0, max_delay=60.0)
    for attempt in range(8):
        exact = min(2.0**attempt, 60.0)
        for _ in range(50):
            assert 0.5 * exact <= config.calculate_delay(attempt) < exact


def test_retry_config_takes_a_single_class_and_whole_numbers():
    config = RetryConfig(retry_on=KeyError, initial_delay=2, max_delay=5)
    assert config.retry_on == (KeyError,)
    assert (config.initial_delay, config.max_delay) == (2.0, 5.0)


@pytest.mark.parametrize(
    ("field", "value", "exception"),
    [
        ("max_attempts", 0, ValueError),
        ("max_attempts", -1, ValueError),
        ("max_attempts", 2.0, TypeError),
        ("max_attempts", True, TypeError),
        ("max_attempts", None, TypeError),
        ("initial_delay", -0.1, ValueError),
        ("initial_delay", math.nan, ValueError),
        ("initial_delay", "1", TypeError),
        ("max_delay", math.inf, ValueError),
        ("max_delay", 1e300, ValueError),
        ("max_delay", -1, ValueError),
        ("exponential_base", 0.5, ValueError),
        ("exponential_base", None, TypeError),
        ("jitter", 1, TypeError),
        ("jitter", "yes", TypeError),
        ("retry_on", "ValueError", TypeError),
        ("retry_on", (ValueError, 3), TypeError),
        ("retry_on", KeyboardInterrupt, TypeError),
    ],
    ids=repr,
)
def test_bad_retry_config_is_refused_by_name(field, value, exception):
    with pytest.raises(BaseException) as info:
        RetryConfig(**{field: value})
    assert type(info.value) is exception
    assert str(info.value).startswith(f"{field}: "), str(info.value)


def test_bad_attempt_and_config_are_refused_by_name():
    with pytest.raises(ValueError, match=r"^max_attempts: must be an int >= 1, got 0$"):
        RetryConfig(max_attempts=0)
    with pytest.raises(ValueError, match=r"^attempt: "):
        RetryConfig().calculate_delay(-1)
    with pytest.raises(TypeError, match=r"^config: must be a RetryConfig or None, got dict$"):
        retry_sync({"max_attempts": 3})  # type: ignore[arg-type]


# --- retry_async, retry_sync, retry_with_config ----------------------------------------------

FAST = RetryConfig(max_attempts=3, initial_delay=0.001, jitter=False)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The waits asked for, without waiting."""
    recorded: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(time, "sleep", recorded.append)
    monkeypatch.setattr(asyncio, "sleep", fake_async_sleep)
    return recorded


class Flaky:
    """Fails with ``errors`` in turn, then returns ``"ok"``; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return f"ok {args} {kwargs}"


@pytest.mark.asyncio
async def test_retry_async_retries_then_succeeds(sleeps, caplog):
    flaky = Flaky(ConnectionError("down"), ConnectionError("down"))

    @retry_async(FAST)
    async def fetch(x: int, *, y: int) -> str:
        return flaky(x, y=y)

    with caplog.at_level(logging.WARNING, logger="flashcard_pipeline.utils.retry"):
        assert await fetch(1, y=2) == "ok (1,) {'y': 2}"
    assert flaky.calls == 3 and sleeps == [0.001, 0.002]
    assert fetch.__name__ == "fetch" and asyncio.iscoroutinefunction(fetch)
    assert [record.getMessage() for record in caplog.records] == [
        "Retry 1/3 for fetch after ConnectionError: down. Waiting 0.00s before next attempt.",
        "Retry 2/3 for fetch after ConnectionError: down. Waiting 0.00s before next attempt.",
    ]


@pytest.mark.asyncio
async def test_retry_async_exhausts(sleeps, caplog):
    last = ValueError("third")
    flaky = Flaky(ValueError("first"), ValueError("second"), last)

    @retry_async(FAST)
    async def fetch() -> str:
        return flaky()

    with caplog.at_level(logging.WARNING, logger="flashcard_pipeline.utils.retry"):
        with pytest.raises(RetryExhausted) as info:
            await fetch()
    assert str(info.value) == "Retry exhausted after 3 attempts"
    assert info.value.last_exception is last and info.value.__cause__ is last
    assert flaky.calls == 3 and sleeps == [0.001, 0.002]
    assert [record.levelname for record in caplog.records] == ["WARNING", "WARNING", "ERROR"]
    assert caplog.records[-1].getMessage() == "All 3 retry attempts exhausted for fetch"


@pytest.mark.asyncio
async def test_retry_async_lets_other_errors_through_at_once(sleeps):
    refused = KeyError("not retried")
    flaky = Flaky(refused)

    @retry_async(RetryConfig(retry_on=(ConnectionError,), initial_delay=0.001, jitter=False))
    async def fetch() -> str:
        return flaky()

    with pytest.raises(KeyError) as info:
        await fetch()
    assert info.value is refused and flaky.calls == 1 and sleeps == []


@pytest.mark.asyncio
async def test_retry_async_with_the_defaults_and_real_tiny_sleeps():
    flaky = Flaky(OSError("once"))

    @retry_async(RetryConfig(initial_delay=0.001))
    async def fetch() -> str:
        return flaky()

    assert await fetch() == "ok () {}" and flaky.calls == 2

    @retry_async()
    async def fine() -> int:
        return 7

    assert await fine() == 7


def test_retry_async_refuses_a_plain_function():
    def plain() -> None: ...

    with pytest.raises(TypeError, match=r"^retry_async: plain is not a coroutine function"):
        retry_async()(plain)


def test_retry_sync_refuses_a_coroutine_function():
    async def coroutine() -> None: ...

    with pytest.raises(TypeError, match=r"^retry_sync: coroutine is a coroutine function"):
        retry_sync()(coroutine)


def test_retry_sync_retries_exhausts_and_lets_other_errors_through(sleeps):
    flaky = Flaky(TimeoutError("slow"))
    assert retry_sync(FAST)(flaky)(1) == "ok (1,) {}"
    assert flaky.calls == 2 and sleeps == [0.001]

    last = TimeoutError("3")
    failing = Flaky(TimeoutError("1"), TimeoutError("2"), last)
    with pytest.raises(RetryExhausted) as info:
        retry_sync(FAST)(failing)()
    assert info.value.last_exception is last and failing.calls == 3
    assert sleeps == [0.001, 0.001, 0.002]

    refused = Flaky(KeyError("no"))
    with pytest.raises(KeyError):
        retry_sync(RetryConfig(retry_on=TimeoutError, jitter=False))(refused)()
    assert refused.calls == 1 and len(sleeps) == 3


def test_one_attempt_never_sleeps(sleeps):
    failing = Flaky(ValueError("once"))
    with pytest.raises(RetryExhausted, match="^Retry exhausted after 1 attempts$"):
        retry_sync(RetryConfig(max_attempts=1))(failing)()
    assert failing.calls == 1 and sleeps == []


def test_a_config_changed_after_decorating_changes_nothing(sleeps):
    config = RetryConfig(max_attempts=2, initial_delay=0.001, jitter=False)
    failing = Flaky(*[ValueError(str(n)) for n in range(5)])
    retried = retry_sync(config)(failing)
    config.max_attempts = 5
    with pytest.raises(RetryExhausted, match="after 2 attempts"):
        retried()
    assert failing.calls == 2


@pytest.mark.asyncio
async def test_retry_with_config_awaits_the_call(sleeps):
    flaky = Flaky(ConnectionError("down"))

    async def fetch(x: int, *, y: int) -> str:
        return flaky(x, y=y)

    assert await retry_with_config(fetch, 1, config=FAST, y=2) == "ok (1,) {'y': 2}"
    assert flaky.calls == 2 and sleeps == [0.001]

    last = ConnectionError("still down")
    failing = Flaky(ConnectionError("down"), ConnectionError("down"), last)

    async def fetch_failing() -> str:
        return failing()

    with pytest.raises(RetryExhausted) as info:
        await retry_with_config(fetch_failing, config=FAST)
    assert info.value.last_exception is last and failing.calls == 3


@pytest.mark.asyncio
async def test_retry_with_config_takes_the_defaults():
    async def fine() -> str:
        return "fine"

    assert await retry_with_config(fine) == "fine"
