from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

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


def _redis_answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of the test session's own, on a free 127.0.0.1 port, with a password.

    The URL carries a user and password, so every Redis test also shows that they
    pass through to the client. Fails (never skips) when ``redis-server`` is missing.

    TCP rather than a unix socket: anyio's unix socket streams on asyncio can raise
    InvalidStateError in a loop callback when a receive is cancelled just as data
    arrives (a worker cancels its blocking wait when it stops).
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
    directory = tmp_path_factory.mktemp("redis")
    for _ in range(5):  # pragma: no branch - another process may take the free port first
        port = _free_port()
        proc = subprocess.Popen(
            [
                exe,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(directory),
                "--user", "default", "off",
                "--user", "keyq", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _redis_answers(port) and proc.poll() is None:
            if time.monotonic() > deadline:  # pragma: no cover
                proc.kill()
                pytest.fail("redis-server did not answer within 10 seconds")
            time.sleep(0.01)
        if proc.poll() is None:
            break
    else:  # pragma: no cover
        pytest.fail(f"redis-server did not start (exit status {proc.poll()})")
    try:
        yield f"redis://keyq:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


@pytest.fixture
def queue_name() -> str:
    """A queue name of the test's own, so tests never see each other's keys."""
    import uuid

    return f"test-{uuid.uuid4().hex[:12]}"
