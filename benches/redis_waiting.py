"""What a decision costs on Redis while callers wait: ``try_acquire`` on a budget holding
0, 10, 100 and 1,000 live reservations, against one throwaway server.

Run with ``.venv/bin/python benches/redis_waiting.py`` (``make bench`` does). The server keeps
a budget's book of promises beside it and every call reads the book whole, so the cost grows
with the bookings; this prints, for each size, the microseconds a call takes here (the round
trip included) and the server's own time per script call (``INFO commandstats``).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flashcard_pipeline.rate_limiter_v2 import DistributedRateLimiter  # noqa: E402
from redis_side_by_side import redis_server  # noqa: E402
from report import section  # noqa: E402

SIZES = (0, 10, 100, 1000)
CALLS = 500


def ask(url: str, command: str) -> bytes:
    """One inline command to the server at ``url``: its reply (a status line, or a bulk
    string's bytes)."""
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=5) as sock:
        sock.sendall(command.encode() + b"\r\n")
        reply = b""
        while b"\r\n" not in reply:
            reply += sock.recv(4096)
        first, rest = reply.split(b"\r\n", 1)
        if not first.startswith(b"$"):
            return first
        size = int(first[1:])
        while len(rest) < size:
            rest += sock.recv(65536)
        return rest[:size]


def server_usec_per_script(url: str) -> float:
    """The server's microseconds per EVALSHA since its stats were last reset."""
    for line in ask(url, "INFO commandstats").decode().splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return float(line.split("usec_per_call=")[1].split(",")[0])
    raise RuntimeError("the server ran no script")


def cost(url: str, bookings: int, calls: int) -> tuple[float, float]:
    """Microseconds a refused ``try_acquire`` takes with ``bookings`` reservations live, and
    the server's microseconds per script call meanwhile."""
    limiter = DistributedRateLimiter(
        100, 1.0, namespace=f"waiting{bookings}", backend="redis", redis_url=url,
        burst_size=1, reservation_ttl=600,
    )
    assert limiter.try_acquire("k")  # the burst of 1: every call measured is refused
    held = [limiter.reserve("k", max_wait=None) for _ in range(bookings)]
    assert all(r.id for r in held) and not limiter.try_acquire("k")
    assert ask(url, "CONFIG RESETSTAT") == b"+OK"
    t0 = time.perf_counter()
    for _ in range(calls):
        limiter.try_acquire("k")
    elapsed = time.perf_counter() - t0
    return elapsed / calls * 1e6, server_usec_per_script(url)


def main(sizes: tuple[int, ...] = SIZES, calls: int = CALLS) -> dict[int, tuple[float, float]]:
    with redis_server() as url:
        results = {n: cost(url, n, calls) for n in sizes}
    section("try_acquire on a Redis budget with live reservations (refused: the book is full)")
    print(f"{'reservations':>12}  {'a call':>10}  {'server, a call':>14}")
    for n, (call, server) in results.items():
        print(f"{n:>12}  {call:>7.1f} us  {server:>11.1f} us")
    return results


if __name__ == "__main__":
    main()
