"""Share a database between tenants: in order per tenant, by weight, interactive first.

The database takes 8 units of load at once. Every tenant's queries must run in the order
they were sent (its writes depend on each other), so the lanes are keyed by tenant. A
nightly report costs 4 units and is batch work, priority 1; an interactive query costs
1 unit and has priority 0, which goes first.

When two reports hold all 8 units, four more reports wait, and then interactive queries
arrive: when the first report ends, they start before the waiting reports. Priority orders
the *lanes* waiting for units, never the jobs of one tenant: the query of a tenant whose
report is still queued waits behind that report, and then goes before the reports still
waiting.

The database is simulated with ``anyio.sleep``. Run it with
``python examples/tenant_queries.py``.
"""

from __future__ import annotations

import anyio

from anyio_keyq import KeyedLanes

BUDGET = 8  # units of load the database takes at once
REPORT, QUERY = 4, 1  # what each costs
BATCH, INTERACTIVE = 1, 0  # priorities: lower goes first


class Database:
    """Records the load, and the order in which the queries start."""

    def __init__(self) -> None:
        self.load = 0
        self.peak_load = 0
        self.started: list[str] = []

    async def run(self, name: str, cost: int, seconds: float) -> None:
        self.started.append(name)
        self.load += cost
        self.peak_load = max(self.peak_load, self.load)
        await anyio.sleep(seconds)
        self.load -= cost


async def main() -> None:
    database = Database()
    async with KeyedLanes[str](limit=BUDGET) as lanes:
        # The nightly reports: a and b take the 8 units, c to f wait. a's report ends
        # long before b's, so that the interactive queries find 4 units free, not 8.
        for tenant in "abcdef":
            seconds = {"a": 0.02, "b": 0.25}.get(tenant, 0.04)
            lanes.submit_nowait(
                tenant,
                database.run,
                f"report {tenant}",
                REPORT,
                seconds,
                weight=REPORT,
                priority=BATCH,
            )
        # Interactive queries arrive while the reports wait.
        for tenant in "cghij":
            lanes.submit_nowait(
                tenant, database.run, f"query {tenant}", QUERY, 0.005, priority=INTERACTIVE
            )
    started = database.started
    print(f"peak load {database.peak_load} of {BUDGET}; started: {', '.join(started)}")

    assert database.peak_load <= BUDGET
    assert sorted(started[:2]) == ["report a", "report b"]
    # The interactive queries of g-j overtook the reports that were waiting...
    assert sorted(started[2:6]) == ["query g", "query h", "query i", "query j"]
    # ...but not the report of their own tenant: c's query comes after c's report.
    assert started.index("query c") > started.index("report c")
    stats = lanes.statistics()
    assert stats.completed == stats.submitted == 11


if __name__ == "__main__":
    anyio.run(main)
