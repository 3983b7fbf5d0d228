"""Running the designs: timing, memory, idle lanes and latency."""

from __future__ import annotations

import gc
import math
import statistics
import subprocess
import sys
import time
import tracemalloc
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio

from anyio_keyq import KeyedLanes

from .designs import DESIGNS, Design
from .workload import (
    ALL_DISTINCT,
    Check,
    Recorder,
    Variant,
    counting_body,
    distinct_keys,
    make_durations,
    make_jobs,
    plain_body,
)

#: The directory that holds the benchmarks package: where the timing runs start.
_ROOT: Final = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from .designs import Body, JobSpec

    #: Submits ``fn(*args)`` for *key* at once (never blocks).
    Submit = Callable[..., object]
    #: Opens a dispatcher capped at *limit* running jobs; leaving it waits for every job.
    Dispatcher = Callable[[int], AbstractAsyncContextManager[Submit]]

T = TypeVar("T")

#: The backends, by the names of the command line: (anyio backend, its options).
BACKENDS: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


@dataclass(frozen=True, slots=True)
class Config:
    """What to run. The defaults are the full run; :meth:`quick_config` the smoke test."""

    #: Jobs per timing run of the checkpoint variant.
    n: int = 200_000
    #: Jobs per timing run of the sleeping variant.
    sleep_n: int = 20_000
    #: The most jobs a design that spawns a task per job runs in one timing run.
    cap: int = 20_000
    #: The most jobs an ordered design runs at K=1 in the sleeping variant (serial).
    serial_n: int = 500
    #: Timing runs per cell; the figure is their median.
    repeats: int = 5
    #: Jobs of the check run of a design known not to keep order on a backend.
    pilot_n: int = 5_000
    limit: int = 100
    backends: tuple[str, ...] = ("asyncio", "uvloop", "trio")
    designs: tuple[str, ...] = ()
    keys: tuple[int, ...] = (1, 100, 10_000, ALL_DISTINCT)
    variants: tuple[Variant, ...] = ("checkpoint", "sleep")
    #: Which parts to run: throughput, memory, idle, latency.
    parts: tuple[str, ...] = ("throughput", "memory", "idle", "latency")
    #: Jobs per memory run (the same for every design, so that peaks compare).
    memory_n: int = 10_000
    #: Lanes left idle for the memory-per-idle-lane figure.
    idle_lanes: int = 10_000
    #: Jobs of the capacity run before the latency run.
    capacity_jobs: int = 20_000
    #: Seconds of steady arrivals in the latency run.
    latency_seconds: float = 3.0
    #: The fixed duration of a job in the capacity and latency runs.
    job_seconds: float = 0.001
    #: The arrival rate of the latency run, as a fraction of the measured capacity.
    load: float = 0.7
    quick: bool = False

    @classmethod
    def quick_config(cls) -> Config:
        return cls(
            n=2_000,
            sleep_n=200,
            cap=2_000,
            serial_n=100,
            repeats=1,
            pilot_n=2_000,
            keys=(1, 100, ALL_DISTINCT),
            memory_n=300,
            idle_lanes=300,
            capacity_jobs=1_000,
            latency_seconds=0.2,
            quick=True,
        )

    def n_for(self, design: Design, variant: Variant, keys: int) -> int:
        """Jobs per timing run of *design*: N, capped where the design is slow per job."""
        n = self.n if variant == "checkpoint" else self.sleep_n
        if design.task_per_job or (design.task_per_key and keys == ALL_DISTINCT):
            n = min(n, self.cap)
        if variant == "sleep" and keys == 1 and design.ordered:
            n = min(n, self.serial_n)
        return n


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_on(backend: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Run *fn* in a fresh event loop of *backend*."""
    name, options = BACKENDS[backend]
    return anyio.run(fn, backend=name, backend_options=options)


def supports(design: Design, backend: str) -> bool:
    return design.backends is None or backend in design.backends


# -- throughput -----------------------------------------------------------------------------


@dataclass(slots=True)
class Cell:
    """The timing runs of one design on one workload and backend."""

    variant: Variant
    backend: str
    design: str
    keys: int
    n: int
    #: ok, n/a (not on this backend), incorrect (failed the checks), error (raised).
    status: str = "ok"
    note: str = ""
    #: The distinct keys of its N jobs.
    distinct_keys: int = 0
    seconds: list[float] = field(default_factory=list[float])
    #: What the bodies saw in the check run before the timing runs.
    checks: list[Check] = field(default_factory=list[Check])

    @property
    def rates(self) -> list[float]:
        return [self.n / s for s in self.seconds]

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.status == "ok" and self.seconds else None


def check_once(
    backend: str,
    design: Design,
    jobs: Sequence[JobSpec],
    variant: Variant,
    durations: Sequence[float] | None,
    limit: int,
) -> Check:
    """A check run: every body records its key and index; what the bodies saw."""
    recorder = Recorder(jobs, variant, durations)
    _run_once(backend, design, jobs, recorder.body(), limit)
    return recorder.check()


def time_once(
    backend: str,
    design: Design,
    jobs: Sequence[JobSpec],
    variant: Variant,
    durations: Sequence[float] | None,
    limit: int,
) -> float:
    """A timing run, with the workload's body and nothing else: its seconds."""
    return _run_once(backend, design, jobs, plain_body(variant, durations), limit)


def time_isolated(
    backend: str,
    design: Design,
    variant: Variant,
    keys: int,
    full_n: int,
    n: int,
    limit: int,
) -> float:
    """:func:`time_once` in a fresh interpreter (see :mod:`benchmarks.one_run`)."""
    command = [sys.executable, "-m", "benchmarks.one_run", backend, design.name, variant]
    command += [str(keys), str(full_n), str(n), str(limit)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=_ROOT, check=False)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the timing run exited with {done.returncode}: {last}")
    return float(done.stdout)


def _run_once(
    backend: str, design: Design, jobs: Sequence[JobSpec], body: Body, limit: int
) -> float:
    """Run *design* once in a fresh event loop; return its seconds."""
    run = design.run

    async def main() -> float:
        start = time.perf_counter()
        await run(jobs, body, limit)
        return time.perf_counter() - start

    # The harness's own objects (the jobs, the logs) are frozen out of the collector's
    # sight, so that only the design's garbage costs collection time.
    gc.collect()
    gc.freeze()
    try:
        seconds = run_on(backend, main)
    finally:
        gc.unfreeze()
    return seconds


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.perf_counter()

    def step(self, message: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        log(f"[{self.done:4}/{self.total}  {elapsed:7.1f} s] {message}")


def _plan(config: Config) -> list[tuple[Variant, str, int, list[Design]]]:
    plan: list[tuple[Variant, str, int, list[Design]]] = []
    for variant in config.variants:
        for backend in config.backends:
            for keys in config.keys:
                plan.append((variant, backend, keys, [DESIGNS[d] for d in config.designs]))
    return plan


def measure_throughput(config: Config) -> list[Cell]:
    """Time every design on every workload and backend, after a check run of each."""
    plan = _plan(config)
    total = sum(
        1 if backend in d.unordered_on else config.repeats + 1
        for _, backend, _, designs in plan
        for d in designs
        if supports(d, backend)
    )
    progress = Progress(total)
    cells: list[Cell] = []
    for variant, backend, keys, designs in plan:
        full_n = config.n if variant == "checkpoint" else config.sleep_n
        jobs = make_jobs(full_n, keys)
        durations = make_durations(full_n) if variant == "sleep" else None
        label = f"{variant} {backend} K={_keys_label(keys)}"
        group: list[tuple[Cell, Design]] = []
        for design in designs:
            n = config.n_for(design, variant, keys)
            cell = Cell(variant, backend, design.name, keys, n)
            cell.distinct_keys = distinct_keys(jobs[:n])
            cells.append(cell)
            if not supports(design, backend):
                cell.status = "n/a"
                cell.note = f"{design.name} runs on asyncio only"
                continue
            if backend in design.unordered_on:
                pilot = jobs[: min(n, config.pilot_n)]
                try:
                    check = check_once(backend, design, pilot, variant, durations, config.limit)
                    seen = check.describe()
                except Exception as exc:
                    seen = f"{type(exc).__name__}: {exc}"
                cell.status = "incorrect"
                cell.note = (
                    f"not ordered on {backend} in general, so never timed there; "
                    f"its check run: {seen}"
                )
                progress.step(f"{label} {design.name}: not timed, {cell.note}")
                continue
            group.append((cell, design))
            # Check the design on the very jobs it is timed on, before timing it. The
            # timing runs run the workload's body alone, with no recording in it.
            try:
                check = check_once(backend, design, jobs[:n], variant, durations, config.limit)
            except Exception as exc:
                cell.status, cell.note = "error", f"{type(exc).__name__}: {exc}"
                seen = cell.note
            else:
                cell.checks.append(check)
                seen = check.describe()
                if not check.ok(design.ordered):
                    cell.status, cell.note = "incorrect", f"check run: {seen}"
            progress.step(f"{label} {design.name}: check run of {n} jobs: {seen}")
        for repeat in range(config.repeats):
            # Rotate the order of the designs from one repeat to the next.
            shift = repeat % max(len(group), 1)
            for cell, design in group[shift:] + group[:shift]:
                if cell.status != "ok":
                    progress.step(f"{label} {design.name}: skipped ({cell.status})")
                    continue
                try:
                    seconds = time_isolated(
                        backend, design, variant, keys, full_n, cell.n, config.limit
                    )
                except Exception as exc:
                    cell.status, cell.note = "error", f"{type(exc).__name__}: {exc}"
                    cell.seconds.clear()
                    progress.step(f"{label} {design.name}: {cell.note}")
                    continue
                cell.seconds.append(seconds)
                progress.step(
                    f"{label} {design.name} n={cell.n} run {repeat + 1}: {seconds:.3f} s, "
                    f"{cell.n / seconds:,.0f} jobs/s"
                )
    return cells


def _keys_label(keys: int) -> str:
    """The short name of a key count in progress lines."""
    return "all" if keys == ALL_DISTINCT else f"{keys:,}"


# -- memory -----------------------------------------------------------------------------------


@dataclass(slots=True)
class MemoryResult:
    backend: str
    design: str
    keys: int
    n: int
    status: str = "ok"
    note: str = ""
    peak_bytes: int = 0
    retained_bytes: int = 0


def measure_memory_once(
    backend: str, design: Design, jobs: Sequence[JobSpec], limit: int
) -> tuple[int, int, int]:
    """Peak and retained traced memory of one untimed run: (peak, retained, jobs run)."""
    body, count = counting_body("checkpoint", None)
    run = design.run

    async def main() -> tuple[int, int]:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        await run(jobs, body, limit)
        peak = tracemalloc.get_traced_memory()[1] - base
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - base
        return peak, retained

    gc.collect()
    tracemalloc.start()
    try:
        peak, retained = run_on(backend, main)
    finally:
        tracemalloc.stop()
    return peak, retained, count[0]


def measure_memory(config: Config) -> list[MemoryResult]:
    results: list[MemoryResult] = []
    designs = [DESIGNS[d] for d in config.designs]
    total = len(config.backends) * len(config.keys) * len(designs)
    progress = Progress(total)
    for backend in config.backends:
        for keys in config.keys:
            jobs = make_jobs(config.memory_n, keys)
            for design in designs:
                result = MemoryResult(backend, design.name, keys, len(jobs))
                results.append(result)
                if not supports(design, backend) or backend in design.unordered_on:
                    result.status = "n/a"
                    progress.step(f"memory {backend} K={_keys_label(keys)} {design.name}: n/a")
                    continue
                try:
                    peak, retained, ran = measure_memory_once(backend, design, jobs, config.limit)
                except Exception as exc:
                    result.status, result.note = "error", f"{type(exc).__name__}: {exc}"
                else:
                    result.peak_bytes, result.retained_bytes = peak, retained
                    if ran != len(jobs):
                        result.status, result.note = "incorrect", f"ran {ran}/{len(jobs)}"
                progress.step(
                    f"memory {backend} K={_keys_label(keys)} {design.name}: "
                    f"peak {result.peak_bytes / len(jobs):,.0f} B/job, "
                    f"retained {result.retained_bytes:,} B {result.note}"
                )
    return results


# -- memory per idle lane -------------------------------------------------------------------


@dataclass(slots=True)
class IdleResult:
    backend: str
    lanes: int
    bytes_per_lane: float
    #: For contrast: a plain dict of anyio.Lock that is never cleaned up, per key.
    lock_dict_bytes_per_key: float


async def _nothing() -> None:
    pass


def measure_idle_lanes(backend: str, count: int, limit: int) -> IdleResult:
    """Traced memory per live idle lane: lanes that ran one job and linger."""
    warm_keys = list(range(-1, -limit - 1, -1))
    keys = [10**9 + i for i in range(count)]  # the key objects exist before measuring

    async def main() -> tuple[float, float]:
        async with KeyedLanes[int](limit=limit, idle_timeout=1e9) as lanes:
            # Warm up: the workers exist and are parked before the first snapshot.
            for key in warm_keys:
                lanes.submit_nowait(key, _nothing)
            await lanes.wait_idle()
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for key in keys:
                lanes.submit_nowait(key, _nothing)
            await lanes.wait_idle()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            stats = lanes.statistics()
            if stats.lanes != count + len(warm_keys) or stats.completed != stats.submitted:
                raise RuntimeError(f"unexpected state after the idle-lane run: {stats}")
            per_lane = (after - before) / count
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        locks = {key: anyio.Lock() for key in keys}
        per_lock = (tracemalloc.get_traced_memory()[0] - before) / count
        del locks
        return per_lane, per_lock

    gc.collect()
    tracemalloc.start()
    try:
        per_lane, per_lock = run_on(backend, main)
    finally:
        tracemalloc.stop()
    return IdleResult(backend, count, per_lane, per_lock)


# -- submit-to-start latency at a steady arrival rate ---------------------------------------


@dataclass(slots=True)
class LatencyResult:
    backend: str
    job_seconds: float
    capacity_jobs: int
    capacity: float
    load: float
    rate: float
    jobs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    #: How late the pacer woke for a batch, at worst (a loaded loop wakes it late).
    pacer_max_lag_ms: float
    #: Jobs submitted per wake of the pacer, on average.
    mean_batch: float


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@asynccontextmanager
async def keyed_lanes_dispatcher(limit: int) -> AsyncGenerator[Submit]:
    """:class:`KeyedLanes` with a limit: the dispatcher of the suite's latency runs."""
    async with KeyedLanes[int](limit=limit) as lanes:
        yield lanes.submit_nowait


def measure_latency(
    config: Config,
    backend: str,
    dispatcher: Dispatcher = keyed_lanes_dispatcher,
    capacity: float | None = None,
) -> LatencyResult:
    """Capacity of a dispatcher with fixed-duration jobs, then latency at a steady rate.

    Every job has a key of its own, so the latency is that of the lanes' scheduling and
    global limit, not of waiting behind earlier jobs of the same key. The dispatcher is
    :class:`KeyedLanes` unless another is given, and the rate a fraction of its own
    capacity unless *capacity* is given (see :mod:`benchmarks.floor`).
    """
    job_seconds = config.job_seconds
    limit = config.limit

    async def job() -> None:
        await anyio.sleep(job_seconds)

    async def capacity_run() -> float:
        start = time.perf_counter()
        async with dispatcher(limit) as submit:
            for key in range(config.capacity_jobs):
                submit(key, job)
        return config.capacity_jobs / (time.perf_counter() - start)

    if capacity is None:
        capacity = run_on(backend, capacity_run)
    rate = capacity * config.load
    total = max(1, round(rate * config.latency_seconds))
    # Time stamps from perf_counter: uvloop's clock ticks in whole milliseconds.
    submitted = [0.0] * total
    started = [0.0] * total
    lag = [0.0]
    wakes = [0]

    async def timed_job(index: int) -> None:
        started[index] = time.perf_counter()
        await anyio.sleep(job_seconds)

    async def latency_run() -> None:
        stamp = time.perf_counter
        async with dispatcher(limit) as submit:
            # The loop's clock paces; perf_counter measures (both are monotonic).
            loop_origin = anyio.current_time() + 0.01
            origin = stamp() + 0.01
            index = 0
            while index < total:
                # Sleep until the next arrival is due, then submit every job due by now.
                await anyio.sleep_until(loop_origin + index / rate)
                elapsed = stamp() - origin
                upto = min(total, math.floor(elapsed * rate) + 1)
                if upto <= index:
                    continue  # woken a hair early by a coarse clock
                lag[0] = max(lag[0], elapsed - index / rate)
                wakes[0] += 1
                while index < upto:
                    submitted[index] = stamp()
                    submit(index, timed_job, index)
                    index += 1

    # As in the timing runs: the harness's own objects are out of the collector's sight.
    gc.collect()
    gc.freeze()
    try:
        run_on(backend, latency_run)
    finally:
        gc.unfreeze()
    latencies = sorted(s - u for s, u in zip(started, submitted, strict=True))
    return LatencyResult(
        backend=backend,
        job_seconds=job_seconds,
        capacity_jobs=config.capacity_jobs,
        capacity=capacity,
        load=config.load,
        rate=rate,
        jobs=total,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p90_ms=percentile(latencies, 0.90) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        max_ms=latencies[-1] * 1e3,
        mean_ms=statistics.fmean(latencies) * 1e3,
        pacer_max_lag_ms=lag[0] * 1e3,
        mean_batch=total / max(wakes[0], 1),
    )


def keys_label(keys: int) -> str:
    """The name of a key count in tables: a number, or "all distinct"."""
    return "all distinct" if keys == ALL_DISTINCT else f"{keys:,}"
