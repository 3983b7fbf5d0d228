"""Apply a stream of account events in order per account, many accounts at once.

A payment service reads one stream of events for all its accounts: deposits and
withdrawals, interleaved. Each account's events must be applied in the order they
happened, one at a time: a withdrawal applied before the deposit that covers it would
be refused. Events of different accounts are independent and can be applied in
parallel, under a cap on the work in flight: the partitions of a Kafka topic, in one
process.

``keyed_amap()`` keyed by account does exactly that, and reads the stream no faster
than the results are used. ``batched()`` then groups the applied events into ledger
writes of up to ``BATCH`` rows, or whatever arrived within ``MAX_WAIT`` seconds.

Storage is simulated with ``anyio.sleep``. Run it with
``python examples/account_events.py``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, NamedTuple

import anyio

from anyio_keyq import batched, keyed_amap

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ACCOUNTS = [f"acct-{n}" for n in range(8)]
ROUNDS = 20
LIMIT = 6
BATCH = 25
MAX_WAIT = 0.02


class Event(NamedTuple):
    account: str
    seq: int
    amount: int  # > 0: a deposit; < 0: a withdrawal


class Applied(NamedTuple):
    event: Event
    balance: int


async def event_stream() -> AsyncIterator[Event]:
    """All accounts interleaved: every account deposits 100, then withdraws it, ..."""
    for seq in range(ROUNDS):
        for account in ACCOUNTS:
            yield Event(account, seq, 100 if seq % 2 == 0 else -100)


class Bank:
    def __init__(self) -> None:
        self.balances: defaultdict[str, int] = defaultdict(int)
        self.applied: defaultdict[str, list[int]] = defaultdict(list)
        self.busy: set[str] = set()
        self.ledger: list[list[Applied]] = []

    async def apply(self, event: Event) -> Applied:
        assert event.account not in self.busy, "two events of one account at once"
        self.busy.add(event.account)
        try:
            # Reading and writing the balance takes a while, longer for some accounts.
            balance = self.balances[event.account]
            await anyio.sleep(0.0005 * (1 + int(event.account[-1]) % 3))
            if balance + event.amount < 0:
                raise ValueError(f"{event}: overdraft refused")
            self.balances[event.account] = balance + event.amount
            self.applied[event.account].append(event.seq)
            return Applied(event, balance + event.amount)
        finally:
            self.busy.discard(event.account)

    async def write_ledger(self, rows: list[Applied]) -> None:
        await anyio.sleep(0.001)
        self.ledger.append(rows)


def account_of(event: Event) -> str:
    return event.account


async def main() -> None:
    bank = Bank()
    async with (
        keyed_amap(bank.apply, event_stream(), key=account_of, limit=LIMIT) as applied,
        batched(applied, size=BATCH, max_wait=MAX_WAIT) as batches,
    ):
        async for rows in batches:
            await bank.write_ledger(rows)

    written = [row for rows in bank.ledger for row in rows]
    print(
        f"{len(written)} events applied to {len(bank.balances)} accounts, "
        f"written in {len(bank.ledger)} ledger batches of at most {BATCH}"
    )
    # Every account saw its events in order: no withdrawal came before its deposit.
    for account in ACCOUNTS:
        assert bank.applied[account] == list(range(ROUNDS))
        assert bank.balances[account] == 0
    assert len(written) == len(ACCOUNTS) * ROUNDS
    assert all(1 <= len(rows) <= BATCH for rows in bank.ledger)


if __name__ == "__main__":
    anyio.run(main)
