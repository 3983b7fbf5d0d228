"""Where a KeyedLanes job's time goes: submitting, running, and the collector's share.

Runs the throughput workload (``submit_nowait`` every job, then leave the block) and
times the submitting loop apart from the whole, with the cyclic garbage collector on and
then off, next to the bare loop of bodies. The body is one checkpoint.

.. code-block:: console

   $ taskset -c 1 python -m benchmarks.phases asyncio all
   $ taskset -c 1 python -m benchmarks.phases uvloop 10000 200000

Arguments: the backend (``asyncio``, ``uvloop`` or ``trio``), the number of keys (or
``all`` for distinct keys) and N (200,000). Each figure is the median of 5 runs.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from typing import TYPE_CHECKING

from anyio.lowlevel import checkpoint

from anyio_keyq import KeyedLanes

from .designs import bare
from .harness import run_on
from .workload import ALL_DISTINCT, make_jobs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .designs import JobSpec


async def body(key: int, index: int) -> None:
    await checkpoint()


def lanes_once(backend: str, jobs: Sequence[JobSpec], collect: bool) -> tuple[float, float]:
    """One run: (seconds in all, seconds of the submitting loop)."""
    submitting = 0.0

    async def main() -> float:
        nonlocal submitting
        start = time.perf_counter()
        async with KeyedLanes[int](limit=100) as lanes:
            submit = lanes.submit_nowait
            for key, index in jobs:
                submit(key, body, key, index)
            submitting = time.perf_counter() - start
        return time.perf_counter() - start

    return _frozen(backend, main, collect), submitting


def bare_once(backend: str, jobs: Sequence[JobSpec]) -> float:
    async def main() -> float:
        start = time.perf_counter()
        await bare(jobs, body, 100)
        return time.perf_counter() - start

    return _frozen(backend, main, True)


def _frozen(backend: str, main: Callable[[], Awaitable[float]], collect: bool) -> float:
    gc.collect()
    gc.freeze()
    if not collect:
        gc.disable()
    try:
        return run_on(backend, main)
    finally:
        gc.enable()
        gc.unfreeze()


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    keys = ALL_DISTINCT if len(sys.argv) < 3 or sys.argv[2] == "all" else int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000
    jobs = make_jobs(n, keys)
    us = 1e6 / n
    for collect in (True, False):
        runs = [lanes_once(backend, jobs, collect) for _ in range(5)]
        total = statistics.median(t for t, _ in runs) * us
        submit = statistics.median(s for _, s in runs) * us
        label = "collector on " if collect else "collector off"
        print(
            f"{backend} K={'all' if keys == ALL_DISTINCT else keys} {label}: "
            f"{total:.2f} µs/job ({1e6 / total:,.0f} jobs/s), submitting {submit:.2f}, "
            f"running {total - submit:.2f}"
        )
    base = statistics.median(bare_once(backend, jobs) for _ in range(5)) * us
    print(f"bare loop of bodies: {base:.2f} µs/job ({1e6 / base:,.0f} jobs/s)")


if __name__ == "__main__":
    main()
