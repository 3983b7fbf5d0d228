from __future__ import annotations

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


def _redis_answers(sock: Path) -> bool:
    import socket

    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1.0)
            s.connect(str(sock))
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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of the test session's own, on a unix socket, with a password.

    The URL carries a user and password, so every Redis test also shows that they
    pass through to the client. Fails (never skips) when ``redis-server`` is missing.
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
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [
            exe,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--user", "default", "off",
            "--user", "keyq", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _redis_answers(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start (exit status {proc.poll()})")
            time.sleep(0.01)
        yield f"unix://keyq:{REDIS_PASSWORD}@{sock}"
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
