"""A payment service dies and recovers; a circuit breaker spares it, and its callers.

Requests go to a fake payment service through a :class:`CircuitBreaker`. When the
service goes down, three failures in a row open the circuit: from then on, requests
fail at once with :exc:`CircuitOpen` instead of piling onto the dead service. After the
recovery time, a burst of ten requests comes in, and *exactly one* of them is let
through as the trial call; the other nine fail fast, told in ``retry_after`` when the
next trial may start. The service is still down, so the trial fails and the circuit
opens again. Once the service is back, the next trial succeeds, the circuit closes,
and requests flow again.

The "payment service" is an in-process fake that counts the requests it receives.
Run it with ``python examples/circuit_breaker.py``: the output is the same every time.
"""

from __future__ import annotations

import anyio

from anyio_keyq import CircuitBreaker, CircuitOpen, CircuitState

RECOVERY_TIME = 0.25  # seconds the circuit stays open before a trial call


class PaymentService:
    def __init__(self) -> None:
        self.down = False
        self.received = 0

    async def charge(self, order: int) -> str:
        self.received += 1
        await anyio.sleep(0.01)  # the network, the work
        if self.down:
            raise ConnectionError("payment service unavailable")
        return f"order {order} paid"


def log_change(breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
    print(f"  [{breaker.name}] {old.value} -> {new.value}")


async def burst(
    breaker: CircuitBreaker, service: PaymentService, orders: range, *, trial: bool = False
) -> str:
    """Send the orders at once; tell how many were paid, failed, or refused at once."""
    paid = failed = refused = 0
    waits: set[float] = set()  # the retry_after of the refused orders

    async def one(order: int) -> None:
        nonlocal paid, failed, refused
        try:
            await breaker.call(service.charge, order)
            paid += 1
        except ConnectionError:
            failed += 1
        except CircuitOpen as exc:
            refused += 1
            waits.add(exc.retry_after)

    async with anyio.create_task_group() as tg:
        for order in orders:
            tg.start_soon(one, order)
    if trial:
        # While the trial is in flight, the others are told the whole recovery time:
        # the soonest the next trial can start, should this one fail.
        assert waits == {RECOVERY_TIME}, waits
    else:
        assert all(0 < wait <= RECOVERY_TIME for wait in waits), waits
    return f"{paid} paid, {failed} failed, {refused} refused at once"


async def wait_for_the_next_trial(breaker: CircuitBreaker) -> None:
    """Sleep until the breaker lets a trial call through (its state turns half-open)."""
    while breaker.state is CircuitState.OPEN:
        next_trial_at = breaker.statistics().next_trial_at
        assert next_trial_at is not None
        await anyio.sleep(max(next_trial_at - anyio.current_time(), 0.001))


async def main() -> None:
    service = PaymentService()
    breaker = CircuitBreaker(
        failure_threshold=3,
        recovery_time=RECOVERY_TIME,
        failure_on=ConnectionError,
        name="payments",
        on_change=log_change,
    )

    print("the service is up:")
    print(" ", await burst(breaker, service, range(0, 5)))

    print("the service goes down:")
    service.down = True
    for order in range(5, 10):  # one at a time: the third failure opens the circuit
        try:
            await breaker.call(service.charge, order)
        except ConnectionError:
            print(f"  order {order}: failed")
        except CircuitOpen:
            print(f"  order {order}: refused at once")
    print(" ", await burst(breaker, service, range(10, 20)))

    print("after the recovery time, the service still down:")
    await wait_for_the_next_trial(breaker)
    print(" ", await burst(breaker, service, range(20, 30), trial=True))

    print("the service is back; after the recovery time:")
    service.down = False
    await wait_for_the_next_trial(breaker)
    print(" ", await burst(breaker, service, range(30, 40), trial=True))
    print(" ", await burst(breaker, service, range(40, 50)))

    stats = breaker.statistics()
    print(
        f"the service received {service.received} of 50 requests; "
        f"{stats.rejections} were refused without reaching it"
    )
    assert service.received == 5 + 3 + 1 + 1 + 10
    assert (stats.trials, stats.opened, stats.state) == (2, 2, CircuitState.CLOSED)


if __name__ == "__main__":
    anyio.run(main)
