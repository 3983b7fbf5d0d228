"""The floor under KeyedLanes: the least a keyed runner must do, step by step, timed.

The cost target of the suite is a job at most twice as costly as in the bare loop of
bodies. This module measures how much of that budget is left once a design does only
what :class:`~anyio_keyq.KeyedLanes` must do for every job, with none of its other
machinery. Three stripped-down runners, each the one before plus one duty:

``ordered``
    Per-key order and nothing else: one FIFO of jobs and *limit* workers. A job whose
    key is busy waits behind the running job of its key, whose worker runs it next. No
    handles, no limit but the number of workers, no fairness, no cancellation.
``handles``
    Plus a handle per job, returned by the submitting call and settled with the job's
    value, as ``submit_nowait`` returns a :class:`~anyio_keyq.Job`.
``contexts``
    Plus the context work of every job: it runs in its submitter's context; it is
    marked as the current job in a context variable (what detects a wait on a lane that
    can never end); and the worker checks afterwards that the job left its context as
    it found it, so that nothing leaks into the next job.

Workers are spawned as work arrives and exit when there is none: enough for this
workload, where every job is submitted before the first one starts. Each runner is first
checked like a design of the suite (every job ran once, in per-key order), then timed
with the collector on and the harness's objects frozen, next to the bare loop and
KeyedLanes. The body is one checkpoint.

.. code-block:: console

   $ taskset -c 1 python -m benchmarks.floor
   $ taskset -c 1 python -m benchmarks.floor uvloop --keys 10000 -n 200000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
from collections import deque
from contextlib import asynccontextmanager
from contextvars import Context, ContextVar, copy_context
from typing import TYPE_CHECKING, Any, Final

import anyio

from .designs import DESIGNS, Design
from .harness import (
    BACKENDS,
    Config,
    LatencyResult,
    check_once,
    measure_latency,
    time_once,
)
from .workload import ALL_DISTINCT, make_jobs

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

    from .designs import Body, JobSpec
    from .harness import Submit


class _Handle:
    """A job's handle: what it runs, and its state and value once settled."""

    __slots__ = ("__weakref__", "args", "ctx", "event", "fn", "key", "status", "value")

    def __init__(
        self, key: int, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], ctx: Any
    ) -> None:
        self.key = key
        self.fn = fn
        self.args = args
        self.ctx = ctx
        self.status = 0  # queued; 1: running; 2: finished
        self.value: Any = None
        self.event: anyio.Event | None = None


def _settle(handle: _Handle, value: object) -> None:
    handle.status = 2
    handle.value = value
    handle.args = ()
    if handle.event is not None:
        handle.event.set()


_current: Final[ContextVar[_Handle | None]] = ContextVar("floor_current", default=None)

# The three runners repeat one shape on purpose: each is the cheapest code for its step,
# and a shared, parameterised version would make the floor look higher than it is.


async def ordered(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """Per-key order only: a FIFO of jobs; a busy key's jobs wait behind its worker."""
    queue: deque[tuple[int, Callable[..., Awaitable[Any]], tuple[Any, ...]]] = deque()
    busy: dict[int, deque[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] | None] = {}
    workers = 0

    async def worker() -> None:
        nonlocal workers
        while queue:
            key, fn, args = queue.popleft()
            if key in busy:
                waiting = busy[key]
                if waiting is None:
                    busy[key] = deque(((fn, args),))
                else:
                    waiting.append((fn, args))
                continue
            busy[key] = None
            while True:
                await fn(*args)
                waiting = busy[key]
                if not waiting:
                    break
                fn, args = waiting.popleft()
            del busy[key]
        workers -= 1

    async with anyio.create_task_group() as tg:

        def submit(key: int, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
            nonlocal workers
            queue.append((key, fn, args))
            if workers < limit:
                workers += 1
                tg.start_soon(worker)

        for key, index in jobs:
            submit(key, body, key, index)


async def handles(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """:func:`ordered`, plus a handle per job, settled with the job's value."""
    queue: deque[_Handle] = deque()
    busy: dict[int, deque[_Handle] | None] = {}
    workers = 0

    async def worker() -> None:
        nonlocal workers
        while queue:
            job = queue.popleft()
            key = job.key
            if key in busy:
                waiting = busy[key]
                if waiting is None:
                    busy[key] = deque((job,))
                else:
                    waiting.append(job)
                continue
            busy[key] = None
            while True:
                job.status = 1
                _settle(job, await job.fn(*job.args))
                waiting = busy[key]
                if not waiting:
                    break
                job = waiting.popleft()
            del busy[key]
        workers -= 1

    async with anyio.create_task_group() as tg:

        def submit(key: int, fn: Callable[..., Awaitable[Any]], *args: Any) -> _Handle:
            nonlocal workers
            job = _Handle(key, fn, args, None)
            queue.append(job)
            if workers < limit:
                workers += 1
                tg.start_soon(worker)
            return job

        for key, index in jobs:
            submit(key, body, key, index)


async def contexts(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    """:func:`handles`, plus the context work of every job (see the module)."""
    queue: deque[_Handle] = deque()
    busy: dict[int, deque[_Handle] | None] = {}
    workers = 0
    home = copy_context()

    async def worker() -> None:
        nonlocal workers
        while queue:
            job = queue.popleft()
            key = job.key
            if key in busy:
                waiting = busy[key]
                if waiting is None:
                    busy[key] = deque((job,))
                else:
                    waiting.append(job)
                continue
            busy[key] = None
            while True:
                # Only the cheap case: a job submitted from the workers' own context
                # runs right in the worker, as in KeyedLanes (every job here is one).
                job.status = 1
                _current.set(job)
                expected = copy_context()
                value = await job.fn(*job.args)
                if copy_context() != expected:
                    raise RuntimeError("a job changed its context: KeyedLanes would retire")
                _settle(job, value)
                waiting = busy[key]
                if not waiting:
                    break
                job = waiting.popleft()
            del busy[key]
        workers -= 1

    async with anyio.create_task_group() as tg:

        def submit(key: int, fn: Callable[..., Awaitable[Any]], *args: Any) -> _Handle:
            nonlocal workers
            ctx: Context = copy_context()
            if ctx == home:
                ctx = home
            job = _Handle(key, fn, args, ctx)
            queue.append(job)
            if workers < limit:
                workers += 1
                tg.start_soon(worker)
            return job

        for key, index in jobs:
            submit(key, body, key, index)


# -- latency: the least a capped dispatcher can be -------------------------------------------


class _PoolWorker:
    __slots__ = ("event", "job")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.job: tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]] | None = None


@asynccontextmanager
async def pool_dispatcher(limit: int) -> AsyncGenerator[Submit]:
    """*limit* parked workers, each woken by an event of its own, and a FIFO backlog.

    The floor for the latency of a job handed to a parked worker, the way
    :class:`~anyio_keyq.KeyedLanes` hands it: no keys, handles, contexts or fairness.
    """
    idle: list[_PoolWorker] = []
    backlog: deque[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = deque()
    drained = anyio.Event()
    closing = False

    async def work(worker: _PoolWorker) -> None:
        while True:
            await worker.event.wait()
            if worker.job is None:
                return  # closed
            (fn, args), worker.job = worker.job, None
            worker.event = anyio.Event()
            while True:
                await fn(*args)
                if not backlog:
                    break
                fn, args = backlog.popleft()
            idle.append(worker)
            if closing and len(idle) == limit:
                drained.set()

    def submit(key: int, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if idle:
            worker = idle.pop()
            worker.job = (fn, args)
            worker.event.set()
        else:
            backlog.append((fn, args))

    async with anyio.create_task_group() as tg:
        workers = [_PoolWorker() for _ in range(limit)]
        for worker in workers:
            tg.start_soon(work, worker)
        idle.extend(workers)
        yield submit
        closing = True
        if len(idle) < limit:
            await drained.wait()
        for worker in workers:
            worker.event.set()


def latency_table(results: Sequence[tuple[str, LatencyResult]]) -> str:
    """A Markdown table of the latency runs (both at 70 % of the lanes' capacity)."""
    lines = [
        "| backend | dispatcher | lanes' capacity (jobs/s) | rate (jobs/s) | p50 (ms) "
        "| p99 (ms) | p99 / p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results:
        lines.append(
            f"| {r.backend} | {name} | {r.capacity:,.0f} | {r.rate:,.0f} | {r.p50_ms:.3f} "
            f"| {r.p99_ms:.3f} | {r.p99_ms / r.p50_ms:.2f} |"
        )
    return "\n".join(lines)


def _floor_design(name: str, run: Callable[..., Any], description: str) -> Design:
    return Design(
        name,
        run,
        ordered=True,
        capped=True,
        backends=None,
        unordered_on=frozenset(),
        task_per_job=False,
        task_per_key=False,
        description=description,
    )


#: The rows of the table, in order: the bare loop, the three floors, KeyedLanes.
ROWS: Final[tuple[Design, ...]] = (
    DESIGNS["bare"],
    _floor_design("ordered", ordered, "per-key order only"),
    _floor_design("handles", handles, "+ a handle per job"),
    _floor_design("contexts", contexts, "+ the context work of every job"),
    DESIGNS["keyed-lanes"],
)


def measure(backend: str, keys: int, n: int, repeats: int, limit: int = 100) -> dict[str, float]:
    """Seconds per job of every row (the median of *repeats* runs), after a check run.

    :raises RuntimeError: if a row that promises per-key order broke it or lost a job
    """
    jobs = make_jobs(n, keys)
    seconds: dict[str, float] = {}
    for design in ROWS:
        check = check_once(backend, design, jobs, "checkpoint", None, limit)
        if not check.ok(design.ordered):
            raise RuntimeError(f"{design.name} on {backend}: {check.describe()}")
        runs = [time_once(backend, design, jobs, "checkpoint", None, limit) for _ in range(repeats)]
        seconds[design.name] = statistics.median(runs) / n
    return seconds


def table(rows: Sequence[tuple[str, str, dict[str, float]]]) -> str:
    """A Markdown table: µs per job and its ratio to the bare loop, per row."""
    names = [design.name for design in ROWS]
    lines = [
        "| backend | K | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for backend, keys, seconds in rows:
        bare = seconds["bare"]
        cells = [f"{seconds[name] * 1e6:.2f} µs ({seconds[name] / bare:.2f}x)" for name in names]
        lines.append(f"| {backend} | {keys} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _keys(text: str) -> list[int]:
    keys: list[int] = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if part == "all":
            keys.append(ALL_DISTINCT)
        elif part.isdigit() and int(part) > 0:
            keys.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"not a key count: {part!r} (a number, or 'all')")
    return keys


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("backends", nargs="*", help=f"of {', '.join(BACKENDS)} (all)")
    parser.add_argument("--keys", type=_keys, default=[10_000, ALL_DISTINCT])
    parser.add_argument("-n", type=int, default=200_000, help="jobs per run (200,000)")
    parser.add_argument("-r", "--repeats", type=int, default=5, help="timing runs per row (5)")
    parser.add_argument(
        "--latency",
        type=float,
        metavar="SECONDS",
        help="instead: the suite's latency run for KeyedLanes, then for the pool floor at "
        "the same rate, with SECONDS of arrivals each (the suite's: 3)",
    )
    options = parser.parse_args(argv)
    unknown = [name for name in options.backends if name not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    backends = options.backends or list(BACKENDS)
    if options.latency is not None:
        config = Config(latency_seconds=options.latency)
        results: list[tuple[str, LatencyResult]] = []
        for backend in backends:
            lanes = measure_latency(config, backend)
            # The same arrivals for the floor: 70 % of the lanes' capacity.
            pool = measure_latency(config, backend, pool_dispatcher, lanes.capacity)
            results += [("pool", pool), ("keyed-lanes", lanes)]
        print(latency_table(results))
        return
    rows: list[tuple[str, str, dict[str, float]]] = []
    for backend in backends:
        for keys in options.keys:
            seconds = measure(backend, keys, options.n, options.repeats)
            label = "distinct" if keys == ALL_DISTINCT else f"{keys:,}"
            rows.append((backend, label, seconds))
    print(table(rows))
    print(f"\nN = {options.n:,}; median of {options.repeats} runs; cost per job (x bare loop)")


if __name__ == "__main__":
    main()
