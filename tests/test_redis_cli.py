"""``python -m anyio_keyq.redis worker``, run in this process to see it whole."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from anyio_keyq.redis import RedisQueue
from anyio_keyq.redis.__main__ import main

if TYPE_CHECKING:
    from pathlib import Path


async def enqueue(url: str, name: str, *jobs: tuple[str, str, object]) -> None:
    async with RedisQueue(url, name) as queue:
        await queue.enqueue_many(jobs)


async def pending(url: str, name: str) -> tuple[int, int]:
    async with RedisQueue(url, name) as queue:
        info = await queue.info()
        return info.ready, info.leased


def signal_when(condition: object, *signums: signal.Signals) -> threading.Thread:
    """Send *signums* to this process, one by one, each once *condition* holds."""

    def run() -> None:
        for signum in signums:
            deadline = time.monotonic() + 30
            while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
                time.sleep(0.02)
            os.kill(os.getpid(), signum)
            time.sleep(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_worker_runs_the_jobs_and_stops_on_sigterm(
    redis_url: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setenv("KEYQ_TEST_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("KEYQ_REDIS_URL", redis_url)
    anyio.run(enqueue, redis_url, queue_name, ("a", "step", 0), ("a", "step", 1), ("b", "step", 0))
    thread = signal_when(
        lambda: anyio.run(pending, redis_url, queue_name) == (0, 0), signal.SIGTERM
    )
    args = ["worker", "tests.redis_workers:HANDLERS", "--queue", queue_name]
    args += ["--retry", "tests.redis_workers:RETRY"]
    assert main([*args, "--backend", backend, "--log-level", "warning"]) == 0
    thread.join()
    lines = [
        line.split()[:3] for p in tmp_path.glob("*.log") for line in p.read_text().splitlines()
    ]
    assert [x for x in lines if x[1] == "a"] == [
        ["start", "a", "0"], ["end", "a", "0"], ["start", "a", "1"], ["end", "a", "1"]
    ]  # fmt: skip


def test_a_second_signal_cancels_the_running_jobs(
    redis_url: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYQ_TEST_LOG_DIR", str(tmp_path))
    anyio.run(enqueue, redis_url, queue_name, ("k", "hang", None))
    thread = signal_when(lambda: list(tmp_path.glob("*.log")), signal.SIGTERM, signal.SIGINT)
    args = ["worker", "tests.redis_workers:HANDLERS", "--url", redis_url, "--queue", queue_name]
    assert main(args) == 0
    thread.join()
    # The job was handed back, ready for another worker.
    assert anyio.run(pending, redis_url, queue_name) == (1, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nocolon"], r"^handlers must look like 'package.module:name', got 'nocolon'$"),
        (["tests.redis_workers:NOPE"], r"^cannot load handlers 'tests.redis_workers:NOPE': "),
        (["no_such_module:X"], r"^cannot load handlers 'no_such_module:X': "),
        (["tests.redis_workers:step"], r"^handlers 'tests.redis_workers:step' is not a mapping"),
        (["tests.redis_workers:HANDLERS", "--concurrency", "0"], r"^concurrency must be >= 1"),
        (
            ["tests.redis_workers:HANDLERS", "--retry", "tests.redis_workers:HANDLERS"],
            r"^retry must be a retry policy",
        ),
    ],
)
def test_bad_command_lines(args: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        main(["worker", *args])


def test_a_signal_while_the_worker_starts_stops_it_once_it_serves(
    redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anyio_keyq.redis import RedisWorker, __main__

    monkeypatch.setattr(__main__, "_early_signals", [signal.SIGTERM])
    worker = RedisWorker(redis_url, queue_name, {})
    anyio.run(__main__._serve, worker)
    assert worker.statistics().claimed == 0
    __main__._remember(signal.SIGINT, None)
    assert __main__._early_signals == [signal.SIGTERM, signal.SIGINT]
