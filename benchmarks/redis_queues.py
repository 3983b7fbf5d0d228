"""``python -m benchmarks.redis_queues``: anyio_keyq.redis next to arq and SAQ on one server.

For each queue and 1, 2 and 4 worker processes (each with ``--concurrency`` jobs at
once), on a Redis server of its own (started here, no persistence):

* **pickup latency**: idle workers, one job enqueued at a time; the time from just
  before the enqueue call to the start of the job, measured in the worker;
* **throughput** of no-op jobs and of short-I/O jobs (a 1 ms sleep): N jobs enqueued
  as fast as the client allows (anyio_keyq in batches of 100, spread over 100 keys;
  arq and SAQ one call per job, they have no keys), timed from the first enqueue
  to the last job's end;
* **client-side CPU per job**: the worker processes' CPU time from their first job to
  their last, over the jobs they ran; the producer's CPU per enqueued job; and, as
  the unit, the CPU time of one PING through coredis.

Each library runs with its defaults except the concurrency (arq: ``max_jobs``; arq's
``poll_delay`` of 0.5 s is its default and shows in its latency). ``--quick`` is a
smoke test with few jobs and one worker process; ``--out FILE`` writes the results as
JSON; ``--profile`` runs one worker in this process under cProfile instead and prints
the share of its CPU time per group of modules. The tests run ``--quick`` and
``--profile`` (tests/test_redis_benchmark.py); ``make bench`` runs neither.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

QUEUES = ("anyio_keyq", "arq", "saq")
ROOT = Path(__file__).resolve().parent.parent
QUEUE_NAME = "bench"


# -- the worker processes -----------------------------------------------------------------


class Stats:
    """What a worker process reports when it is stopped."""

    def __init__(self) -> None:
        self.jobs = 0
        self.cpu_first: float | None = None
        self.cpu_last = 0.0
        self.latencies: list[float] = []

    def start(self, sent: float | None) -> None:
        if sent is not None:
            self.latencies.append(time.time() - sent)
        if self.cpu_first is None:
            self.cpu_first = time.process_time()

    def end(self) -> None:
        self.jobs += 1
        self.cpu_last = time.process_time()

    def dump(self, path: str) -> None:
        cpu = 0.0 if self.cpu_first is None else self.cpu_last - self.cpu_first
        data = {"jobs": self.jobs, "cpu": cpu, "latencies": self.latencies}
        Path(path).write_text(json.dumps(data))


STATS = Stats()


def _exit_on_sigterm(stats_path: str) -> None:
    def handler(signum: int, frame: object) -> None:
        STATS.dump(stats_path)
        os._exit(0)

    signal.signal(signal.SIGTERM, handler)


def _ready(stats_path: str) -> None:
    Path(stats_path + ".ready").touch()


def run_worker(queue: str, url: str, stats_path: str, concurrency: int) -> None:
    """The body of one worker process of *queue*."""
    _exit_on_sigterm(stats_path)
    if queue == "anyio_keyq":
        _keyq_worker(url, stats_path, concurrency)
    elif queue == "arq":
        _arq_worker(url, stats_path, concurrency)
    else:
        _saq_worker(url, stats_path, concurrency)


def _keyq_worker(url: str, stats_path: str, concurrency: int) -> None:
    from anyio_keyq.redis import RedisJob, RedisWorker

    async def noop(job: RedisJob) -> None:
        STATS.start(job.payload)
        STATS.end()

    async def io(job: RedisJob) -> None:
        STATS.start(job.payload)
        await anyio.sleep(0.001)
        STATS.end()

    async def main() -> None:
        handlers = {"noop": noop, "io": io}
        async with RedisWorker(url, QUEUE_NAME, handlers, concurrency=concurrency) as worker:
            async with anyio.create_task_group() as tg:
                await tg.start(worker.serve)
                _ready(stats_path)

    anyio.run(main)


def _arq_worker(url: str, stats_path: str, concurrency: int) -> None:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    async def noop(ctx: Any, sent: float | None = None) -> None:
        STATS.start(sent)
        STATS.end()

    async def io(ctx: Any, sent: float | None = None) -> None:
        STATS.start(sent)
        await asyncio.sleep(0.001)
        STATS.end()

    async def startup(ctx: Any) -> None:
        _ready(stats_path)

    worker: Any = Worker(
        functions=[func(noop, name="noop"), func(io, name="io")],
        redis_settings=RedisSettings.from_dsn(url),
        queue_name=QUEUE_NAME,
        max_jobs=concurrency,
        on_startup=startup,
        handle_signals=False,
        keep_result=0,
    )
    worker.run()


def _saq_worker(url: str, stats_path: str, concurrency: int) -> None:
    from saq import Queue, Worker

    async def noop(ctx: Any, *, sent: float | None = None) -> None:
        STATS.start(sent)
        STATS.end()

    async def io(ctx: Any, *, sent: float | None = None) -> None:
        STATS.start(sent)
        await asyncio.sleep(0.001)
        STATS.end()

    async def startup(ctx: Any) -> None:
        _ready(stats_path)

    async def main() -> None:
        queue: Any = Queue.from_url(url, name=QUEUE_NAME)
        functions = [("noop", noop), ("io", io)]
        worker: Any = Worker(queue, functions=functions, concurrency=concurrency, startup=startup)
        await worker.start()  # installs its own SIGTERM handler, which stops it

    asyncio.run(main())
    STATS.dump(stats_path)


# -- the producer ---------------------------------------------------------------------------


class Producer:
    """Enqueue jobs into one of the queues, and tell when they are all done."""

    def __init__(self, queue: str, url: str) -> None:
        self.queue = queue
        self.url = url
        self.client: Any = None

    async def __aenter__(self) -> Producer:
        if self.queue == "anyio_keyq":
            from anyio_keyq.redis import RedisQueue

            self.client = RedisQueue(self.url, QUEUE_NAME)
            await self.client.__aenter__()
        elif self.queue == "arq":
            from arq.connections import RedisSettings, create_pool

            self.client = await create_pool(
                RedisSettings.from_dsn(self.url), default_queue_name=QUEUE_NAME
            )
        else:
            from saq import Queue

            self.client = Queue.from_url(self.url, name=QUEUE_NAME)
            await self.client.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.queue == "anyio_keyq":
            await self.client.__aexit__(None, None, None)
        elif self.queue == "arq":
            await self.client.aclose()
        else:
            await self.client.disconnect()

    async def enqueue(self, task: str, n: int, sent: float | None = None) -> None:
        if self.queue == "anyio_keyq":
            jobs = [(f"key{i % 100}", task, sent) for i in range(n)]
            for i in range(0, n, 100):
                await self.client.enqueue_many(jobs[i : i + 100])
        elif self.queue == "arq":
            for _ in range(n):
                await self.client.enqueue_job(task, sent)
        else:
            for _ in range(n):
                await self.client.enqueue(task, sent=sent)

    async def pending(self) -> int:
        if self.queue == "anyio_keyq":
            return int(await self.client.lanes())
        if self.queue == "arq":
            queued = int(await self.client.zcard(QUEUE_NAME))
            running = [k async for k in self.client.scan_iter(match="arq:in-progress:*")]
            return queued + len(running)
        return int(await self.client.count("incomplete"))

    async def wait_done(self, timeout: float) -> None:
        with anyio.fail_after(timeout):
            while await self.pending():  # noqa: ASYNC110 - polling another process's work
                await anyio.sleep(0.002)


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0"


async def flush(url: str) -> None:
    import coredis

    async with coredis.Redis.from_url(url) as client:
        await client.flushall()


async def ping_cpu(url: str, n: int = 2000) -> float:
    """CPU seconds of one PING round trip through coredis, the unit of client cost."""
    import coredis

    async with coredis.Redis.from_url(url) as client:
        for _ in range(100):
            await client.ping()
        cpu = time.process_time()
        for _ in range(n):
            await client.ping()
        return (time.process_time() - cpu) / n


def measure(
    queue: str, url: str, processes: int, jobs: int, probes: int, concurrency: int, tmp: Path
) -> dict[str, Any]:
    anyio.run(flush, url)
    stats_paths = [str(tmp / f"{queue}-{processes}-{i}.json") for i in range(processes)]
    command = [sys.executable, "-m", "benchmarks.redis_queues", "worker", queue, url]
    procs = [subprocess.Popen([*command, path, str(concurrency)], cwd=ROOT) for path in stats_paths]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(p + ".ready").exists() for p in stats_paths):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the {queue} workers did not start")
            time.sleep(0.01)
        result = anyio.run(_drive, queue, url, jobs, probes)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
    reports = [json.loads(Path(p).read_text()) for p in stats_paths]
    done = sum(r["jobs"] for r in reports)
    expected = probes + 2 * jobs
    if done < expected:
        raise RuntimeError(f"{queue}: {done} jobs ran, {expected} expected")
    latencies = sorted(x for r in reports for x in r["latencies"])
    result.update(
        queue=queue,
        processes=processes,
        latency_median_ms=1000 * statistics.median(latencies),
        latency_p90_ms=1000 * latencies[int(0.9 * (len(latencies) - 1))],
        worker_cpu_per_job_us=1e6 * sum(r["cpu"] for r in reports) / done,
    )
    return result


async def _drive(queue: str, url: str, jobs: int, probes: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    async with Producer(queue, url) as producer:
        for _ in range(probes):
            await producer.enqueue("noop", 1, sent=time.time())
            await producer.wait_done(30)
            await anyio.sleep(0.01)
        for task in ("noop", "io"):
            cpu = time.process_time()
            start = time.perf_counter()
            await producer.enqueue(task, jobs)
            cpu = time.process_time() - cpu
            await producer.wait_done(300)
            elapsed = time.perf_counter() - start
            result[f"{task}_jobs_per_s"] = jobs / elapsed
            if task == "noop":
                result["producer_cpu_per_job_us"] = 1e6 * cpu / jobs
    return result


async def profile_worker(url: str, jobs: int) -> dict[str, float]:
    """Run *jobs* no-op jobs through one worker in this process under cProfile.

    Returns the profiled CPU microseconds per job spent in each group of modules:
    anyio_keyq's own code, coredis, anyio, the event loop, and the rest (builtins,
    system calls).
    """
    import cProfile
    import pstats

    from anyio_keyq.redis import RedisJob, RedisQueue, RedisWorker

    all_done = anyio.Event()
    done = 0

    async def noop(job: RedisJob) -> None:
        nonlocal done
        done += 1
        if done == jobs:
            all_done.set()

    profiler = cProfile.Profile()
    async with RedisQueue(url, "profile") as queue:
        await queue.enqueue_many([(f"key{i % 100}", "noop", None) for i in range(jobs)])
        async with (
            RedisWorker(url, "profile", {"noop": noop}, concurrency=10) as worker,
            anyio.create_task_group() as tg,
        ):
            await tg.start(worker.serve)
            profiler.enable()
            await all_done.wait()
            profiler.disable()
            worker.stop()
    groups: dict[str, float] = {}
    stats: Any = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats
    for (filename, _, _), (_, _, own_time, *_) in raw.items():
        group = next(
            (name for name in ("anyio_keyq", "coredis", "anyio", "asyncio", "trio")
             if f"/{name}/" in filename),
            "other",
        )  # fmt: skip
        groups[group] = groups.get(group, 0.0) + 1e6 * own_time / jobs
    return groups


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args and args[0] == "worker":
        run_worker(args[1], args[2], args[3], int(args[4]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_queues")
    parser.add_argument("--quick", action="store_true", help="few jobs, one process")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--queues", default=",".join(QUEUES))
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--profile", action="store_true", help="where a worker's CPU goes, by module group"
    )
    options = parser.parse_args(args)
    queues = [q for q in options.queues.split(",") if q]
    jobs = options.jobs or (100 if options.quick else 5000)
    probes = 5 if options.quick else 50
    process_counts = (1,) if options.quick else (1, 2, 4)
    import tempfile

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp))
        try:
            unit = anyio.run(ping_cpu, url)
            if options.profile:
                for backend in ("asyncio", "trio"):
                    groups = anyio.run(profile_worker, url, jobs, backend=backend)
                    total = sum(groups.values())
                    shares = ", ".join(
                        f"{name} {100 * cpu / total:.1f}%"
                        for name, cpu in sorted(groups.items(), key=lambda item: -item[1])
                    )
                    print(f"profiled worker on {backend}: {shares}", flush=True)
                return 0
            for processes in process_counts:
                for queue in queues:
                    row = measure(
                        queue, url, processes, jobs, probes, options.concurrency, Path(tmp)
                    )
                    row["ping_cpu_us"] = 1e6 * unit
                    rows.append(row)
                    print(
                        f"{queue:>10} x{processes}: {row['noop_jobs_per_s']:8.0f} no-op jobs/s, "
                        f"{row['io_jobs_per_s']:8.0f} io jobs/s, pickup "
                        f"{row['latency_median_ms']:6.2f} ms (p90 {row['latency_p90_ms']:6.2f}), "
                        f"worker CPU/job {row['worker_cpu_per_job_us']:5.0f} us, producer "
                        f"{row['producer_cpu_per_job_us']:5.0f} us (1 PING: {1e6 * unit:.0f} us)",
                        flush=True,
                    )
        finally:
            server.terminate()
            server.wait(10)
    if options.out is not None:
        options.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
