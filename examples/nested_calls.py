"""Call into another lane from inside a job, even when every permit is taken.

A ledger keeps one lane per account, so that the operations of an account never
overlap. A transfer runs in the lane of the account it debits, and credits the other
account through that account's lane: a nested call. The lanes allow a single job at a
time (``limit=1``), so the transfer holds the only permit while it waits; it lends that
permit to the lane it waits for, and the nested job runs on it instead of waiting
forever.

A job that waits for its own lane, on the other hand, would wait forever: the lanes
raise :exc:`~anyio_keyq.LaneDeadlock` instead. Queuing a follow-up job in its own lane
with ``submit_nowait()``, without awaiting it, is fine.

Run it with ``python examples/nested_calls.py``.
"""

from __future__ import annotations

import anyio

from anyio_keyq import Job, KeyedLanes, LaneDeadlock


class Ledger:
    def __init__(self, lanes: KeyedLanes[str], balances: dict[str, int]) -> None:
        self.lanes = lanes
        self.balances = balances
        self.audit: list[str] = []

    async def deposit(self, account: str, amount: int) -> int:
        await anyio.sleep(0.001)  # the database round trip
        self.balances[account] += amount
        return self.balances[account]

    async def transfer(self, source: str, target: str, amount: int) -> int:
        """Runs in the lane of *source*; credits *target* in the lane of *target*."""
        if self.balances[source] < amount:
            raise ValueError(f"{source} cannot pay {amount}")
        self.balances[source] -= amount
        # A nested call: waits for a job of another lane, on this job's permit.
        return await self.lanes.run(target, self.deposit, target, amount)

    async def close_account(self, account: str) -> Job[None]:
        """Runs in the lane of *account*; queues the audit after everything queued so far."""
        try:
            # Waiting for a job of our own lane can never end: refused at once.
            await self.lanes.run(account, self.deposit, account, 0)
        except LaneDeadlock as exc:
            print(f"refused: {type(exc).__name__} on {exc.key!r}")
        # Queuing one without waiting for it is fine: it runs after this job.
        return self.lanes.submit_nowait(account, self.write_audit, account)

    async def write_audit(self, account: str) -> None:
        self.audit.append(f"{account} closed with {self.balances[account]}")


async def main() -> None:
    lanes = KeyedLanes[str](limit=1)
    ledger = Ledger(lanes, {"alice": 100, "bob": 20, "carol": 0})
    async with lanes:
        print("bob now has", await lanes.run("alice", ledger.transfer, "alice", "bob", 30))

        # alice pays bob while bob pays carol. Whatever the order they start in, a
        # transfer waiting for a busy lane lends its permit to that lane, which runs
        # the jobs queued there, up to the awaited one, on it.
        first = await lanes.submit("alice", ledger.transfer, "alice", "bob", 10)
        second = await lanes.submit("bob", ledger.transfer, "bob", "carol", 50)
        await first
        await second
        print("balances:", ledger.balances)

        audit = await lanes.run("carol", ledger.close_account, "carol")
        await audit
        print(ledger.audit[0])
    stats = lanes.statistics()
    print(f"{stats.completed} jobs, at most {stats.peak_running} running at once (limit=1)")

    assert ledger.balances == {"alice": 60, "bob": 10, "carol": 50}
    assert ledger.audit == ["carol closed with 50"]
    # More than one job at a time ran only on lent permits, while the jobs that lent
    # them were waiting.
    assert stats.peak_running >= 2


if __name__ == "__main__":
    anyio.run(main)
