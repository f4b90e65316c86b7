"""Usage tracking and quotas on SQLite: the old ``DatabaseRateLimiter`` and ``UsageAlert``.

``DatabaseRateLimiter`` is the shim's :class:`~flashcard_pipeline.rate_limiter.RateLimiter`
(the same limiting, on the Rust engine, per process) plus a usage record in an SQLite file
that every process and every restart shares: ``track_usage`` stores each request's tokens and
cost, a daily token quota and a monthly cost quota are checked against it, and alerts fire
when usage crosses a share of a quota. Decisions:

- **The old tables and columns**: ``api_usage_tracking``, ``api_quota_config`` and
  ``usage_alerts``, so a file the old module wrote opens as it is. The schema version is kept
  in ``PRAGMA user_version`` (2 since ``rate_limiter_state`` came back).
- **A restart resumes the rate limits** from ``rate_limiter_state``: one row (``id`` 1) with
  the minute bucket's ``tokens`` and the hourly window's ``hour_requests`` (admissions in the
  last hour) as of ``last_update`` (wall-clock epoch seconds) and ``updated_at`` (its UTC
  text). It is written with every ``track_usage`` record (same transaction) and by
  :meth:`DatabaseRateLimiter.close`; the latest writer's row is the file's. A new limiter on
  the file takes from its fresh budgets what the row says was used: the bucket holds the saved
  tokens plus the refill since ``last_update`` (a fraction of a token counts as used), and
  within an hour of ``last_update`` the window holds the saved admissions, counted from the
  restart (they leave the window up to an hour later than they would have: never more than
  the hourly limit, at worst a late admission). The old module's table held
  ``time.monotonic()`` values, meaningless in another process: a file from before version 2
  gets the table anew.
- **Wall-clock times**: every ``created_at`` is UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``, the
  old column's format) from ``time.time()``, or from ``clock.time()`` with a
  :class:`ManualClock`. Days and months are UTC days and months, as before.
- **Quotas live in the file**: the latest ``set_quota`` wins for every process; a quota given
  to the constructor is stored, one left out (``None``) keeps the stored one. A quota is
  exhausted when usage reaches it (``used >= quota``); only ``status="success"`` counts.
  ``track_usage`` stores the record first and then raises :class:`QuotaExceededError` if the
  quota is now exhausted; ``acquire`` and ``check_quota`` raise it before admitting.
  ``try_acquire``, ``acquire_async`` and ``wait_if_needed`` are the limiter's and do not look
  at quotas.
- **Alerts fire once per quota, threshold and period**: when ``track_usage`` brings usage of a
  quota to ``threshold_percent`` or more, an alert not yet logged in ``usage_alerts`` for that
  quota, threshold and message in the current day (daily quota) or month (monthly quota) is
  logged there, in the same transaction as the record, so one process fires it and a restart
  does not fire it again. Its callback, plain or ``async``, then runs outside the transaction.
- **Calls do their work when called.** The old coroutine ``track_usage`` returns a
  :class:`UsageCost`: a ``float`` that is also awaitable, so ``db.track_usage(...)`` and
  ``await db.track_usage(...)`` both record at once. Every other database method was plain
  and stays plain; ``acquire`` stays a coroutine. A database call blocks its thread for the
  transaction (and up to ``busy_timeout`` while another writer holds the file).
- **Several threads and processes**: one connection per object and process, used under a
  lock; WAL; every write in ``BEGIN IMMEDIATE``; a busy timeout (30 s). A locked, corrupt or
  unreadable file raises :class:`UsageDatabaseError` naming the path; a record is either
  committed or the call raises, never dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, NamedTuple

from flashcard_pipeline._arguments import number
from flashcard_pipeline.rate_limiter_v2 import ManualClock
from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline import rate_limiter as shim
from flashcard_pipeline.rate_limiter import RateLimiter

__all__ = [
    "DatabaseRateLimiter",
    "QuotaExceededError",
    "TOKEN_PRICING",
    "UsageAlert",
    "UsageCost",
    "UsageDatabaseError",
]

#: USD per million tokens, by model; models not listed are priced as ``"default"``.
TOKEN_PRICING: dict[str, dict[str, float]] = {
    "claude-3-5-sonnet": {"input": 3.00, "output": 15.00},
    "default": {"input": 3.00, "output": 15.00},
}

SCHEMA_VERSION = 2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS api_usage_tracking (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        model_name TEXT NOT NULL,
        endpoint TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0,
        estimated_cost_usd REAL NOT NULL DEFAULT 0.0,
        status TEXT NOT NULL DEFAULT 'success',
        error_message TEXT,
        retry_count INTEGER DEFAULT 0,
        created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        UNIQUE(request_id)
    )""",
    "CREATE INDEX IF NOT EXISTS idx_api_usage_created_at ON api_usage_tracking(created_at DESC)",
    "CREATE INDEX IF NOT EXISTS idx_api_usage_model_name ON api_usage_tracking(model_name)",
    """CREATE TABLE IF NOT EXISTS api_quota_config (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        quota_type TEXT NOT NULL,
        quota_value REAL NOT NULL,
        effective_date DATE NOT NULL DEFAULT CURRENT_DATE,
        created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        UNIQUE(quota_type, effective_date)
    )""",
    """CREATE TABLE IF NOT EXISTS rate_limiter_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        tokens REAL NOT NULL,
        hour_requests INTEGER NOT NULL,
        last_update REAL NOT NULL,
        updated_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS usage_alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        alert_type TEXT NOT NULL,
        threshold_percent REAL NOT NULL,
        current_usage REAL NOT NULL,
        quota_type TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
    )""",
)

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}

AlertCallback = Callable[[float, float, str], object]
"""``callback(usage_percent, current_usage, quota_type)``; may return an awaitable."""


# --- errors --------------------------------------------------------------------------------


class UsageDatabaseError(sqlite3.DatabaseError):
    """The usage database could not be used: locked beyond the busy timeout, corrupt, not a
    database, or unreadable. The message starts with the path; ``path`` holds it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"usage database {path}: {reason}")
        self.path = path


class QuotaExceededError(RateLimitError):
    """A usage quota is exhausted until its period ends.

    ``quota_type`` is ``"daily_tokens"`` or ``"monthly_budget"``; ``used`` and ``quota`` are in
    tokens or USD; ``reset_at`` is the epoch second the period ends (00:00 UTC of the next day
    or month) and ``retry_after`` the whole seconds until then.
    """

    def __init__(
        self,
        message: str,
        *,
        quota_type: str,
        used: float,
        quota: float,
        now: float,
        reset_at: float,
    ) -> None:
        super().__init__(message, retry_after=int(reset_at - now) + 1, reset_at=reset_at)
        self.quota_type = quota_type
        self.used = used
        self.quota = quota


# --- arguments -----------------------------------------------------------------------------


#: The largest whole number taken: two of them still add up within SQLite's 64-bit INTEGER.
_MAX_WHOLE = 2**62


def _whole(argument: str, value: object, *, at_least: int) -> int:
    """``value`` as an int, if it is a whole number from ``at_least`` to 2**62 (``1000.0``
    passes)."""
    real = number(argument, value, at_least=at_least, at_most=_MAX_WHOLE)
    if not real.is_integer():
        raise ValueError(
            f"{argument}: must be a whole number >= {at_least} and <= {_MAX_WHOLE}, got {value!r}"
        )
    return int(real)


def _text(argument: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{argument}: must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{argument}: must not be empty")
    return value


def _optional_text(argument: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{argument}: must be a str or None, got {type(value).__name__}")
    return value


def _choice(argument: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{argument}: must be one of {allowed}, got {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{argument}: must be one of {allowed}, got {value!r}")
    return value


# --- alerts and results --------------------------------------------------------------------


@dataclass
class UsageAlert:
    """An alert when usage of a quota reaches ``threshold_percent`` (50.0 is half of it).

    ``alert_type`` (``"info"``, ``"warning"`` or ``"critical"``) is the level it is logged at;
    ``callback(usage_percent, current_usage, quota_type)`` is called when it fires: a plain
    function, or a coroutine function (see :meth:`DatabaseRateLimiter.track_usage`).
    """

    threshold_percent: float
    message: str
    alert_type: str = "info"
    callback: AlertCallback | None = None

    def __post_init__(self) -> None:
        self.threshold_percent = number("threshold_percent", self.threshold_percent, above=0)
        _text("message", self.message)
        _choice("alert_type", self.alert_type, tuple(_LEVELS))
        if self.callback is not None and not callable(self.callback):
            kind = type(self.callback).__name__
            raise TypeError(f"callback: must be callable or None, got {kind}")


class UsageCost(float):
    """The cost in USD of one tracked attempt. A ``float``, and awaitable: ``await`` gives the
    same value once the coroutine alert callbacks the call started have finished."""

    __slots__ = ("_callbacks",)
    _callbacks: tuple[asyncio.Task[None], ...]

    def __new__(cls, cost: float, callbacks: tuple[asyncio.Task[None], ...] = ()) -> UsageCost:
        self = super().__new__(cls, cost)
        self._callbacks = callbacks
        return self

    def __await__(self) -> Generator[Any, None, float]:
        for task in self._callbacks:
            yield from task.__await__()
        return float(self)


class _Usage(NamedTuple):
    """Usage of one quota in its current period."""

    quota_type: str
    used: float
    quota: float
    end: datetime

    @property
    def percent(self) -> float:
        return self.used / self.quota * 100

    @property
    def exhausted(self) -> bool:
        return self.used >= self.quota


# --- time ----------------------------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    """The ``created_at`` text: UTC, sortable, the format SQLite's ``CURRENT_TIMESTAMP`` has."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _day(moment: datetime) -> tuple[datetime, datetime]:
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def _month(moment: datetime) -> tuple[datetime, datetime]:
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (start + timedelta(days=32)).replace(day=1)


def _week(moment: datetime) -> tuple[datetime, datetime]:
    """From 00:00 UTC seven days ago (the old ``DATE('now', '-7 days')``) to the day's end."""
    start, end = _day(moment)
    return start - timedelta(days=7), end


# Each quota: the column it sums and its period.
_QUOTAS: dict[str, tuple[str, Callable[[datetime], tuple[datetime, datetime]]]] = {
    "daily_tokens": ("total_tokens", _day),
    "monthly_budget": ("estimated_cost_usd", _month),
}
_PERIODS: dict[str, Callable[[datetime], tuple[datetime, datetime]] | None] = {
    "today": _day,
    "week": _week,
    "month": _month,
    "all": None,
}


# --- the database --------------------------------------------------------------------------

# Connections opened before os.fork(): SQLite forbids using (or closing) them in the child,
# so the child opens its own and keeps these referenced, untouched.
_INHERITED: list[sqlite3.Connection] = []


class _Database:
    """The usage file: one connection per process, used under a lock, one transaction per
    call; any SQLite error becomes a :class:`UsageDatabaseError` naming the path."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._connection: sqlite3.Connection | None = None
        try:
            with self.transaction(write=True) as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise UsageDatabaseError(
                        path,
                        f"schema version {version} is newer than this package's {SCHEMA_VERSION}",
                    )
                if version < 2:  # the old module's rate_limiter_state held monotonic times
                    db.execute("DROP TABLE IF EXISTS rate_limiter_state")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self.close()
            raise

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """A transaction: ``BEGIN IMMEDIATE`` (the write lock, waited for up to the busy
        timeout) or a read snapshot; committed on success, rolled back on any error."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock, self._errors():
            db = self._connect()
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            db = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,  # used by any thread, under the lock
            )
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode = WAL")
            except BaseException:
                db.close()
                raise
            self._connection = db
        return self._connection

    def _after_fork(self) -> None:
        # Only the forking thread lives on in the child: the lock may be held by a thread
        # that no longer exists, and the connection belongs to the parent.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        if self._connection is not None:
            _INHERITED.append(self._connection)
            self._connection = None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except UsageDatabaseError:
            raise
        except sqlite3.DatabaseError as error:
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                reason = (
                    f"{error}: another connection held it locked for longer than busy_timeout "
                    f"({self._busy_timeout} s)"
                )
            elif code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                reason = f"{error}: the file is corrupt or not an SQLite database"
            else:
                reason = str(error)
            raise UsageDatabaseError(self.path, reason) from error

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None


# --- the limiter ---------------------------------------------------------------------------


class DatabaseRateLimiter(RateLimiter):
    """The old :class:`RateLimiter` with usage tracking and quotas in an SQLite file.

    Args:
        db_path: The SQLite file (created if missing); every process using it shares usage,
            quotas and fired alerts. ``":memory:"`` keeps them in this object until :meth:`close`.
        requests_per_minute, requests_per_hour, burst_size: As for :class:`RateLimiter`.
        daily_token_quota: Tokens per UTC day, a whole number >= 1; stored in the file.
            ``None`` keeps the stored quota (or none).
        monthly_budget_usd: USD per UTC month, a finite number > 0; stored in the file.
            ``None`` keeps the stored quota (or none).
        model_name: The model ``track_usage`` records and prices by default.
        clock: A :class:`ManualClock` for tests: the limiter runs on it and usage is stamped
            with its ``time()``. Default: the real clocks.
        busy_timeout: Seconds to wait for another connection's write lock before
            :class:`UsageDatabaseError` (default 30).

    Raises:
        TypeError, ValueError: a bad argument; the message starts with its name.
        UsageDatabaseError: the file cannot be opened, is corrupt, or stays locked.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        requests_per_minute: float | None = None,
        requests_per_hour: float | None = None,
        burst_size: float | None = None,
        daily_token_quota: int | None = None,
        monthly_budget_usd: float | None = None,
        model_name: str = "claude-3-5-sonnet",
        *,
        clock: ManualClock | None = None,
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__(requests_per_minute, requests_per_hour, burst_size, clock=clock)
        if not isinstance(db_path, (str, os.PathLike)):
            raise TypeError(f"db_path: must be a str or a path, got {type(db_path).__name__}")
        self.db_path = _text("db_path", os.fspath(db_path))
        self.model_name = _text("model_name", model_name)
        timeout = number("busy_timeout", busy_timeout, at_least=0)
        quotas = {
            "daily_tokens": _quota("daily_token_quota", "daily_tokens", daily_token_quota),
            "monthly_budget": _quota("monthly_budget_usd", "monthly_budget", monthly_budget_usd),
        }
        self._wall_clock: Callable[[], float] = time.time if clock is None else clock.time
        self.alerts: list[UsageAlert] = [
            UsageAlert(50.0, "50% of quota used", "info"),
            UsageAlert(80.0, "80% of quota used", "warning"),
            UsageAlert(90.0, "90% of quota used - consider increasing limits", "critical"),
        ]
        self._db = _Database(self.db_path, timeout)
        for quota_type, value in quotas.items():
            if value is not None:
                self._store_quota(quota_type, value)
        self._resume()

    # --- usage -------------------------------------------------------------------------

    def track_usage(
        self,
        request_id: str,
        input_tokens: int,
        output_tokens: int,
        endpoint: str | None = None,
        status: str = "success",
        error_message: str | None = None,
        *,
        model_name: str | None = None,
        cost_usd: float | None = None,
    ) -> UsageCost:
        """Records one request's usage, committed before this returns; awaitable too.

        A ``request_id`` seen before is a retry: its tokens and cost are added to that
        record, whose ``status`` and ``error_message`` become this attempt's and whose
        ``retry_count`` grows by one.

        Args:
            request_id: The request's id (non-empty).
            input_tokens, output_tokens: Whole numbers >= 0.
            endpoint, error_message: Free text, or ``None``.
            status: ``"success"`` (counts against the quotas), ``"failed"``,
                ``"rate_limited"``, or any other non-empty text.
            model_name: The model used; default: the limiter's ``model_name``.
            cost_usd: The attempt's cost (a finite number >= 0); default: priced from
                ``TOKEN_PRICING``.

        Returns:
            The attempt's cost in USD (a :class:`UsageCost`). Alerts that fire are logged;
            a plain callback is called before this returns, a coroutine one runs to the end
            here when no event loop is running, and otherwise as a task of the running loop
            that awaiting the result waits for.

        Raises:
            QuotaExceededError: the record is stored, and a quota is now exhausted.
            UsageDatabaseError: the record could not be stored.
            TypeError, ValueError: a bad argument; nothing is stored.
        """
        request = _text("request_id", request_id)
        tokens_in = _whole("input_tokens", input_tokens, at_least=0)
        tokens_out = _whole("output_tokens", output_tokens, at_least=0)
        model = self.model_name if model_name is None else _text("model_name", model_name)
        if cost_usd is None:
            pricing = TOKEN_PRICING.get(model, TOKEN_PRICING["default"])
            cost = (tokens_in * pricing["input"] + tokens_out * pricing["output"]) / 1_000_000
        else:
            cost = number("cost_usd", cost_usd, at_least=0)
        row = (
            request,
            model,
            _optional_text("endpoint", endpoint),
            tokens_in,
            tokens_out,
            tokens_in + tokens_out,
            cost,
            _text("status", status),
            _optional_text("error_message", error_message),
        )
        now = self._now()
        with self._db.transaction(write=True) as db:
            db.execute(
                """INSERT INTO api_usage_tracking (request_id, model_name, endpoint, input_tokens,
                       output_tokens, total_tokens, estimated_cost_usd, status, error_message,
                       created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(request_id) DO UPDATE SET
                       input_tokens = input_tokens + excluded.input_tokens,
                       output_tokens = output_tokens + excluded.output_tokens,
                       total_tokens = total_tokens + excluded.total_tokens,
                       estimated_cost_usd = estimated_cost_usd + excluded.estimated_cost_usd,
                       status = excluded.status,
                       error_message = excluded.error_message,
                       retry_count = COALESCE(retry_count, 0) + 1""",
                (*row, _stamp(now)),
            )
            usages = self._usages(db, now)
            fired = self._log_due_alerts(db, usages, now)
            self._save_state(db, now)
        callbacks = tuple(
            task for task in (_notify(alert, usage) for alert, usage in fired) if task is not None
        )
        self._raise_if_exhausted(usages, now)
        return UsageCost(cost, callbacks)

    def check_quota(self) -> None:
        """Raises :class:`QuotaExceededError` if the daily token or the monthly cost quota
        is exhausted (daily first); returns ``None`` otherwise."""
        now = self._now()
        with self._db.transaction(write=False) as db:
            usages = self._usages(db, now)
        self._raise_if_exhausted(usages, now)

    async def acquire(self, tokens: int = 1) -> None:
        """Checks the quotas, then takes ``tokens`` as :meth:`RateLimiter.acquire` does.

        Raises:
            QuotaExceededError: a quota is exhausted (nothing is taken).
            RateLimitError: the rate limit refused.
        """
        self.check_quota()
        await super().acquire(tokens)

    def get_usage_stats(self, period: str = "today") -> dict[str, Any]:
        """Totals for ``period``: ``"today"``, ``"week"`` (since 00:00 UTC seven days ago),
        ``"month"`` or ``"all"``.

        Keys: ``total_requests``, ``successful_requests``, ``failed_requests``,
        ``rate_limited_requests``, ``total_input_tokens``, ``total_output_tokens``,
        ``total_tokens``, ``total_cost_usd``, ``avg_tokens_per_request``,
        ``max_tokens_request`` (0 when there is none); with a daily quota
        ``daily_tokens_used``, ``daily_tokens_quota``, ``daily_tokens_percent``; with a monthly
        one ``monthly_cost_usd``, ``monthly_budget_usd``, ``monthly_budget_percent``; and
        ``recent_alerts``: the last 10 alerts of the past week, newest first.
        """
        bounds = _PERIODS[_choice("period", period, tuple(_PERIODS))]
        now = self._now()
        where, window = _where(bounds, now)
        with self._db.transaction(write=False) as db:
            stats = dict(
                db.execute(
                    f"""SELECT COUNT(*) AS total_requests,
                        COALESCE(SUM(status = 'success'), 0) AS successful_requests,
                        COALESCE(SUM(status = 'failed'), 0) AS failed_requests,
                        COALESCE(SUM(status = 'rate_limited'), 0) AS rate_limited_requests,
                        COALESCE(SUM(input_tokens), 0) AS total_input_tokens,
                        COALESCE(SUM(output_tokens), 0) AS total_output_tokens,
                        COALESCE(SUM(total_tokens), 0) AS total_tokens,
                        COALESCE(SUM(estimated_cost_usd), 0.0) AS total_cost_usd,
                        COALESCE(AVG(total_tokens), 0.0) AS avg_tokens_per_request,
                        COALESCE(MAX(total_tokens), 0) AS max_tokens_request
                    FROM api_usage_tracking WHERE {where}""",
                    window,
                ).fetchone()
            )
            for usage in self._usages(db, now):
                if usage.quota_type == "daily_tokens":
                    stats["daily_tokens_used"] = int(usage.used)
                    stats["daily_tokens_quota"] = int(usage.quota)
                    stats["daily_tokens_percent"] = usage.percent
                else:
                    stats["monthly_cost_usd"] = usage.used
                    stats["monthly_budget_usd"] = usage.quota
                    stats["monthly_budget_percent"] = usage.percent
            stats["recent_alerts"] = [
                dict(row)
                for row in db.execute(
                    """SELECT alert_type, threshold_percent, message, quota_type, current_usage,
                           created_at
                       FROM usage_alerts WHERE created_at >= ? AND created_at < ?
                       ORDER BY created_at DESC, id DESC LIMIT 10""",
                    tuple(_stamp(moment) for moment in _week(now)),
                )
            ]
        return stats

    def get_usage_by_model(self, period: str = "all") -> dict[str, dict[str, Any]]:
        """Successful requests of ``period`` (as in :meth:`get_usage_stats`) by model, the
        costliest first: ``{model: {"model_name", "request_count", "total_tokens",
        "total_cost"}}``."""
        bounds = _PERIODS[_choice("period", period, tuple(_PERIODS))]
        where, window = _where(bounds, self._now())
        with self._db.transaction(write=False) as db:
            rows = db.execute(
                f"""SELECT model_name, COUNT(*) AS request_count,
                        SUM(total_tokens) AS total_tokens, SUM(estimated_cost_usd) AS total_cost
                    FROM api_usage_tracking WHERE status = 'success' AND {where}
                    GROUP BY model_name ORDER BY total_cost DESC, model_name""",
                window,
            ).fetchall()
        return {row["model_name"]: dict(row) for row in rows}

    # --- quotas and alerts -------------------------------------------------------------

    def set_quota(self, quota_type: str, value: float | None) -> None:
        """Sets the ``"daily_tokens"`` (a whole number >= 1) or ``"monthly_budget"`` (USD, a
        finite number > 0) quota for every user of the file; ``None`` removes it."""
        kind = _choice("quota_type", quota_type, tuple(_QUOTAS))
        self._store_quota(kind, _quota("value", kind, value))

    @property
    def daily_token_quota(self) -> int | None:
        """The daily token quota stored in the file; assigning it calls :meth:`set_quota`."""
        with self._db.transaction(write=False) as db:
            quota = _stored_quota(db, "daily_tokens")
        return None if quota is None else int(quota)

    @daily_token_quota.setter
    def daily_token_quota(self, value: int | None) -> None:
        self._store_quota("daily_tokens", _quota("daily_token_quota", "daily_tokens", value))

    @property
    def monthly_budget_usd(self) -> float | None:
        """The monthly budget stored in the file; assigning it calls :meth:`set_quota`."""
        with self._db.transaction(write=False) as db:
            return _stored_quota(db, "monthly_budget")

    @monthly_budget_usd.setter
    def monthly_budget_usd(self, value: float | None) -> None:
        self._store_quota("monthly_budget", _quota("monthly_budget_usd", "monthly_budget", value))

    def add_alert(
        self,
        threshold_percent: float,
        message: str,
        alert_type: str = "info",
        callback: AlertCallback | None = None,
    ) -> UsageAlert:
        """Adds an alert (see :class:`UsageAlert`) to this object's, kept sorted by threshold;
        returns it."""
        alert = UsageAlert(threshold_percent, message, alert_type, callback)
        self.alerts = sorted([*self.alerts, alert], key=lambda a: a.threshold_percent)
        return alert

    def close(self) -> None:
        """Saves the rate limits' state (see the module) and closes this process's
        connection; a later call opens it again."""
        now = self._now()
        with self._db.transaction(write=True) as db:
            self._save_state(db, now)
        self._db.close()

    def __enter__(self) -> DatabaseRateLimiter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), timezone.utc)

    def _save_state(self, db: sqlite3.Connection, now: datetime) -> None:
        db.execute(
            """INSERT OR REPLACE INTO rate_limiter_state
               (id, tokens, hour_requests, last_update, updated_at) VALUES (1, ?, ?, ?, ?)""",
            (
                self.minute_tokens,
                self.get_status()["hour_requests_made"],
                now.timestamp(),
                _stamp(now),
            ),
        )

    def _resume(self) -> None:
        """Takes from the fresh budgets what the saved state says was used (see the module)."""
        with self._db.transaction(write=False) as db:
            row = db.execute(
                "SELECT tokens, hour_requests, last_update FROM rate_limiter_state"
            ).fetchone()
        if row is None:
            return
        elapsed = max(self._wall_clock() - row["last_update"], 0.0)
        tokens = min(row["tokens"] + elapsed * self.minute_rate, self.burst_size)
        used = math.ceil(round(self.burst_size - tokens, 9))
        if used >= 1:
            self._minute.try_acquire(count=used)
        if elapsed < 3600 and row["hour_requests"] >= 1:
            self._hour.try_acquire(count=min(row["hour_requests"], int(self.requests_per_hour)))
        self.reset_stats()

    def _store_quota(self, quota_type: str, value: float | None) -> None:
        now = self._now()
        with self._db.transaction(write=True) as db:
            if value is None:
                db.execute("DELETE FROM api_quota_config WHERE quota_type = ?", (quota_type,))
                return
            # Filed under the first day of its period, as the old module did.
            start, _ = _QUOTAS[quota_type][1](now)
            db.execute(
                """INSERT OR REPLACE INTO api_quota_config
                   (quota_type, quota_value, effective_date, created_at) VALUES (?, ?, ?, ?)""",
                (quota_type, value, start.date().isoformat(), _stamp(now)),
            )

    def _usages(self, db: sqlite3.Connection, now: datetime) -> list[_Usage]:
        """Successful usage of each quota that is set, in the period containing ``now``."""
        usages = []
        for quota_type, (column, period) in _QUOTAS.items():
            quota = _stored_quota(db, quota_type)
            if quota is None:
                continue
            start, end = period(now)
            (used,) = db.execute(
                f"""SELECT COALESCE(SUM({column}), 0) FROM api_usage_tracking
                    WHERE status = 'success' AND created_at >= ? AND created_at < ?""",
                (_stamp(start), _stamp(end)),
            ).fetchone()
            usages.append(_Usage(quota_type, used, quota, end))
        return usages

    def _log_due_alerts(
        self, db: sqlite3.Connection, usages: list[_Usage], now: datetime
    ) -> list[tuple[UsageAlert, _Usage]]:
        """Logs in ``usage_alerts`` each alert reached and not yet logged in its quota's
        period; returns them."""
        fired = []
        for usage in usages:
            start, end = _QUOTAS[usage.quota_type][1](now)
            for alert in self.alerts:
                if usage.percent < alert.threshold_percent:
                    continue
                logged = db.execute(
                    """SELECT 1 FROM usage_alerts WHERE quota_type = ? AND threshold_percent = ?
                       AND message = ? AND created_at >= ? AND created_at < ?""",
                    (
                        usage.quota_type,
                        alert.threshold_percent,
                        alert.message,
                        _stamp(start),
                        _stamp(end),
                    ),
                ).fetchone()
                if logged is None:
                    db.execute(
                        """INSERT INTO usage_alerts (alert_type, threshold_percent, current_usage,
                           quota_type, message, created_at) VALUES (?, ?, ?, ?, ?, ?)""",
                        (
                            alert.alert_type,
                            alert.threshold_percent,
                            usage.used,
                            usage.quota_type,
                            alert.message,
                            _stamp(now),
                        ),
                    )
                    fired.append((alert, usage))
        return fired

    def _raise_if_exhausted(self, usages: list[_Usage], now: datetime) -> None:
        for usage in usages:
            if not usage.exhausted:
                continue
            if usage.quota_type == "daily_tokens":
                message = f"Daily token quota exceeded: {int(usage.used)}/{int(usage.quota)}"
            else:
                message = f"Monthly budget exceeded: ${usage.used:.2f}/${usage.quota:.2f}"
            raise QuotaExceededError(
                message,
                quota_type=usage.quota_type,
                used=usage.used,
                quota=usage.quota,
                now=now.timestamp(),
                reset_at=usage.end.timestamp(),
            )


def _quota(argument: str, quota_type: str, value: object) -> float | None:
    if value is None:
        return None
    if quota_type == "daily_tokens":
        return _whole(argument, value, at_least=1)
    return number(argument, value, above=0)


def _stored_quota(db: sqlite3.Connection, quota_type: str) -> float | None:
    """The latest setting of ``quota_type``, or ``None``."""
    row = db.execute(
        """SELECT quota_value FROM api_quota_config WHERE quota_type = ?
           ORDER BY effective_date DESC, id DESC LIMIT 1""",
        (quota_type,),
    ).fetchone()
    return None if row is None else float(row[0])


def _where(
    bounds: Callable[[datetime], tuple[datetime, datetime]] | None, now: datetime
) -> tuple[str, tuple[str, ...]]:
    if bounds is None:
        return "1", ()
    start, end = bounds(now)
    return "created_at >= ? AND created_at < ?", (_stamp(start), _stamp(end))


# --- firing alerts -------------------------------------------------------------------------

# Callback tasks still running, held so that the event loop does not drop them.
_TASKS: set[asyncio.Task[None]] = set()


def _notify(alert: UsageAlert, usage: _Usage) -> asyncio.Task[None] | None:
    """Logs ``alert`` and calls its callback; returns the task of a coroutine callback
    started on the running event loop. A failing callback is logged, never raised."""
    shim.logger.log(
        _LEVELS[alert.alert_type],
        "Usage alert: %s - %.1f%% of %s",
        alert.message,
        usage.percent,
        usage.quota_type,
    )
    if alert.callback is None:
        return None
    try:
        result = alert.callback(usage.percent, usage.used, usage.quota_type)
    except Exception:
        shim.logger.exception("Usage alert callback failed: %s", alert.message)
        return None
    if not inspect.isawaitable(result):
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_guarded(result, alert.message))
        return None
    task = loop.create_task(_guarded(result, alert.message))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task


async def _guarded(callback: Awaitable[object], message: str) -> None:
    try:
        await callback
    except Exception:
        shim.logger.exception("Usage alert callback failed: %s", message)
