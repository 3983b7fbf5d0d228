"""Find how much load a service takes, without knowing its capacity.

A service serves at most 12 requests at once and refuses the others with a 503
("overloaded"). Thirty workers send it 20 requests each, one after the other, each
request through an :class:`AdaptiveLimiter` that starts at 4. The limiter sees only the
outcomes: a refusal, raised as an exception inside ``async with limiter.acquire()``,
is a failure and cuts the limit in half; successes raise it again, slowly. The limit
climbs to the capacity and then saws up and down just below it, and the service
refuses one or two requests in a hundred instead of most of them.

What the limiter does depends on how the requests end, not on how long they take, so
the figures come out about the same on a busy machine as on an idle one.

The service is an in-process fake whose requests take 5 ms. Run it with
``python examples/adaptive_downstream.py``.
"""

from __future__ import annotations

import anyio

from anyio_keyq import AdaptiveLimiter

CAPACITY = 12
WORKERS, REQUESTS = 30, 20  # 30 workers send 20 requests each


class Overloaded(Exception):
    """HTTP 503: the service is busy."""


class FakeService:
    def __init__(self) -> None:
        self.in_flight = 0
        self.served = 0
        self.refused = 0

    async def call(self) -> str:
        if self.in_flight >= CAPACITY:
            self.refused += 1
            await anyio.sleep(0.001)
            raise Overloaded("503 Service Unavailable")
        self.in_flight += 1
        try:
            await anyio.sleep(0.005)
        finally:
            self.in_flight -= 1
        self.served += 1
        return "200 OK"


async def main() -> None:
    service = FakeService()
    limiter = AdaptiveLimiter(4, max=100)

    async def worker() -> None:
        for _ in range(REQUESTS):
            try:
                async with limiter.acquire():  # the exception counts as a failure
                    await service.call()
            except Overloaded:
                await anyio.sleep(0.001)  # a real client would back off here

    async with anyio.create_task_group() as tg:
        for _ in range(WORKERS):
            tg.start_soon(worker)

    stats = limiter.statistics()
    peak = max(limit for _, limit in limiter.history)
    print(f"served {service.served}, refused {service.refused}")
    print(f"limit now {limiter.limit:.1f}, at most {peak:.1f}, cut {stats.decreases} times")
    assert stats.holders == stats.waiting == 0
    assert service.served + service.refused == WORKERS * REQUESTS
    assert stats.succeeded == service.served
    assert stats.failed == service.refused
    assert peak >= CAPACITY - 1  # it found the capacity...
    assert service.refused < service.served / 10  # ...and refusals stayed rare


if __name__ == "__main__":
    anyio.run(main)
