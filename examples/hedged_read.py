"""Read from three replicas, one of them stalled, without waiting for the stalled one.

Each read goes to the next replica in turn. Replica ``b`` is stuck in a long pause
(a garbage collection, a busy disk) and answers only after 150 ms; the others answer in
about 5 ms. With :func:`hedge`, a read that has no answer 20 ms after it started sends a
backup read to the next replica, and the first answer wins: the stalled read is
cancelled. A replica that fails outright costs even less: the backup starts at once.

The "replicas" are in-process fakes. Run it with ``python examples/hedged_read.py``.
"""

from __future__ import annotations

import itertools

import anyio

from anyio_keyq import hedge

DELAYS = (0.02, 0.06)  # backups 20 ms and 60 ms after the first read started


class Replica:
    def __init__(self, name: str, latency: float, *, down: bool = False) -> None:
        self.name = name
        self.latency = latency
        self.down = down
        self.in_flight = 0
        self.cancelled = 0

    async def get(self, key: str) -> str:
        self.in_flight += 1
        try:
            await anyio.sleep(self.latency)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        if self.down:
            raise ConnectionError(f"replica {self.name} is down")
        return f"{key}@{self.name}"


class Cluster:
    """Sends each read to the next replica in turn."""

    def __init__(self, *replicas: Replica) -> None:
        self.replicas = replicas
        self._turn = itertools.cycle(replicas)

    async def get(self, key: str) -> str:
        return await next(self._turn).get(key)


async def timed_read(cluster: Cluster, key: str, delays: tuple[float, ...]) -> tuple[str, float]:
    start = anyio.current_time()
    value = await hedge(cluster.get, key, delays=delays)
    return value, anyio.current_time() - start


async def main() -> None:
    a, b, c = Replica("a", 0.005), Replica("b", 0.15), Replica("c", 0.005)
    cluster = Cluster(a, b, c)

    # Without hedging (no delays: a single call), the read that lands on b waits for it.
    reads = [await timed_read(cluster, f"user:{n}", delays=()) for n in range(3)]
    assert [value for value, _ in reads] == ["user:0@a", "user:1@b", "user:2@c"]
    slowest = max(elapsed for _, elapsed in reads)
    assert slowest > 0.1, slowest  # some loops' timers fire a hair early: not >= 0.15

    # With hedging, the read that lands on b gets its answer from c, ~25 ms after it
    # started; b's read is cancelled, and finished, before hedge returns.
    reads = [await timed_read(cluster, f"user:{n}", delays=DELAYS) for n in range(3)]
    assert [value for value, _ in reads] == ["user:0@a", "user:1@c", "user:2@a"]
    slowest = max(elapsed for _, elapsed in reads)
    assert slowest < 0.1, slowest
    assert b.cancelled == 1
    assert a.in_flight == b.in_flight == c.in_flight == 0

    # A replica that is down fails fast, and the backup starts at once: this read does
    # not wait the second its backup is scheduled for.
    c.down, c.latency = True, 0.0
    value, elapsed = await timed_read(Cluster(c, a, b), "user:3", delays=(1.0,))
    assert value == "user:3@a"
    assert elapsed < 0.5, elapsed

    # When every replica fails, hedge raises all their errors, in the order they started.
    a.down = b.down = True
    a.latency = b.latency = 0.0
    errors: list[str] = []
    try:
        await hedge(Cluster(a, b, c).get, "user:4", delays=DELAYS)
    except ExceptionGroup as group:
        errors = [str(exc) for exc in group.exceptions]
    assert errors == ["replica a is down", "replica b is down", "replica c is down"]
    print("hedged reads: OK")


if __name__ == "__main__":
    anyio.run(main)
