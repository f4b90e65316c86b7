"""Drivers for waiting loops: the one place that sleeps, and the one manual-clock rule.

A waiting loop is a generator that yields the seconds to wait before it asks again and
returns its answer. A driver runs it: on this thread (the extension's ``sleep``: GIL released,
woken on time by spinning the last 200 µs) or in an asyncio task (``asyncio.sleep``). On a :class:`ManualClock` nothing sleeps: the driver
advances the clock by the wait instead. Closing the generator (Ctrl-C, a cancelled task, an
abandoned awaitable) runs its clean-up, which gives back whatever it held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar, cast

from flashcard_pipeline._native import ManualClock, RateLimitResult, sleep

T = TypeVar("T")
Steps = Generator[float, None, T]

#: A waiter on the real clock asks again at least this often (seconds), so that capacity
#: given back by a cancel or an expiry reaches it soon.
RECHECK = 0.05


def wait(steps: Steps[RateLimitResult], clock: ManualClock | None) -> RateLimitResult:
    """Runs ``acquire``'s waiting loop's first step now; if it must wait, blocks this thread
    or, inside a running event loop, returns a :class:`_Waiting` that waits in the task.

    The type says ``RateLimitResult`` for both: a result is awaitable as itself, so
    ``await limiter.acquire()`` is a ``RateLimitResult`` either way, and a ``_Waiting`` read
    as a result without ``await`` raises ``TypeError`` (it is not one yet).
    """
    try:
        first = next(steps)
    except StopIteration as done:
        return cast(RateLimitResult, done.value)
    if _running_loop() is None:
        return _block(steps, first, clock)
    return cast(RateLimitResult, _Waiting(steps, first, clock))


def wait_blocking(steps: Steps[T], clock: ManualClock | None) -> T:
    """Runs a waiting loop to its end on this thread."""
    try:
        first = next(steps)
    except StopIteration as done:
        return cast(T, done.value)
    return _block(steps, first, clock)


async def wait_async(steps: Steps[T], clock: ManualClock | None) -> T:
    """Runs a waiting loop to its end in this task."""
    try:
        first = next(steps)
    except StopIteration as done:
        return cast(T, done.value)
    return await _sleep_through(steps, first, clock)


def _block(steps: Steps[T], wait: float, clock: ManualClock | None) -> T:
    try:
        while True:
            if clock is None:
                sleep(min(wait, RECHECK))  # GIL released, on time to the microsecond
            else:
                clock.advance(wait)
            wait = steps.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    finally:
        steps.close()


async def _sleep_through(steps: Steps[T], wait: float, clock: ManualClock | None) -> T:
    try:
        while True:
            if clock is None:
                await asyncio.sleep(min(wait, RECHECK))
            else:
                # Other tasks may have moved the shared clock meanwhile: ask again first.
                await asyncio.sleep(0)
                clock.advance(steps.send(None))
            wait = steps.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    finally:
        steps.close()


class _Waiting(Coroutine[Any, None, RateLimitResult]):
    """``acquire`` waiting inside an event loop: await it, or hand it to
    ``asyncio.create_task``.

    Its first step has run (an ``acquire`` holds its turn in the queue). Used as the result
    without ``await`` (its truth value, or an attribute of a result such as ``allowed``), it
    raises ``TypeError`` instead of being silently true, so ``if limiter.acquire():`` fails
    loudly rather than letting every request through; abandoned that way, or never awaited
    at all, it closes its loop, which gives the turn back.
    """

    __slots__ = ("_steps", "_wait", "_clock", "_running")

    _steps: Steps[RateLimitResult] | Coroutine[Any, None, RateLimitResult]

    def __init__(
        self, steps: Steps[RateLimitResult], wait: float, clock: ManualClock | None
    ) -> None:
        self._steps = steps
        self._wait = wait
        self._clock = clock
        self._running: Coroutine[Any, None, RateLimitResult] | None = None

    @classmethod
    def of(cls, running: Coroutine[Any, None, RateLimitResult]) -> RateLimitResult:
        """A coroutine that waits for a result, guarded the same way (closing it before it
        ran closes the coroutine, whose clean-up gives back what it held)."""
        waiting = cls.__new__(cls)
        waiting._steps = running  # closed when abandoned unstarted
        waiting._running = None
        waiting._wait = 0.0
        waiting._clock = None
        return cast(RateLimitResult, waiting)

    def _started(self) -> Coroutine[Any, None, RateLimitResult]:
        if self._running is None:
            if isinstance(self._steps, Generator):
                self._running = _sleep_through(self._steps, self._wait, self._clock)
            else:
                self._running = self._steps
        return self._running

    def __await__(self) -> Generator[Any, None, RateLimitResult]:
        return self._started().__await__()

    def send(self, value: None) -> Any:
        return self._started().send(value)

    def throw(self, *error: Any) -> Any:
        if self._running is None:
            # Thrown into before it ever ran (a task cancelled at once): the body's
            # clean-up will not run, so close the loop here.
            self._steps.close()
        return self._started().throw(*error)

    def close(self) -> None:
        if self._running is None:
            self._steps.close()
        else:
            self._running.close()

    def __bool__(self) -> bool:
        raise self._not_awaited("its truth value")

    def __getattr__(self, name: str) -> Any:
        # Only for what a result has: asyncio looks up coroutine attributes (cr_code, ...).
        if name in _RESULT_ATTRIBUTES:
            raise self._not_awaited(f".{name}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _not_awaited(self, used: str) -> TypeError:
        self.close()
        return TypeError(
            f"acquire() has to wait for tokens inside a running event loop, so it returned an "
            f"awaitable, not a result ({used} was read): use `await limiter.acquire(...)`"
        )

    def __del__(self) -> None:
        if self._running is None:
            self._steps.close()


_RESULT_ATTRIBUTES = frozenset(name for name in dir(RateLimitResult) if not name.startswith("_"))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
