"""``rediss://``: a shared budget over TLS. The server's certificate must chain to the
system's roots or to the file ``SSL_CERT_FILE`` names (here a throwaway certificate
authority); one that does not is never trusted: the limiter answers
``backend_unavailable``."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flashcard_pipeline.rate_limiter_v2 import DistributedRateLimiter
from redis_servers import Server


def _authority(directory: Path, name: str) -> None:
    """A certificate authority ``name.crt``/``name.key`` in ``directory``."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-keyout", directory / f"{name}.key", "-out", directory / f"{name}.crt"],
        check=True, capture_output=True,
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test authority, a server certificate it signed for localhost, and a stranger
    authority that signed nothing here."""
    directory = tmp_path_factory.mktemp("tls")
    _authority(directory, "authority")
    _authority(directory, "stranger")
    (directory / "names").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=localhost",
         "-keyout", directory / "server.key", "-out", directory / "server.csr"],
        check=True, capture_output=True,
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-days", "1", "-in", directory / "server.csr",
         "-CA", directory / "authority.crt", "-CAkey", directory / "authority.key",
         "-CAcreateserial", "-extfile", directory / "names", "-out", directory / "server.crt"],
        check=True, capture_output=True,
    )
    return directory


@pytest.fixture(scope="module")
def server(certificates: Path) -> Iterator[Server]:
    started = Server("redis", tls=certificates)
    yield started
    started.close()


def limiter(server: Server, namespace: str) -> DistributedRateLimiter:
    assert server.tls_url is not None
    return DistributedRateLimiter(
        5, 1.0, namespace=namespace, backend="redis", redis_url=server.tls_url, burst_size=5
    )


def test_a_budget_is_shared_over_tls(
    server: Server, certificates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "authority.crt"))
    first, second = limiter(server, "tls"), limiter(server, "tls")
    assert [first.try_acquire().allowed for _ in range(3)] == [True] * 3
    assert [second.try_acquire().allowed for _ in range(3)] == [True, True, False]
    refused = asyncio.run(first.try_acquire_async())
    assert (refused.allowed, refused.reason) == (False, "rate_limited")
    assert first.get_status()["backend"]["healthy"] is True


def test_a_certificate_from_an_unknown_authority_is_never_trusted(
    server: Server, certificates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "stranger.crt"))
    untrusting = limiter(server, "tls-stranger")
    refused = untrusting.try_acquire()
    assert (refused.allowed, refused.reason) == (False, "backend_unavailable")
    refused = asyncio.run(untrusting.try_acquire_async())
    assert (refused.allowed, refused.reason) == (False, "backend_unavailable")
    assert untrusting.get_status()["backend"]["healthy"] is False
