"""Deliver webhooks in order, 10 a second per destination, at a concurrency found live.

A webhook service sends every event to each destination that subscribed to it. Each
destination must get its events in order, and at most 10 requests a second. The
destinations are endpoints of one provider, whose capacity nobody told us: beyond some
number of requests in flight, it answers ``429 Too Many Requests``.

* :class:`~anyio_keyq.KeyedLanes` keyed by destination keep each destination's events in
  order, one request at a time.
* ``rate=RateLimiter(10, per=1.0, burst=2)`` gives every destination a token bucket of
  its own: 10 requests a second, at most 2 back to back.
* ``limit=AdaptiveLimiter(40, max=500)`` caps the requests in flight at 500, and finds
  the right limit below that from the outcomes of the jobs: a job that raises is a
  failure, and cuts the limit.

Each job sends the oldest undelivered event of its destination. On a 429 the event stays
where it is: the job queues one more job in its own lane to send it again, and raises
:exc:`TooManyRequests`, so that the limiter counts a failure. The order holds, since the
jobs of a destination run one at a time and each one sends the head of the outbox.

The downstream is a real HTTP/1.1 server on 127.0.0.1, served by anyio itself, and the
client speaks HTTP over :func:`anyio.connect_tcp`: no other dependency. Run it with
``python examples/webhooks.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from typing import TypedDict

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from anyio_keyq import AdaptiveLimiter, Job, KeyedLanes, RateLimiter

DESTINATIONS = [f"/hooks/shop-{n}" for n in range(16)]
EVENTS = 5  # events sent to every destination
RATE, BURST = 10, 2  # requests per second per destination, and back to back
GUESS, CAP = 40, 500  # the adaptive limit's start, and the global cap
OVERLOAD = 6  # the downstream answers 429 beyond this many requests in flight


class Event(TypedDict):
    id: int
    type: str


class Downstream:
    """The webhook endpoints: 40 ms per request, 429 when overloaded."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.refused = 0
        self.arrivals: defaultdict[str, list[float]] = defaultdict(list)  # every attempt
        self.accepted: defaultdict[str, list[int]] = defaultdict(list)  # event ids, 200 OK

    async def handle(self, stream: SocketStream) -> None:
        """Serve the requests of one connection (HTTP/1.1 keeps it open) until it closes."""
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            while True:
                try:
                    head = await reader.receive_until(b"\r\n\r\n", 65536)
                except anyio.IncompleteRead:
                    return  # the client closed the connection
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                _method, destination, _version = request_line.split(" ")
                headers = dict(line.lower().split(": ", 1) for line in header_lines)
                body = await reader.receive_exactly(int(headers["content-length"]))
                status = await self.respond(destination, json.loads(body))
                await stream.send(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())

    async def respond(self, destination: str, event: Event) -> str:
        self.arrivals[destination].append(anyio.current_time())
        if self.in_flight >= OVERLOAD:
            self.refused += 1
            return "429 Too Many Requests"
        self.in_flight += 1
        try:
            await anyio.sleep(0.04)
        finally:
            self.in_flight -= 1
        self.accepted[destination].append(event["id"])
        return "200 OK"


class Client:
    """POST JSON over HTTP/1.1, with one connection kept open per destination.

    The lanes send one request per destination at a time, so one connection each is
    enough. A connection is reused only after a complete exchange: one left in an
    unknown state, by an error or a cancellation, is closed.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: dict[str, tuple[SocketStream, BufferedByteReceiveStream]] = {}

    async def post(self, destination: str, event: Event) -> int:
        """POST *event* to *destination*, and return the HTTP status code."""
        body = json.dumps(event).encode()
        connection = self.idle.pop(destination, None)
        if connection is None:
            stream = await anyio.connect_tcp("127.0.0.1", self.port)
            connection = (stream, BufferedByteReceiveStream(stream))
        stream, reader = connection
        try:
            await stream.send(
                f"POST {destination} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await reader.receive_until(b"\r\n\r\n", 65536)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        self.idle[destination] = connection
        return int(head.split(b" ", 2)[1])

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for stream, _ in self.idle.values():
                await stream.aclose()
        self.idle.clear()


class TooManyRequests(Exception):
    """The downstream answered 429: the event is sent again later."""


class Dispatcher:
    """An outbox per destination; the jobs of a destination's lane send its head."""

    def __init__(self, lanes: KeyedLanes[str], client: Client) -> None:
        self.lanes = lanes
        self.client = client
        self.outbox: defaultdict[str, deque[Event]] = defaultdict(deque)
        self.jobs: list[Job[None]] = []

    async def publish(self, event: Event) -> None:
        for destination in DESTINATIONS:
            self.outbox[destination].append(event)
            self.jobs.append(await self.lanes.submit(destination, self.send_next, destination))

    async def send_next(self, destination: str) -> None:
        event = self.outbox[destination][0]
        status = await self.client.post(destination, event)
        if status == 429:
            # Once more later: one more job in this lane, behind those already queued.
            self.jobs.append(self.lanes.submit_nowait(destination, self.send_next, destination))
            raise TooManyRequests(f"{destination}: 429 on event {event['id']}")
        assert status == 200
        self.outbox[destination].popleft()


async def deliver(port: int, downstream: Downstream) -> None:
    limiter = AdaptiveLimiter(GUESS, max=CAP)
    client = Client(port)
    start = anyio.current_time()
    try:
        async with KeyedLanes[str](
            limit=limiter, rate=RateLimiter(RATE, per=1.0, burst=BURST)
        ) as lanes:
            dispatcher = Dispatcher(lanes, client)
            for n in range(EVENTS):
                await dispatcher.publish({"id": n, "type": "order.paid"})
            # Leaving the block closes the lanes, which would then refuse the retries:
            # wait until no job is left first.
            await lanes.wait_idle()
    finally:
        await client.aclose()
    elapsed = anyio.current_time() - start

    failures = [job.exception() for job in dispatcher.jobs]  # retrieves every outcome
    retries = sum(isinstance(exc, TooManyRequests) for exc in failures)
    stats = limiter.statistics()
    cuts: list[str] = []
    previous = float(GUESS)
    for _, limit in limiter.history:
        if limit < previous:
            cuts.append(f"{previous:.1f} -> {limit:.1f}")
        previous = limit
    print(f"{len(DESTINATIONS) * EVENTS} events delivered in {elapsed:.2f} s, {retries} retries")
    print(f"limit cut {len(cuts)} times ({', '.join(cuts)}), now {limiter.limit:.1f}")

    # Every destination got every event once, in order.
    for destination in DESTINATIONS:
        assert downstream.accepted[destination] == list(range(EVENTS))
    # Every 429 reached the limiter as a failure, and was sent again.
    assert retries == downstream.refused == stats.failed
    assert all(exc is None or isinstance(exc, TooManyRequests) for exc in failures)
    # The rate per destination held: after the burst, one request every 1/RATE s.
    for arrivals in downstream.arrivals.values():
        for k, at in enumerate(arrivals[BURST:], start=1):
            assert at >= start + k / RATE
    # The limit came down from the guess, and saws around the downstream's capacity.
    assert stats.decreases >= 2
    assert OVERLOAD / 2 <= limiter.limit < 2 * OVERLOAD


async def main() -> None:
    downstream = Downstream()
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as server,
    ):
        server.start_soon(listener.serve, downstream.handle)
        await deliver(listener.extra(SocketAttribute.local_port), downstream)
        server.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
