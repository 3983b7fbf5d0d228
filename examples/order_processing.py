"""Process an order: fetch the user, check the stock and authorise the payment at once.

The three calls go to three services and do not depend on each other, so they run
concurrently, under one deadline for the whole order. Each gets a handle, whose typed
result builds the receipt once the block is over.

* All or nothing (``fail_fast=True``, the default): if the payment is declined, there
  is no point in waiting for the stock: the other calls are cancelled, and the block
  raises ``PaymentDeclined`` itself, not wrapped in an exception group.
* One deadline: if the inventory service hangs, the whole order gives up when the
  deadline passes, with :exc:`TimeoutError`. A call that learns it needs more time (a
  card payment the customer must confirm) moves the deadline.
* A limit: the stock of each line item is checked by a nested scope with ``limit=2``,
  so that a big order does not flood the small inventory service.
* Best effort (``fail_fast=False``): the extras shown on the confirmation page are
  nice to have; those that fail are left out, and nothing is raised.

The services are simulated with ``anyio.sleep``. Run it with
``python examples/order_processing.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import anyio

from anyio_keyq import ConcurrencyScope, JobStatus

HANGS = "unobtainium"  # the inventory service never answers for this item


class PaymentDeclined(Exception):
    """The payment service refused the card."""


class Order(NamedTuple):
    id: str
    user_id: int
    items: tuple[str, ...]
    card: str  # "ok", "declined", or "confirm" (the customer must confirm it)


class Receipt(NamedTuple):
    order_id: str
    user: str
    reserved: tuple[str, ...]
    payment: str


class Services:
    """The remote services. Records the calls that were cancelled half-way."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.hanging = 0  # stock checks of the item that hangs that have begun
        self.stock_calls = 0
        self.peak_stock_calls = 0

    async def fetch_user(self, user_id: int) -> str:
        await anyio.sleep(0.01)
        return f"user {user_id}"

    async def check_stock(self, item: str) -> str:
        self.stock_calls += 1
        if item == HANGS:
            self.hanging += 1
        self.peak_stock_calls = max(self.peak_stock_calls, self.stock_calls)
        try:
            await anyio.sleep(0.01)
            if item == HANGS:
                await anyio.sleep_forever()
            return item
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(f"stock of {item}")
            raise
        finally:
            self.stock_calls -= 1

    async def authorise(self, card: str, order: ConcurrencyScope) -> str:
        await anyio.sleep(0.02)
        if card == "declined":
            raise PaymentDeclined("card declined by the bank")
        if card == "confirm":
            order.deadline += 2  # the customer confirms in their banking app: wait more
            await anyio.sleep(0.4)
        return "authorised"

    async def recommendations(self, user_id: int) -> list[str]:
        await anyio.sleep(0.01)
        return ["teapot", "biscuits"]

    async def loyalty_points(self, user_id: int) -> int:
        await anyio.sleep(0.005)
        raise ConnectionError("the loyalty service is down")

    async def delivery_estimate(self, items: tuple[str, ...]) -> str:
        await anyio.sleep(0.01)
        return "tomorrow"


async def reserve_items(services: Services, items: tuple[str, ...]) -> tuple[str, ...]:
    """Check the stock of every item, two calls at a time, in order."""
    async with ConcurrencyScope(limit=2) as scope:
        checks = [scope.spawn(services.check_stock, item) for item in items]
    return tuple(check.result() for check in checks)


async def process_order(services: Services, order: Order, *, timeout: float = 5) -> Receipt:
    async with ConcurrencyScope(timeout=timeout) as scope:
        user = scope.spawn(services.fetch_user, order.user_id)
        stock = scope.spawn(reserve_items, services, order.items)
        payment = scope.spawn(services.authorise, order.card, scope)
    # The block is over: every handle has settled, and all three succeeded.
    return Receipt(order.id, user.result(), stock.result(), payment.result())


async def order_extras(services: Services, order: Order) -> dict[str, object]:
    """Whatever the extra services can tell within a second; failures are left out."""
    async with ConcurrencyScope(timeout=1, fail_fast=False) as scope:
        scope.spawn(services.recommendations, order.user_id, name="recommendations")
        scope.spawn(services.loyalty_points, order.user_id, name="loyalty points")
        scope.spawn(services.delivery_estimate, order.items, name="delivery")
    extras: dict[str, object] = {}
    for job in scope.jobs:
        if job.status is JobStatus.FINISHED:
            extras[str(job.key)] = job.result()
        elif job.status is JobStatus.FAILED:
            print(f"  (no {job.key}: {job.exception()})")
    return extras


async def main() -> None:
    services = Services()

    order = Order("o-1", 7, ("tea", "mug", "kettle", "strainer"), card="ok")
    receipt = await process_order(services, order)
    print(receipt)
    assert receipt == Receipt("o-1", "user 7", order.items, "authorised")
    assert services.peak_stock_calls == 2

    # The payment needs the customer's confirmation: the call moves the deadline.
    start = anyio.current_time()
    receipt = await process_order(services, Order("o-2", 8, ("tea",), "confirm"), timeout=0.3)
    print(receipt, "(it took longer than the timeout of 0.3 s)")
    assert anyio.current_time() - start > 0.3

    # A declined card cancels the stock checks still running, and is raised as is.
    try:
        await process_order(services, Order("o-3", 9, (HANGS,), "declined"))
    except PaymentDeclined as exc:
        print(f"o-3 failed: {exc!r}; cancelled: {services.cancelled}")
    # Every check that hangs and had begun was cancelled (on a very slow machine, the
    # decline may come before the check begins).
    assert services.cancelled == [f"stock of {HANGS}"] * services.hanging

    # The inventory service hangs: the deadline gives up on the whole order.
    try:
        await process_order(services, Order("o-4", 10, (HANGS,), "ok"), timeout=0.1)
    except TimeoutError as exc:
        print(f"o-4 failed: {exc}")
    assert services.cancelled == [f"stock of {HANGS}"] * services.hanging

    # Best effort: the failed extra is left out, and nothing is raised.
    extras = await order_extras(services, order)
    print("extras:", extras)
    assert extras == {"recommendations": ["teapot", "biscuits"], "delivery": "tomorrow"}


if __name__ == "__main__":
    anyio.run(main)
