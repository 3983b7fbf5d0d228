"""Share a database between cheap lookups and an expensive report, by weight.

The database takes about 10 units of load at once: a lookup costs 1, a report 6. A
:class:`~anyio_keyq.WeightedLimiter` of 10 lets ten lookups run together, or the report
and four lookups, and serves the requests in the order they arrive: once the report
waits, the lookups that arrive after it wait behind it, even when a token is free. A
steady stream of lookups can therefore never starve the report.

The database is simulated with ``anyio.sleep``. Run it with
``python examples/database_budget.py``.
"""

from __future__ import annotations

import anyio

from anyio_keyq import WeightedLimiter

BUDGET = 10  # units of load the database takes at once
LOOKUP, REPORT = 1, 6  # what each query costs


class Database:
    """Records the load, and what had finished when the report started."""

    def __init__(self) -> None:
        self.load = 0
        self.peak_load = 0
        self.finished: list[str] = []
        self.finished_before_report: list[str] = []

    async def query(self, name: str, cost: int, seconds: float) -> None:
        self.load += cost
        self.peak_load = max(self.peak_load, self.load)
        if name == "report":
            self.finished_before_report = list(self.finished)
        await anyio.sleep(seconds)
        self.load -= cost
        self.finished.append(name)


async def main() -> None:
    database = Database()
    limiter = WeightedLimiter(BUDGET)
    arrived: list[str] = []

    async def query(name: str, cost: int, seconds: float) -> None:
        arrived.append(name)
        async with limiter.acquire(cost):
            await database.query(name, cost, seconds)

    async with anyio.create_task_group() as tg:
        # A lookup every 2 ms, each taking 10 ms: about five at once, all the time.
        for i in range(40):
            if i == 10:
                tg.start_soon(query, "report", REPORT, 0.02)
            else:
                tg.start_soon(query, f"lookup-{i}", LOOKUP, 0.01)
            await anyio.sleep(0.002)

    late = arrived[arrived.index("report") + 1 :]
    overtaken_by = [name for name in database.finished_before_report if name in late]
    print(f"peak load {database.peak_load} of {BUDGET}")
    print(f"the report started after {len(database.finished_before_report)} lookups had")
    print(f"finished, none of them among the {len(late)} that arrived after it")

    assert database.peak_load <= BUDGET
    assert overtaken_by == []
    assert limiter.statistics().borrowed_tokens == 0


if __name__ == "__main__":
    anyio.run(main)
