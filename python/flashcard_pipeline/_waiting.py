"""Drivers for waiting loops: the one place that sleeps or waits on a store, and the one
manual-clock rule.

A waiting loop is a generator that yields what it waits on and returns its answer: seconds
to wait before it asks again, or an :class:`Ask`, a question for a store (a round trip),
whose answer is sent back in. A driver runs it: on this thread (the extension's ``sleep``
and the store's blocking call, both with the GIL released; a sleep is woken on time by
spinning the last 200 µs) or in an asyncio task (``asyncio.sleep``, and the store's answer
awaited, so the loop never blocks on a round trip). On a :class:`ManualClock` nothing
sleeps: the driver advances the clock by the wait instead. Closing the generator (Ctrl-C, a
cancelled task, an abandoned awaitable) runs its clean-up, which gives back whatever it held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, TypeVar, Union, cast

from flashcard_pipeline._native import ManualClock, RateLimitResult, sleep

T = TypeVar("T")


@dataclass(frozen=True)
class Ask:
    """A question for a store: ``blocking(*args)`` on a thread, ``awaiting(*args)`` in a
    task. The loop is sent the answer, or the exception the question raised."""

    blocking: Callable[..., object]
    awaiting: Callable[..., Awaitable[object]]
    args: tuple[Any, ...]


Step = Union[float, Ask]
Steps = Generator[Step, Any, T]

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


def _block(steps: Steps[T], step: Step, clock: ManualClock | None) -> T:
    try:
        while True:
            if isinstance(step, Ask):
                step = steps.send(_answer(step))
                continue
            if clock is None:
                sleep(min(step, RECHECK))  # GIL released, on time to the microsecond
            else:
                clock.advance(step)
            step = steps.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    finally:
        steps.close()


def _answer(ask: Ask) -> object:
    try:
        return ask.blocking(*ask.args)
    except Exception as error:  # the loop decides what a failed question means
        return error


async def _sleep_through(steps: Steps[T], step: Step, clock: ManualClock | None) -> T:
    try:
        while True:
            if isinstance(step, Ask):
                step = steps.send(await _asked(steps, step))
                continue
            if clock is None:
                await asyncio.sleep(min(step, RECHECK))
            else:
                # Other tasks may have moved the shared clock meanwhile: ask again first.
                await asyncio.sleep(0)
                step = steps.send(None)
                if isinstance(step, Ask):
                    continue
                clock.advance(step)
            step = steps.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    finally:
        steps.close()


async def _asked(steps: Steps[T], ask: Ask) -> object:
    """The store's answer to ``ask``. A task cancelled after the answer came but before it
    ran still hands the answer to its loop before the loop is closed, so that what it got
    (a turn) is given back rather than dropped."""
    asked = ask.awaiting(*ask.args)
    try:
        return await asked
    except asyncio.CancelledError:
        if isinstance(asked, asyncio.Future) and asked.done() and not asked.cancelled():
            try:
                steps.send(asked.result())
            except Exception:  # it finished (StopIteration) or failed: nothing is held
                pass
        raise


class _Waiting(Coroutine[Any, None, RateLimitResult]):
    """``acquire`` waiting inside an event loop: await it, or hand it to
    ``asyncio.create_task``.

    Its first step has run (an in-memory ``acquire`` holds its turn in the queue; a
    question for a store is asked once it is awaited, not on the event loop's thread now). Used as the result
    without ``await`` (its truth value, or an attribute of a result such as ``allowed``), it
    raises ``TypeError`` instead of being silently true, so ``if limiter.acquire():`` fails
    loudly rather than letting every request through; abandoned that way, or never awaited
    at all, it closes its loop, which gives the turn back.
    """

    __slots__ = ("_steps", "_step", "_clock", "_running")

    def __init__(
        self, steps: Steps[RateLimitResult], step: Step, clock: ManualClock | None
    ) -> None:
        self._steps = steps
        self._step = step
        self._clock = clock
        self._running: Coroutine[Any, None, RateLimitResult] | None = None

    def _started(self) -> Coroutine[Any, None, RateLimitResult]:
        if self._running is None:
            self._running = _sleep_through(self._steps, self._step, self._clock)
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
