"""Fetch from four hosts at once: lanes per host, retries, breakers, hedges and pools.

Four small servers on 127.0.0.1 stand for four hosts of an API, each answering one
line per request on a TCP connection:

* ``fast`` answers at once;
* ``flaky`` answers "busy" to one request in four, with a retry-after hint;
* ``slow-tail`` stalls one request in eight for a second: the tail of its latency;
* ``down`` refuses connections.

The client fetches 24 paths from each host. Each host is a lane of
:class:`~anyio_keyq.KeyedLanes` (two requests at a time per host, eight in all), with

* a :class:`~anyio_keyq.Retry` policy with full jitter for the "busy" answers and the
  refused connections (the "retry after" hint of a busy answer sets its delay);
* a :class:`~anyio_keyq.CircuitBreaker` per host: after three failures in a row, the
  requests for ``down`` fail at once, without a connection attempt, and go to the
  dead-letter; a request refused that way is not retried (the hint of ``CircuitOpen``
  would have it wait for the next trial: give it attempts for that if the host matters);
* hedged reads (:func:`~anyio_keyq.hedge`): a request that has not answered in 50 ms
  gets a backup on another connection, and the first answer wins;
* a :class:`~anyio_keyq.Pool` of at most three connections per host; a connection whose
  request was abandoned (the loser of a hedge) is closed, not reused.

Run it with ``python examples/resilient_fetch.py``.
"""

from __future__ import annotations

import random
from collections import Counter
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import Listener, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from anyio_keyq import (
    Backoff,
    CircuitBreaker,
    DeadLetter,
    Job,
    KeyedLanes,
    Pool,
    Retry,
    hedge,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

PATHS = 24
STALL = 1.0  # seconds a slow-tail request stalls


class Busy(Exception):
    """The host is busy: try again after ``retry_after`` seconds."""

    def __init__(self, host: str, retry_after: float) -> None:
        super().__init__(f"{host} is busy")
        self.retry_after = retry_after


class Host:
    """A server answering ``OK <path>``, ``BUSY <seconds>``, or nothing for a while."""

    def __init__(self, name: str, busy: float = 0.0, stall: float = 0.0) -> None:
        self.name = name
        self.busy, self.stall = busy, stall
        self.random = random.Random(name)
        self.requests = 0

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            lines = BufferedByteReceiveStream(stream)
            while True:
                try:
                    path = (await lines.receive_until(b"\n", 1024)).decode()
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    return
                self.requests += 1
                draw = self.random.random()
                if draw < self.stall:
                    await anyio.sleep(STALL)
                reply = "BUSY 0.01\n" if draw > 1 - self.busy else f"OK {path}\n"
                await stream.send(reply.encode())


class Client:
    """Requests over pooled connections, one pool per host."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.pools: dict[str, Pool[SocketStream]] = {}
        self.slowest: dict[str, float] = {}  # the longest fetch per host, in seconds

    async def open(self, stack: AsyncExitStack) -> None:
        for host, port in self.ports.items():
            connect = partial(self.connect, port)
            self.pools[host] = await stack.enter_async_context(Pool(connect, max_size=3))

    async def connect(self, port: int) -> SocketStream:
        return await anyio.connect_tcp("127.0.0.1", port)

    async def get(self, host: str, path: str) -> str:
        async with self.pools[host].acquire() as stream:
            await stream.send(f"{path}\n".encode())
            # One answer per request: nothing is read past it.
            reply = await BufferedByteReceiveStream(stream).receive_until(b"\n", 1024)
        status, _, rest = reply.decode().partition(" ")
        if status == "BUSY":
            raise Busy(host, float(rest))
        return rest

    async def fetch(self, host: str, path: str) -> str:
        start = anyio.current_time()
        page = await hedge(self.get, host, path, delays=(0.05,))
        elapsed = anyio.current_time() - start
        self.slowest[host] = max(self.slowest.get(host, 0.0), elapsed)
        return page


async def serve(
    listener: Listener[SocketStream], handler: Callable[[SocketStream], Awaitable[None]]
) -> None:
    async with listener:
        await listener.serve(handler)


def transient(exc: Exception) -> bool:
    """Worth another try: busy, or no connection (for every call of a failed hedge)."""
    if isinstance(exc, ExceptionGroup):
        group = cast("ExceptionGroup[Exception]", exc)
        return all(transient(inner) for inner in group.exceptions)
    return isinstance(exc, Busy | OSError)


async def refused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()
    return port


async def main() -> None:
    hosts = [Host("fast"), Host("flaky", busy=0.25), Host("slow-tail", stall=0.125)]
    policy = Retry(
        attempts=4,
        backoff=Backoff(base=0.01, cap=0.1),
        jitter="full",
        retry_on=transient,
    )
    letters: list[DeadLetter[str]] = []
    ports = {"down": await refused_port()}
    jobs: dict[tuple[str, str], Job[Any]] = {}
    client = Client(ports)
    lanes = KeyedLanes[str](
        limit=8,
        per_key=2,
        retry=policy,
        breaker=CircuitBreaker(failure_threshold=3, recovery_time=10),
        dead_letter=letters.append,
    )
    async with anyio.create_task_group() as servers, AsyncExitStack() as stack:
        for host in hosts:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            ports[host.name] = listener.extra(SocketAttribute.local_port)
            servers.start_soon(serve, listener, host.handle)
        await client.open(stack)

        async with lanes:
            for path in (f"/item/{i}" for i in range(PATHS)):
                for name in ports:
                    jobs[name, path] = lanes.submit_nowait(name, client.fetch, name, path)
        servers.cancel_scope.cancel()

    fetched = Counter(host for (host, _), job in jobs.items() if job.exception() is None)
    dead = Counter(letter.key for letter in letters)
    for name in ports:
        print(f"{name:>9}: {fetched[name]:2} fetched, {dead[name]:2} dead letters")
    stats = lanes.statistics()
    print(f"retried {stats.retried} requests; stalled ones were hedged")
    assert fetched == {"fast": PATHS, "flaky": PATHS, "slow-tail": PATHS}
    assert dead == {"down": PATHS}
    # Without hedges, three of the slow-tail fetches would wait out a stall.
    assert client.slowest["slow-tail"] < STALL, client.slowest


if __name__ == "__main__":
    anyio.run(main)
