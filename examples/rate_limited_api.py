"""Call an API that allows 100 requests a second, in bursts of at most 10.

Forty tasks fetch 60 records between them. A :class:`RateLimiter` paces the requests:
the first 10 start at once (the burst), then one every 10 ms, first come, first served.
A :class:`anyio.CapacityLimiter` caps how many are in flight at once, which is a
different limit: the rate limiter bounds how many requests *start* per second, the
capacity limiter how many *run* at once.

The "API" is an in-process fake that records when each request arrives. Run it with
``python examples/rate_limited_api.py``.
"""

from __future__ import annotations

import anyio

from anyio_keyq import RateLimiter

RATE = 100  # requests per second
BURST = 10
RECORDS = 60


class FakeApi:
    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    async def get(self, record: int) -> dict[str, int]:
        self.arrivals.append(anyio.current_time())
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.02)
        finally:
            self.in_flight -= 1
        return {"id": record}


async def main() -> None:
    api = FakeApi()
    rate = RateLimiter(RATE, per=1.0, burst=BURST)
    concurrency = anyio.CapacityLimiter(5)
    todo = list(range(RECORDS))
    fetched: list[dict[str, int]] = []

    async def worker() -> None:
        while todo:
            record = todo.pop(0)
            async with concurrency:
                # The token last, just before the request: a request held up after its
                # token would let the next ones bunch up behind it.
                await rate.acquire()  # waits for a token, in turn with the others
                fetched.append(await api.get(record))

    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for _ in range(40):
            tg.start_soon(worker)
    elapsed = anyio.current_time() - start

    print(f"{len(fetched)} records in {elapsed:.2f} s, {rate.statistics().acquired} tokens")
    print(f"at most {api.peak_in_flight} requests in flight")
    assert sorted(r["id"] for r in fetched) == list(range(RECORDS))
    assert api.peak_in_flight <= 5
    # 10 at once, then 50 more at 100 a second: half a second at least.
    assert elapsed >= (RECORDS - BURST) / RATE
    # Never more than BURST + RATE requests within any second.
    arrivals = api.arrivals
    for i, t in enumerate(arrivals):
        assert sum(1 for u in arrivals[i:] if u < t + 1.0) <= BURST + RATE


if __name__ == "__main__":
    anyio.run(main)
