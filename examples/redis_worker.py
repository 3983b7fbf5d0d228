"""Keyed lanes on Redis: two workers share one queue; each account's events stay in order.

Start a Redis server, then run::

    KEYQ_REDIS_URL=redis://localhost:6379 python examples/redis_worker.py

The two workers here run in one process to keep the example short; in production each
is a process of its own, on any machine, for example
``python -m anyio_keyq.redis worker myapp.jobs:HANDLERS --queue accounts``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio

from anyio_keyq.redis import RedisJob, RedisQueue, RedisWorker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

URL = os.environ.get("KEYQ_REDIS_URL", "redis://localhost:6379")


class Ledger:
    """A downstream store that refuses the writes of a worker whose lease has ended.

    It keeps the largest fencing token seen per account: a worker that froze (a long
    garbage collection, a paused VM) and lost its lease still holds an older, smaller
    token, so its late write is refused instead of overwriting newer data.
    """

    def __init__(self) -> None:
        self.fences: dict[str, int] = {}
        self.history: dict[str, list[int]] = {}

    def apply(self, account: str, amount: int, fence: int) -> bool:
        if fence < self.fences.get(account, 0):
            return False
        self.fences[account] = fence
        self.history.setdefault(account, []).append(amount)
        return True


def make_handlers(
    ledger: Ledger, expected: int, all_done: anyio.Event
) -> dict[str, Callable[[RedisJob], Awaitable[None]]]:
    done = 0

    async def apply(job: RedisJob) -> None:
        nonlocal done
        await anyio.sleep(0.01)  # a call to the bank, say
        if not ledger.apply(job.key, job.payload["amount"], job.fence):
            raise RuntimeError(f"stale lease on {job.key}: another worker took it over")
        done += 1
        if done == expected:
            all_done.set()

    return {"apply": apply}


async def main() -> None:
    amounts = [100, -30, 250, -75, 40, -10, 5, 60, -20]
    events = [(f"account-{i % 3}", "apply", {"amount": n}) for i, n in enumerate(amounts)]
    ledger = Ledger()
    all_done = anyio.Event()
    handlers = make_handlers(ledger, len(events), all_done)

    async with RedisQueue(URL, "accounts-example") as queue:
        await queue.enqueue_many(events)
        async with (
            RedisWorker(URL, "accounts-example", handlers, concurrency=2) as worker1,
            RedisWorker(URL, "accounts-example", handlers, concurrency=2) as worker2,
            anyio.create_task_group() as tg,
        ):
            await tg.start(worker1.serve)
            await tg.start(worker2.serve)
            await all_done.wait()
            worker1.stop()
            worker2.stop()
        assert await queue.lanes() == 0

    for account, history in sorted(ledger.history.items()):
        print(f"{account}: {history} -> {sum(history)}")
    # Each account's events were applied in the order they were enqueued.
    for i in range(3):
        assert ledger.history[f"account-{i}"] == amounts[i::3]


if __name__ == "__main__":
    anyio.run(main)
