from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

BACKENDS = [
    pytest.param(("asyncio", {"debug": True}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param  # type: ignore[no-any-return]


def _virtual_asyncio() -> tuple[str, dict[str, Any]]:
    import async_solipsism

    return ("asyncio", {"loop_factory": async_solipsism.EventLoop})


def _virtual_trio() -> tuple[str, dict[str, Any]]:
    import trio.testing

    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


@pytest.fixture(params=["asyncio", "trio"], ids=["asyncio-virtual", "trio-virtual"])
def virtual_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """A backend whose clock is virtual: sleeps finish at once at exact instants."""
    return _virtual_asyncio() if request.param == "asyncio" else _virtual_trio()


REDIS_PASSWORD = "keyq-test-secret"


def die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """For ``preexec_fn``: the child gets SIGKILL when the test process dies (Linux).

    A test session killed by its timeout then leaves no server or worker behind.
    """
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _redis_answers(port: int, tls_ca: str | None) -> bool:
    import contextlib
    import socket
    import ssl

    try:
        with contextlib.ExitStack() as stack:
            s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=1.0))
            if tls_ca is not None:
                context = ssl.create_default_context(cafile=tls_ca)
                s = stack.enter_context(context.wrap_socket(s, server_hostname="127.0.0.1"))
            s.sendall(f"AUTH keyq {REDIS_PASSWORD}\r\nPING\r\n".encode())
            reply = b""
            while b"PONG" not in reply and b"-" not in reply:
                chunk = s.recv(100)
                if not chunk:
                    return False
                reply += chunk
            return b"PONG" in reply
    except OSError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _redis_server(directory: Path, tls: tuple[str, str] | None = None) -> Iterator[int]:
    """Run redis-server on a free 127.0.0.1 port, with a password; yield the port.

    With *tls* (a PEM file with the server's key and certificate, and the CA's PEM
    file), the port speaks TLS only. Fails (never skips) when redis-server is missing.
    """
    import shutil
    import subprocess
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(
            "redis-server is not installed: run 'make redis-server' "
            "(apt-get install redis-server) before the tests"
        )
    for _ in range(5):  # pragma: no branch - another process may take the free port first
        port = _free_port()
        if tls is None:
            listen = ["--port", str(port)]
        else:
            listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls[0],
                      "--tls-key-file", tls[0], "--tls-auth-clients", "no"]  # fmt: skip
        proc = subprocess.Popen(
            [
                exe, *listen,
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(directory),
                "--user", "default", "off",
                "--user", "keyq", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all",
            ],
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _redis_answers(port, tls and tls[1]) and proc.poll() is None:
            if time.monotonic() > deadline:  # pragma: no cover
                proc.kill()
                pytest.fail("redis-server did not answer within 10 seconds")
            time.sleep(0.01)
        if proc.poll() is None:
            break
    else:  # pragma: no cover
        pytest.fail(f"redis-server did not start (exit status {proc.poll()})")
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of the test session's own, on a free 127.0.0.1 port, with a password.

    The URL carries a user and password, so every Redis test also shows that they
    pass through to the client.

    TCP rather than a unix socket: anyio's unix socket streams on asyncio can raise
    InvalidStateError in a loop callback when a receive is cancelled just as data
    arrives (a worker cancels its blocking wait when it stops).
    """
    with _redis_server(tmp_path_factory.mktemp("redis")) as port:
        yield f"redis://keyq:{REDIS_PASSWORD}@127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second server that speaks TLS only, with a certificate from a test CA."""
    import trustme

    directory = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    server_pem, ca_pem = directory / "server.pem", directory / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    with _redis_server(directory, (str(server_pem), str(ca_pem))) as port:
        yield (
            f"rediss://keyq:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
            f"?ssl_cert_reqs=required&ssl_ca_certs={ca_pem}"
        )


@pytest.fixture
def queue_name() -> str:
    """A queue name of the test's own, so tests never see each other's keys."""
    import uuid

    return f"test-{uuid.uuid4().hex[:12]}"
