"""A fixed workload to count KeyedLanes' instructions per job under callgrind.

Wall-clock rates on a shared machine move by 10 % from run to run; instruction counts
do not. Run the workload twice, with two values of N, under callgrind, and divide the
difference of the totals by the difference of the job counts (twice N: a warm-up run
and a measured run):

.. code-block:: console

   $ for n in 20000 40000; do
   >   valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
   >     python -m benchmarks.instructions asyncio all $n 2>&1 | grep Collected
   > done

To compare two versions of the package, point ``PYTHONPATH`` at each checkout.
Arguments: the backend (``asyncio``, ``uvloop`` or ``trio``), the number of keys (or
``all`` for distinct keys) and N.
"""

from __future__ import annotations

import gc
import sys

import anyio
from anyio.lowlevel import checkpoint

from anyio_keyq import KeyedLanes


async def body(key: int, i: int) -> None:
    await checkpoint()


async def run_lanes(n: int, keys: int) -> None:
    async with KeyedLanes[int](limit=100) as lanes:
        submit = lanes.submit_nowait
        for i in range(n):
            submit(i % keys, body, i % keys, i)


async def main(n: int, keys: int) -> None:
    await run_lanes(n, keys)  # warm-up: imports, caches, the first workers
    gc.collect()
    gc.freeze()
    await run_lanes(n, keys)


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 20_000
    keys = n if len(sys.argv) < 3 or sys.argv[2] == "all" else int(sys.argv[2])
    anyio.run(
        main,
        n,
        keys,
        backend="trio" if backend == "trio" else "asyncio",
        backend_options={"use_uvloop": True} if backend == "uvloop" else {},
    )
