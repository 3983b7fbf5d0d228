"""Serve interactive requests first, without starving the background work.

One slot (a GPU, an API that takes one call at a time) is shared by background jobs,
priority 5, and interactive requests, priority 0: a :class:`~anyio_keyq.PriorityLimiter`
serves the lowest priority first. Interactive requests keep arriving, so strict
priorities alone could leave the background jobs waiting for a long time. With
``aging=0.005``, a waiting job gains one priority level every 5 ms: after 25 ms, a
background job ranks like an interactive request arriving at that moment, and is served
before the ones that arrive later.

The work is simulated with ``anyio.sleep``. Run it with
``python examples/priority_requests.py``.
"""

from __future__ import annotations

import anyio

from anyio_keyq import PriorityLimiter

INTERACTIVE, BACKGROUND = 0, 5


async def main() -> None:
    limiter = PriorityLimiter(1, aging=0.005)
    served: list[str] = []

    async def request(name: str, priority: int, seconds: float) -> None:
        async with limiter.acquire(priority=priority):
            served.append(name)
            await anyio.sleep(seconds)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(request, f"background-{i}", BACKGROUND, 0.02)
        await anyio.sleep(0.002)
        # An interactive request every 4 ms, for 100 ms.
        for i in range(25):
            tg.start_soon(request, f"interactive-{i}", INTERACTIVE, 0.005)
            await anyio.sleep(0.004)

    print(", ".join(served[:10]), "...")
    last_background = max(served.index(f"background-{i}") for i in range(3))
    print(f"the last background job was served at position {last_background + 1} of {len(served)}")

    # The interactive requests went before the background jobs that were waiting...
    assert served[0].startswith("background-")
    assert served[1] == "interactive-0"
    # ...but aging got every background job served while interactive requests still
    # arrived and waited.
    assert last_background < len(served) - 10
    assert limiter.statistics().waiting == 0


if __name__ == "__main__":
    anyio.run(main)
