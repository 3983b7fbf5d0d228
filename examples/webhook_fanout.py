"""Deliver webhooks in order per destination, under one cap on outgoing requests.

Each destination must receive its events in the order they happened, one request at a
time, so the lanes are keyed by destination URL. All outgoing requests of the
application, webhook or not, share one :class:`anyio.CapacityLimiter`; the lanes take
their permits from it too. A destination that hangs is cut off by the per-job timeout
and does not hold up the others; a destination that fails gets its error on the job's
handle, and its next events are still delivered.

The HTTP client is simulated with ``anyio.sleep``. Run it with
``python examples/webhook_fanout.py``.
"""

from __future__ import annotations

from collections import defaultdict

import anyio

from anyio_keyq import KeyedLanes

SHOP = "https://shop.example/hooks"
CRM = "https://crm.example/events"
SLOW = "https://slow.example/hook"  # hangs on order 2
FLAKY = "https://flaky.example/cb"  # refuses order 3
DESTINATIONS = (SHOP, CRM, SLOW, FLAKY)
ORDERS = (1, 2, 3, 4)
CAP = 3  # outgoing requests at once, for the whole application


class FakeHttp:
    """Records what each destination receives, and how many requests overlap."""

    def __init__(self) -> None:
        self.received: defaultdict[str, list[int]] = defaultdict(list)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.busy: set[str] = set()

    async def post(self, url: str, order: int) -> int:
        assert url not in self.busy, f"two requests to {url} at once"
        self.busy.add(url)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            self.received[url].append(order)
            if url == SLOW and order == 2:
                await anyio.sleep(10)  # never answers: the timeout cuts it off
            await anyio.sleep(0.005 + 0.002 * (order % 3))
            if url == FLAKY and order == 3:
                raise ConnectionRefusedError(f"{url} refused order {order}")
            return 200
        finally:
            self.in_flight -= 1
            self.busy.discard(url)


async def report_metrics(http: FakeHttp, outbound: anyio.CapacityLimiter) -> None:
    """Other outgoing requests of the application, under the same cap."""
    for order in ORDERS:
        async with outbound:
            await http.post("https://metrics.example/push", order)


async def main() -> None:
    http = FakeHttp()
    outbound = anyio.CapacityLimiter(CAP)
    outcomes: dict[str, list[str]] = {url: [] for url in DESTINATIONS}
    async with (
        anyio.create_task_group() as tg,
        KeyedLanes[str](limit=outbound, timeout=0.5) as lanes,
    ):
        tg.start_soon(report_metrics, http, outbound)
        # Events arrive interleaved across destinations: order 1 everywhere, then 2...
        deliveries = [
            (url, await lanes.submit(url, http.post, url, order))
            for order in ORDERS
            for url in DESTINATIONS
        ]
        for url, job in deliveries:
            try:
                status = await job
            except TimeoutError:
                outcomes[url].append("timed out")
            except ConnectionError:
                outcomes[url].append("refused")
            else:
                outcomes[url].append(f"HTTP {status}")
    stats = lanes.statistics()

    for url, results in outcomes.items():
        print(f"{url:28} {', '.join(results)}")
    print(
        f"{stats.completed} delivered, {stats.failed} failed, {stats.timed_out} timed out; "
        f"at most {http.peak_in_flight} requests at once"
    )

    # Every destination saw its events in order, including after a failure or timeout.
    for url in DESTINATIONS:
        assert http.received[url] == list(ORDERS)
    assert outcomes[SLOW][1] == "timed out"
    assert outcomes[FLAKY][2] == "refused"
    assert (stats.completed, stats.failed, stats.timed_out) == (14, 1, 1)
    # The cap held for webhooks and metrics together.
    assert http.peak_in_flight <= CAP
    assert outbound.borrowed_tokens == 0


if __name__ == "__main__":
    anyio.run(main)
