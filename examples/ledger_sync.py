"""Copy ledger entries to a bank, per account in order: retries, halt and dead-letter.

Entries of one account must reach the bank in order: a later entry applied after a
missing one would give a wrong balance. So each account is a lane, a flaky call is
retried at the head of its lane (the entries behind it wait), and an entry that still
fails halts its account: the entries queued behind it are not sent, and every entry
that was not applied goes to the dead-letter, here a list an operator looks at (a
memory object stream read by a task of its own works too). The other accounts go on.
Once the cause is fixed, ``resume()`` opens the account again and the dead letters are
submitted anew, in order.

The bank is simulated: it rejects entry 3 of account "acme" until it is fixed, and
fails one call in five at random, which the retries absorb. Run it with
``python examples/ledger_sync.py``.
"""

from __future__ import annotations

import random

import anyio

from anyio_keyq import Backoff, DeadLetter, KeyedLanes, LaneHalted, Retry

ACCOUNTS = ("acme", "globex", "initech")
ENTRIES = 6


class Unavailable(Exception):
    """The bank did not answer: worth another try."""


class Rejected(Exception):
    """The bank refused the entry: retrying will not help."""


class Bank:
    def __init__(self) -> None:
        self.applied: dict[str, list[int]] = {account: [] for account in ACCOUNTS}
        self.broken = {("acme", 3)}
        self.random = random.Random(7)

    async def apply(self, account: str, entry: int) -> None:
        await anyio.sleep(0.001)
        if self.random.random() < 0.2:
            raise Unavailable(f"no answer for {account}/{entry}")
        if (account, entry) in self.broken:
            raise Rejected(f"{account}/{entry}: unknown counterparty")
        self.applied[account].append(entry)


async def main() -> None:
    bank = Bank()
    # Retry what may pass next time, never a rejection; quick delays for the demo.
    policy = Retry(attempts=5, backoff=Backoff(base=0.002, cap=0.05), retry_on=Unavailable)
    dead: list[DeadLetter[str]] = []
    async with KeyedLanes[str](retry=policy, on_failure="halt", dead_letter=dead.append) as lanes:
        refused: list[tuple[str, int]] = []  # submitted once the account had halted
        for entry in range(1, ENTRIES + 1):
            for account in ACCOUNTS:
                try:
                    await lanes.submit(account, bank.apply, account, entry)
                except LaneHalted:
                    refused.append((account, entry))
        await lanes.wait_idle()  # every job settled, every dead letter delivered
        print("halted:", {key: str(exc) for key, exc in lanes.halted.items()})
        print("not applied:", sorted([d.args for d in dead] + refused))

        bank.broken.clear()  # the operator fixes the counterparty...
        lanes.resume("acme")  # ...and replays the dead letters, in order
        replay = sorted([d.args for d in dead] + refused, key=lambda args: args[1])
        dead.clear()
        for account, entry in replay:
            await lanes.submit(account, bank.apply, account, entry)

    for account in ACCOUNTS:
        print(f"{account}: {bank.applied[account]}")
    assert all(bank.applied[account] == list(range(1, ENTRIES + 1)) for account in ACCOUNTS)
    print(f"retried {lanes.statistics().retried} calls; every account complete and in order")


if __name__ == "__main__":
    anyio.run(main)
