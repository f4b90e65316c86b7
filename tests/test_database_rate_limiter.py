"""DatabaseRateLimiter and UsageAlert: usage, quotas and alerts in a real SQLite file.

Time is a ManualClock started at a known UTC moment, so day and month boundaries are crossed
by advancing it. Restarts and several writers are real: new objects, new processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import flashcard_pipeline
from flashcard_pipeline import rate_limiter
from flashcard_pipeline.exceptions import RateLimitError
from flashcard_pipeline.rate_limiter import DatabaseRateLimiter, RateLimiter, UsageAlert
from flashcard_pipeline.rate_limiter_v2 import ManualClock
from flashcard_pipeline.usage import QuotaExceededError, UsageCost, UsageDatabaseError

pytestmark = pytest.mark.usefixtures("clean_rate_env")


def utc(year: int, month: int, day: int, hour: int = 0) -> float:
    return datetime(year, month, day, hour, tzinfo=timezone.utc).timestamp()


START = utc(2024, 3, 6, 12)  # a Wednesday, noon UTC
ALERTS = "flashcard_pipeline.rate_limiter"  # the old module's logger


@pytest.fixture
def wall() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "usage.db"


@pytest.fixture
def open_db(path: Path, wall: ManualClock) -> Iterator[Callable[..., DatabaseRateLimiter]]:
    """``open_db(**options)``: a limiter on the test's file and clock, closed at the end."""
    opened: list[DatabaseRateLimiter] = []

    def open_(**options: Any) -> DatabaseRateLimiter:
        options.setdefault("clock", wall)
        db = DatabaseRateLimiter(path, **options)
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.close()


def connect(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A plain connection to the test's file, closed at the end of the block (a connection's own
    ``with`` only commits: left open, CPython 3.13 reports it as a ResourceWarning)."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def rows(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with connect(path) as connection:
        return connection.execute(sql, params).fetchall()


def record_count(path: Path) -> int:
    return int(rows(path, "SELECT COUNT(*) FROM api_usage_tracking")[0][0])


def alert_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ALERTS]


def python(code: str, *args: str, wait: bool = True) -> subprocess.Popen[str]:
    """Runs ``code`` in a new interpreter that imports this package."""
    package = str(Path(flashcard_pipeline.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": package}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if wait:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    return process


# --- the old names, the old limiter, the old tables ----------------------------------------


def test_the_old_names_are_exported_by_the_shim():
    assert {"DatabaseRateLimiter", "UsageAlert"} <= set(rate_limiter.__all__)
    assert issubclass(DatabaseRateLimiter, RateLimiter)


@pytest.mark.asyncio
async def test_it_limits_as_the_old_rate_limiter_did(open_db):
    db = open_db(requests_per_minute=60, requests_per_hour=3000, burst_size=3)
    assert [db.try_acquire() for _ in range(4)] == [True, True, True, False]
    with pytest.raises(RateLimitError) as refused:
        await db.acquire()
    assert not isinstance(refused.value, QuotaExceededError)


def test_the_file_has_the_old_tables_a_schema_version_and_wal(open_db, path):
    open_db()
    tables = {name for (name,) in rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"api_usage_tracking", "api_quota_config", "usage_alerts", "rate_limiter_state"} <= tables
    assert rows(path, "PRAGMA user_version") == [(2,)]
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]


def test_a_file_written_by_the_old_module_is_read(path):
    # The old module's own statements: its DDL, and rows stamped by CURRENT_TIMESTAMP.
    with connect(path) as old:
        old.execute(
            """CREATE TABLE api_usage_tracking (id INTEGER PRIMARY KEY AUTOINCREMENT,
               request_id TEXT NOT NULL, model_name TEXT NOT NULL, endpoint TEXT,
               input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
               total_tokens INTEGER NOT NULL DEFAULT 0,
               estimated_cost_usd REAL NOT NULL DEFAULT 0.0,
               status TEXT NOT NULL DEFAULT 'success', error_message TEXT,
               retry_count INTEGER DEFAULT 0,
               created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, UNIQUE(request_id))"""
        )
        old.execute(
            """CREATE TABLE api_quota_config (id INTEGER PRIMARY KEY AUTOINCREMENT,
               quota_type TEXT NOT NULL, quota_value REAL NOT NULL,
               effective_date DATE NOT NULL DEFAULT CURRENT_DATE,
               created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
               UNIQUE(quota_type, effective_date))"""
        )
        old.execute(
            """INSERT INTO api_usage_tracking (request_id, model_name, input_tokens,
               output_tokens, total_tokens, estimated_cost_usd)
               VALUES ('old-1', 'gpt-4', 10, 5, 15, 0.5)"""
        )
        old.execute(
            "INSERT INTO api_quota_config (quota_type, quota_value) VALUES ('daily_tokens', 100)"
        )
    with DatabaseRateLimiter(path) as db:  # the real clock: the rows were stamped just now
        stats = db.get_usage_stats("today")
        assert (stats["total_requests"], stats["total_tokens"], stats["daily_tokens_used"]) == (
            1,
            15,
            15,
        )
        assert db.daily_token_quota == 100
        with pytest.raises(QuotaExceededError, match="100/100"):
            db.track_usage("new-1", 85, 0)


# --- the rate limits across restarts -------------------------------------------------------


def test_a_restarted_process_resumes_its_minute_and_hour_budgets(path):
    # 60 per minute (one token a second), a burst of 10, 12 per hour; wall-clock times.
    limits = {"requests_per_minute": 60, "requests_per_hour": 12, "burst_size": 10}
    with DatabaseRateLimiter(path, **limits, clock=ManualClock(START)) as db:
        assert sum(db.try_acquire() for _ in range(10)) == 10  # the burst, used up
    assert rows(path, "SELECT tokens, hour_requests, last_update FROM rate_limiter_state") == [
        (0.0, 10, START)
    ]
    # Restarted 5 s later: 5 tokens refilled since, 2 requests left in the hour.
    with DatabaseRateLimiter(path, **limits, clock=ManualClock(START + 5)) as db:
        assert db.tokens == 5 and db.get_status()["hour_requests_made"] == 10
        assert [db.try_acquire() for _ in range(3)] == [True, True, False]
        assert db.get_stats()["requests_allowed"] == 2  # what was resumed is not counted
    # An hour after that, the hour is free again and the bucket full.
    with DatabaseRateLimiter(path, **limits, clock=ManualClock(START + 5 + 3600)) as db:
        assert db.get_status()["hour_requests_made"] == 0
        assert sum(db.try_acquire() for _ in range(11)) == 10


def test_the_state_is_saved_with_every_usage_record(path, wall):
    # A process that never closes (it crashed) leaves the state of its last record.
    crashed = DatabaseRateLimiter(path, burst_size=3, clock=wall)
    assert all(crashed.try_acquire() for _ in range(3))
    crashed.track_usage("r1", 10, 5)
    with DatabaseRateLimiter(path, burst_size=3, clock=ManualClock(START)) as db:
        assert not db.try_acquire()  # no fresh burst
    crashed.close()


def test_the_old_modules_state_table_is_replaced(path):
    with connect(path) as old:  # monotonic times, meaningless in a new process
        old.execute("CREATE TABLE rate_limiter_state (id INTEGER PRIMARY KEY, tokens REAL)")
        old.execute("INSERT INTO rate_limiter_state VALUES (1, 3.0)")
    with DatabaseRateLimiter(path, burst_size=5, clock=ManualClock(START)) as db:
        assert db.tokens == 5
    assert rows(path, "SELECT tokens, hour_requests FROM rate_limiter_state") == [(5.0, 0)]


# --- tracking ------------------------------------------------------------------------------


def test_track_usage_stores_the_wall_clock_time_and_the_cost(open_db, path, wall):
    db = open_db()
    cost = db.track_usage("r-1", input_tokens=1000, output_tokens=500, endpoint="/v1/messages")
    assert math.isclose(cost, 1000 * 3e-6 + 500 * 15e-6)  # the old price table
    wall.advance(90.5)
    db.track_usage("r-2", 1, 2, model_name="gpt-4", cost_usd=0.25, status="failed")
    assert rows(
        path,
        """SELECT request_id, model_name, endpoint, total_tokens, estimated_cost_usd, status,
           created_at FROM api_usage_tracking ORDER BY id""",
    ) == [
        (
            "r-1",
            "claude-3-5-sonnet",
            "/v1/messages",
            1500,
            cost,
            "success",
            "2024-03-06 12:00:00.000000",
        ),
        ("r-2", "gpt-4", None, 3, 0.25, "failed", "2024-03-06 12:01:30.500000"),
    ]


@pytest.mark.asyncio
async def test_track_usage_records_at_the_call_awaited_or_not(open_db, path):
    db = open_db()
    plain = db.track_usage("plain", 10, 0)  # in a coroutine, not awaited: recorded all the same
    assert record_count(path) == 1
    awaited = await db.track_usage("awaited", 20, 0)
    assert isinstance(plain, UsageCost) and type(awaited) is float
    assert (plain, awaited) == (10 * 3e-6, 20 * 3e-6)
    assert await plain == plain  # the plain call's result can still be awaited
    assert record_count(path) == 2


def test_a_retry_with_the_same_request_id_adds_to_its_record(open_db, path):
    db = open_db()
    db.track_usage("r-1", 100, 0, status="failed", error_message="timeout")
    db.track_usage("r-1", 100, 50, status="success")
    assert rows(
        path,
        "SELECT total_tokens, status, error_message, retry_count FROM api_usage_tracking",
    ) == [(250, "success", None, 1)]
    assert db.get_usage_stats()["total_requests"] == 1


# --- quotas --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_daily_token_quota_is_exhausted_at_exactly_the_quota(open_db, path, wall):
    db = open_db(daily_token_quota=1000)
    db.track_usage("r-1", 600, 0)
    db.track_usage("r-2", 0, 399)
    db.track_usage("r-3", 5000, 0, status="failed")  # only successful requests count
    db.check_quota()
    await db.acquire()

    with pytest.raises(QuotaExceededError) as exhausted:
        db.track_usage("r-4", 1, 0)  # 1000 of 1000
    error = exhausted.value
    assert isinstance(error, RateLimitError)
    assert str(error) == "Daily token quota exceeded: 1000/1000"
    assert (error.quota_type, error.used, error.quota) == ("daily_tokens", 1000, 1000)
    assert error.reset_at == utc(2024, 3, 7)  # midnight UTC
    assert error.retry_after == 12 * 3600 + 1  # whole seconds, as the shim's
    assert record_count(path) == 4  # the record that exhausted the quota is kept

    tokens = db.tokens
    with pytest.raises(QuotaExceededError):
        await db.acquire()
    assert db.tokens == tokens  # refused before the limiter took anything
    with pytest.raises(QuotaExceededError):
        db.check_quota()

    wall.advance(12 * 3600)  # the next UTC day
    db.check_quota()
    assert db.get_usage_stats()["daily_tokens_used"] == 0


def test_the_monthly_budget_is_exhausted_at_exactly_the_budget(open_db, wall):
    wall.advance(utc(2024, 3, 31, 23) - START)
    db = open_db(monthly_budget_usd=1.0)
    db.track_usage("r-1", 0, 0, cost_usd=0.5)
    wall.advance(30 * 60)  # the same month
    db.track_usage("r-2", 0, 0, cost_usd=0.25)
    db.check_quota()
    with pytest.raises(
        QuotaExceededError, match=r"^Monthly budget exceeded: \$1\.00/\$1\.00$"
    ) as e:
        db.track_usage("r-3", 0, 0, cost_usd=0.25)
    assert e.value.reset_at == utc(2024, 4, 1)
    assert e.value.retry_after == 30 * 60 + 1
    wall.advance(30 * 60)  # April
    db.check_quota()
    assert db.get_usage_stats()["monthly_cost_usd"] == 0.0


def test_quotas_are_kept_in_the_file_for_every_user(open_db):
    first = open_db(daily_token_quota=1000, monthly_budget_usd=5.0)
    second = open_db()  # no quota given: the stored ones hold
    assert (second.daily_token_quota, second.monthly_budget_usd) == (1000, 5.0)
    second.set_quota("daily_tokens", 2000)
    first.monthly_budget_usd = 7.5  # the old code assigned the attribute
    assert (first.daily_token_quota, second.monthly_budget_usd) == (2000, 7.5)
    first.set_quota("monthly_budget", None)  # removed
    assert second.monthly_budget_usd is None
    assert "monthly_budget_usd" not in second.get_usage_stats()


# --- alerts --------------------------------------------------------------------------------


def test_alerts_fire_once_per_threshold_and_day(open_db, wall, caplog):
    caplog.set_level(logging.INFO, logger=ALERTS)
    db = open_db(daily_token_quota=1000)
    db.track_usage("r-1", 550, 0)
    assert alert_logs(caplog) == ["Usage alert: 50% of quota used - 55.0% of daily_tokens"]
    db.track_usage("r-2", 50, 0)
    assert len(alert_logs(caplog)) == 1  # 60 %: nothing new
    db.track_usage("r-3", 300, 0)  # 90 %: both the 80 % and the 90 % alerts
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING, logging.CRITICAL]
    stats = db.get_usage_stats()
    assert [a["threshold_percent"] for a in stats["recent_alerts"]] == [90.0, 80.0, 50.0]

    caplog.clear()
    wall.advance(86400)  # a new day: each threshold may fire again
    db.track_usage("r-4", 500, 0)
    assert alert_logs(caplog) == ["Usage alert: 50% of quota used - 50.0% of daily_tokens"]


def test_alerts_do_not_fire_again_after_a_restart_in_the_same_period(open_db, wall, caplog):
    caplog.set_level(logging.INFO, logger=ALERTS)
    first = open_db(monthly_budget_usd=10.0)
    first.track_usage("r-1", 0, 0, cost_usd=6.0)
    first.close()
    assert len(alert_logs(caplog)) == 1

    calls: list[tuple[float, float, str]] = []
    restarted = open_db()
    restarted.alerts = []  # an alert is its quota, threshold and message: the one fired above
    restarted.add_alert(50.0, "50% of quota used", callback=lambda *call: calls.append(call))
    wall.advance(10 * 86400)  # later in March: the monthly alert stays fired
    restarted.track_usage("r-2", 0, 0, cost_usd=1.0)
    assert len(alert_logs(caplog)) == 1 and calls == []

    wall.advance(30 * 86400)  # April
    restarted.track_usage("r-3", 0, 0, cost_usd=5.0)
    assert calls == [(50.0, 5.0, "monthly_budget")]


@pytest.mark.asyncio
async def test_alert_callbacks_may_be_plain_or_coroutines(open_db, run_threads):
    db = open_db(daily_token_quota=100)
    db.alerts = []
    seen: list[str] = []

    async def later(percent: float, used: float, quota_type: str) -> None:
        await asyncio.sleep(0)
        seen.append(f"async {percent} {used} {quota_type}")

    db.add_alert(
        20.0, "plain", callback=lambda percent, used, kind: seen.append(f"plain {percent}")
    )
    db.add_alert(30.0, "awaited", callback=later)
    db.add_alert(40.0, "in a thread", callback=later)

    await db.track_usage("r-1", 20, 0)
    assert seen == ["plain 20.0"]
    await db.track_usage("r-2", 10, 0)  # awaiting waits for the coroutine callback
    assert seen[1:] == ["async 30.0 30 daily_tokens"]
    # Called plainly where no event loop runs, a coroutine callback runs to the end there.
    run_threads(lambda i: db.track_usage("r-3", 10, 0), count=1)
    assert seen[2:] == ["async 40.0 40 daily_tokens"]


def test_a_failing_callback_is_logged_and_the_record_kept(open_db, path, caplog):
    db = open_db(daily_token_quota=100)

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    db.add_alert(10.0, "broken", callback=broken)
    assert db.track_usage("r-1", 10, 0) == 10 * 3e-6
    assert record_count(path) == 1
    assert "Usage alert callback failed: broken" in caplog.text


# --- statistics ----------------------------------------------------------------------------


def test_usage_stats_for_today_the_week_the_month_and_all(open_db):
    wall = ManualClock(utc(2024, 2, 20, 12))
    db = open_db(clock=wall)
    db.track_usage("february", 100, 0)
    wall.advance(utc(2024, 3, 5, 12) - wall.time())
    db.track_usage("yesterday", 200, 0, model_name="gpt-4", cost_usd=1.0)
    wall.advance(86400)
    db.track_usage("today", 300, 100)
    db.track_usage("failed", 800, 0, status="failed")
    db.track_usage("limited", 0, 0, status="rate_limited")

    today = db.get_usage_stats()
    assert {k: today[k] for k in today if k != "total_cost_usd"} == {
        "total_requests": 3,
        "successful_requests": 1,
        "failed_requests": 1,
        "rate_limited_requests": 1,
        "total_input_tokens": 1100,
        "total_output_tokens": 100,
        "total_tokens": 1200,
        "avg_tokens_per_request": 400.0,
        "max_tokens_request": 800,
        "recent_alerts": [],
    }
    totals = {p: db.get_usage_stats(p)["total_tokens"] for p in ("week", "month", "all")}
    assert totals == {"week": 1400, "month": 1400, "all": 1500}

    assert db.get_usage_by_model() == {
        "gpt-4": {
            "model_name": "gpt-4",
            "request_count": 1,
            "total_tokens": 200,
            "total_cost": 1.0,
        },
        "claude-3-5-sonnet": {
            "model_name": "claude-3-5-sonnet",
            "request_count": 2,
            "total_tokens": 500,
            "total_cost": pytest.approx(100 * 3e-6 + 300 * 3e-6 + 100 * 15e-6),
        },
    }
    assert list(db.get_usage_by_model("today")) == ["claude-3-5-sonnet"]


def test_empty_stats_are_zeros(open_db):
    stats = open_db().get_usage_stats("all")
    assert stats["total_requests"] == stats["total_tokens"] == stats["max_tokens_request"] == 0
    assert stats["total_cost_usd"] == stats["avg_tokens_per_request"] == 0.0


# --- restarts, processes, threads ----------------------------------------------------------

WRITER = """
    import sys
    from flashcard_pipeline.rate_limiter import DatabaseRateLimiter
    from flashcard_pipeline.rate_limiter_v2 import ManualClock

    db = DatabaseRateLimiter(sys.argv[1], daily_token_quota=1000, monthly_budget_usd=2.0,
                             clock=ManualClock(float(sys.argv[2])))
    db.track_usage("old-1", 400, 100, endpoint="/v1/messages")
    db.track_usage("old-2", 100, 0, model_name="gpt-4", cost_usd=0.5)
    db.track_usage("old-3", 10, 0, status="failed")
"""


def test_a_new_process_reads_what_the_old_one_wrote(open_db, path, caplog):
    python(WRITER, str(path), str(START))  # fires the 50 % alert of the daily quota
    caplog.set_level(logging.INFO, logger=ALERTS)
    db = open_db()
    assert (db.daily_token_quota, db.monthly_budget_usd) == (1000, 2.0)
    stats = db.get_usage_stats()
    assert (stats["total_requests"], stats["successful_requests"], stats["total_tokens"]) == (
        3,
        2,
        610,
    )
    assert stats["daily_tokens_used"] == 600
    assert [(a["message"], a["created_at"]) for a in stats["recent_alerts"]] == [
        ("50% of quota used", "2024-03-06 12:00:00.000000")
    ]
    assert db.get_usage_by_model()["gpt-4"]["total_cost"] == 0.5
    db.track_usage("new-1", 50, 0)  # 65 %: the 50 % alert fired in the other process
    assert alert_logs(caplog) == []


COUNTER = """
    import sys, os, time
    from flashcard_pipeline.rate_limiter import DatabaseRateLimiter

    path, name, go = sys.argv[1:]
    db = DatabaseRateLimiter(path)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(500):
        db.track_usage(f"{name}-{i}", 1, 2)
        time.sleep(0.001)  # as between API calls: SQLite's lock is not fair to a tight loop
"""


def test_two_processes_tracking_into_one_file_lose_no_record(path, tmp_path):
    DatabaseRateLimiter(path).close()  # the schema exists before they race
    go = tmp_path / "go"
    writers = [python(COUNTER, str(path), name, str(go), wait=False) for name in "ab"]
    for writer in writers:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    go.touch()
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    assert rows(path, "SELECT COUNT(*), SUM(total_tokens) FROM api_usage_tracking") == [
        (1000, 3000)
    ]
    order = rows(path, "SELECT substr(request_id, 1, 1) FROM api_usage_tracking ORDER BY id")
    assert sum(a != b for a, b in zip(order, order[1:])) > 10  # they really wrote at once


def test_threads_sharing_one_limiter_lose_no_record(open_db, path, run_threads):
    db = open_db(daily_token_quota=10**9)

    def worker(i: int) -> None:
        for n in range(125):
            db.track_usage(f"t{i}-{n}", 1, 1)

    run_threads(worker, count=4)
    assert rows(path, "SELECT COUNT(*), SUM(total_tokens) FROM api_usage_tracking") == [(500, 1000)]
    assert db.get_usage_stats()["daily_tokens_used"] == 1000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection(open_db, path):
    db = open_db()
    db.track_usage("parent-1", 1, 0)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            db.track_usage("child-1", 1, 0)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    db.track_usage("parent-2", 1, 0)
    assert record_count(path) == 3


# --- errors --------------------------------------------------------------------------------


def test_a_corrupt_file_is_a_clear_error_and_is_left_as_it_is(path):
    garbage = b"this is not an SQLite database\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(UsageDatabaseError, match="not a database") as error:
        DatabaseRateLimiter(path)
    assert isinstance(error.value, sqlite3.DatabaseError)
    assert str(error.value).startswith(f"usage database {path}: ")
    assert error.value.path == str(path)
    assert path.read_bytes() == garbage


def test_a_file_locked_beyond_the_busy_timeout_is_a_clear_error(open_db, path):
    db = open_db(busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the file
    started = time.monotonic()
    with pytest.raises(UsageDatabaseError, match="locked") as error:
        db.track_usage("r-1", 1, 0)
    assert time.monotonic() - started >= 0.05
    assert str(error.value).startswith(f"usage database {path}: ")
    db.get_usage_stats()  # readers are not blocked in WAL mode
    other.execute("ROLLBACK")
    other.close()
    db.track_usage("r-1", 1, 0)  # the caller was told; its retry is stored once
    assert rows(path, "SELECT request_id, retry_count FROM api_usage_tracking") == [("r-1", 0)]


def test_a_file_from_a_newer_schema_is_refused(path):
    with connect(path) as newer:
        newer.execute("PRAGMA user_version = 3")
    with pytest.raises(UsageDatabaseError, match="schema version 3 is newer"):
        DatabaseRateLimiter(path)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda db: db.track_usage("r", -1, 0), ValueError, "input_tokens: "),
        (lambda db: db.track_usage("r", 1.5, 0), ValueError, "input_tokens: "),
        (lambda db: db.track_usage("r", True, 0), TypeError, "input_tokens: "),
        (lambda db: db.track_usage("r", 0, "5"), TypeError, "output_tokens: "),
        (lambda db: db.track_usage("r", 2**63, 0), ValueError, "input_tokens: "),
        (lambda db: db.track_usage("r", 0, 1e300), ValueError, "output_tokens: "),
        (lambda db: db.set_quota("daily_tokens", 2**63), ValueError, "value: "),
        (lambda db: db.track_usage("", 1, 0), ValueError, "request_id: "),
        (lambda db: db.track_usage(None, 1, 0), TypeError, "request_id: "),
        (lambda db: db.track_usage("r", 1, 0, model_name=" "), ValueError, "model_name: "),
        (lambda db: db.track_usage("r", 1, 0, cost_usd=math.nan), ValueError, "cost_usd: "),
        (lambda db: db.track_usage("r", 1, 0, cost_usd=-0.1), ValueError, "cost_usd: "),
        (lambda db: db.track_usage("r", 1, 0, status=""), ValueError, "status: "),
        (lambda db: db.track_usage("r", 1, 0, endpoint=3), TypeError, "endpoint: "),
        (lambda db: db.get_usage_stats("yesterday"), ValueError, "period: "),
        (lambda db: db.get_usage_by_model(7), TypeError, "period: "),
        (lambda db: db.set_quota("weekly_tokens", 5), ValueError, "quota_type: "),
        (lambda db: db.set_quota("daily_tokens", 0), ValueError, "value: "),
        (lambda db: db.set_quota("monthly_budget", math.inf), ValueError, "value: "),
        (lambda db: setattr(db, "daily_token_quota", 10.5), ValueError, "daily_token_quota: "),
        (lambda db: db.add_alert(0, "m"), ValueError, "threshold_percent: "),
        (lambda db: db.add_alert(50, "m", "urgent"), ValueError, "alert_type: "),
        (lambda db: db.add_alert(50, "m", callback=1), TypeError, "callback: "),
        (lambda db: UsageAlert(True, "m"), TypeError, "threshold_percent: "),
    ],
)
def test_bad_arguments_are_named_and_store_nothing(open_db, path, call, error, message):
    db = open_db()
    with pytest.raises(error) as raised:
        call(db)
    assert str(raised.value).startswith(message)
    assert record_count(path) == 0


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"db_path": 5}, TypeError, "db_path: "),
        ({"db_path": ""}, ValueError, "db_path: "),
        ({"daily_token_quota": -5}, ValueError, "daily_token_quota: "),
        ({"daily_token_quota": 2**63}, ValueError, "daily_token_quota: "),
        ({"monthly_budget_usd": math.nan}, ValueError, "monthly_budget_usd: "),
        ({"model_name": ""}, ValueError, "model_name: "),
        ({"busy_timeout": -1}, ValueError, "busy_timeout: "),
        ({"burst_size": 0}, ValueError, "burst_size: "),
    ],
)
def test_bad_constructor_arguments_are_named_and_create_no_file(path, options, error, message):
    options.setdefault("db_path", path)
    with pytest.raises(error, match=f"^{message}"):
        DatabaseRateLimiter(**options)
    assert not path.exists()
