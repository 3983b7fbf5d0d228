"""Worker processes killed at random, and a worker frozen past its lease.

The workers are real processes (``python -m anyio_keyq.redis worker``), half on
asyncio and half on trio, with the handlers of tests/redis_workers.py, which log every
start and end to a file per process. ``KEYQ_CRASH_SECONDS`` sets how long the crash
test keeps killing workers (``make redis-soak``: minutes).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import coredis
import pytest

from anyio_keyq.redis import RedisQueue

from .conftest import die_with_parent

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).parent.parent
CRASH_SECONDS = float(os.environ.get("KEYQ_CRASH_SECONDS", "20"))


class Workers:
    """Worker processes, started, killed, frozen and stopped by the test."""

    def __init__(self, url: str, queue: str, log_dir: Path, lease: float) -> None:
        self.url = url
        self.queue = queue
        self.log_dir = log_dir
        self.lease = lease
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed_at: dict[int, float] = {}

    def start(self, backend: str) -> subprocess.Popen[bytes]:
        env = dict(
            os.environ,
            KEYQ_REDIS_URL=self.url,
            KEYQ_TEST_URL=self.url,
            KEYQ_TEST_LOG_DIR=str(self.log_dir),
            KEYQ_TEST_QUEUE=self.queue,
        )
        args = ["--queue", self.queue, "--backend", backend, "--lease", str(self.lease)]
        args += ["--concurrency", "8", "--poll-interval", "0.1", "--log-level", "ERROR"]
        cmd = [sys.executable, "-m", "anyio_keyq.redis", "worker", "tests.redis_workers:HANDLERS"]
        proc = subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, preexec_fn=die_with_parent)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait(30)
        self.killed_at[proc.pid] = time.time()
        self.procs.remove(proc)

    def stop_all(self) -> list[int]:
        for proc in self.procs:
            # Python's default action for SIGTERM ends a process still importing.
            wait_for(lambda p=proc: catches_sigterm(p.pid) or p.poll() is not None, 60)
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc in self.procs]
        self.procs.clear()
        return codes

    def log(self) -> Iterator[list[str]]:
        for path in sorted(self.log_dir.glob("*.log")):
            for line in path.read_text().splitlines():
                yield line.split()


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False  # pragma: no cover


def run(fn: object, *args: object) -> object:
    return anyio.run(fn, *args)  # type: ignore[arg-type]


async def enqueue(url: str, name: str, jobs: list[tuple[str, str, object]]) -> None:
    async with RedisQueue(url, name) as queue:
        for i in range(0, len(jobs), 500):
            await queue.enqueue_many(jobs[i : i + 500])


async def lanes(url: str, name: str) -> int:
    async with RedisQueue(url, name) as queue:
        return await queue.lanes()


async def all_keys(url: str, pattern: str) -> set[str]:
    async with coredis.Redis.from_url(url) as client:
        return {k.decode() async for k in client.scan_iter(match=pattern)}


async def read_store(url: str, key: str) -> dict[bytes, bytes]:
    async with coredis.Redis.from_url(url) as client:
        return await client.hgetall(key)


def wait_for(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.timeout(CRASH_SECONDS + 300)
def test_workers_killed_at_random_lose_no_job_and_keep_order(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    keys = [f"key{i}" for i in range(200)]
    per_key = max(6, int(CRASH_SECONDS))  # enough work to last about that long
    jobs: list[tuple[str, str, object]] = [(key, "step", n) for n in range(per_key) for key in keys]
    run(enqueue, redis_url, queue_name, jobs)
    lease = 1.0
    workers = Workers(redis_url, queue_name, tmp_path, lease)
    backends = ["asyncio", "trio", "asyncio", "trio"]
    for backend in backends:
        workers.start(backend)
    rng = random.Random(os.environ.get("KEYQ_CRASH_SEED"))
    kills = 0
    deadline = time.monotonic() + CRASH_SECONDS
    try:
        while time.monotonic() < deadline and run(lanes, redis_url, queue_name):
            time.sleep(rng.uniform(0.2, 0.8))
            victim = rng.choice(workers.procs)
            backend = backends[kills % len(backends)]
            workers.kill(victim)
            kills += 1
            workers.start(backend)
        wait_for(lambda: run(lanes, redis_url, queue_name) == 0, timeout=max(120, CRASH_SECONDS))
    finally:
        codes = workers.stop_all()
    assert codes == [0] * len(codes), "a worker did not exit cleanly on SIGTERM"
    assert kills >= 3

    starts: dict[str, list[tuple[float, int, int, int]]] = defaultdict(list)
    ends: dict[tuple[str, int], float] = {}
    for kind, key, seq, fence, pid, at in workers.log():
        if kind == "start":
            starts[key].append((float(at), int(seq), int(fence), int(pid)))
        else:
            ends[(key, int(fence))] = float(at)
    assert set(starts) == set(keys)
    reruns = sum(len(runs) for runs in starts.values()) - len(jobs)
    assert reruns > 0, "no kill hit a running job: the test proved nothing"
    for key in keys:
        runs = sorted(starts[key])
        seqs = [seq for _, seq, _, _ in runs]
        # Every job ran at least once, and starts follow FIFO order: a job starts
        # again (its run was lost) or the next one starts, never one further on.
        assert seqs[0] == 0
        assert all(b in (a, a + 1) for a, b in itertools.pairwise(seqs)), (key, seqs)
        assert seqs[-1] == per_key - 1
        fences = [fence for _, _, fence, _ in runs]
        assert fences == sorted(fences)
        # No two runs of a key overlapped: each ended (or its process was killed)
        # before the next one started.
        for (_, _, fence, pid), (next_start, _, _, _) in itertools.pairwise(runs):
            end = ends.get((key, fence), workers.killed_at.get(pid))
            assert end is not None, (key, fence, pid)
            assert end <= next_start, (key, fence)
    # Redis holds the queue's two counters and nothing else.
    prefix = f"keyq:{{{queue_name}}}:"
    assert run(all_keys, redis_url, prefix + "*") == {prefix + "seq", prefix + "fence"}


def test_a_frozen_worker_loses_its_key_and_its_late_write_is_fenced_off(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    run(enqueue, redis_url, queue_name, [("k", "pause", None)])
    workers = Workers(redis_url, queue_name, tmp_path, lease=1.0)
    frozen = workers.start("trio")

    def lines(kind: str) -> list[list[str]]:
        return [line for line in workers.log() if line[0] == kind]

    try:
        wait_for(lambda: lines("frozen"), timeout=60)
        frozen.send_signal(signal.SIGSTOP)
        try:
            # The lease runs out; another worker (asyncio) takes the key over.
            workers.start("asyncio")
            wait_for(lambda: run(lanes, redis_url, queue_name) == 0, timeout=60)
        finally:
            frozen.send_signal(signal.SIGCONT)
        wait_for(lambda: lines("late"), timeout=60)
    finally:
        codes = workers.stop_all()
    assert codes == [0, 0]
    early = sorted(lines("early"), key=lambda line: int(line[2]))
    assert [(e[1], e[3]) for e in early] == [("1", "1"), ("2", "1")]
    first_fence, second_fence = int(early[0][2]), int(early[1][2])
    assert first_fence < second_fence
    # The frozen worker woke up and wrote with its old fence: refused.
    [late] = lines("late")
    assert late[1:] == ["1", str(first_fence), "0"]
    store = run(read_store, redis_url, f"store:{queue_name}:k")
    assert store == {
        b"fence": str(second_fence).encode(),
        b"value": f"early {early[1][4]} {second_fence}".encode(),
    }
    prefix = f"keyq:{{{queue_name}}}:"
    assert run(all_keys, redis_url, prefix + "*") == {prefix + "seq", prefix + "fence"}
