"""WeightedLimiter and PriorityLimiter against a plain sequential model, by Hypothesis.

Each request is made by a new borrower, in a task of its own that waits in
``acquire_on_behalf_of()`` under a cancel scope of its own; the permit then stays held
by the borrower's name until a rule releases it. Rules are synchronous (Hypothesis cannot
run async rules yet), so they drive the limiter through a blocking portal, and let the
event loop settle with ``wait_all_tasks_blocked()`` before comparing it with the model.

The model serves the waiters strictly in order: first come, first served for the
WeightedLimiter; by priority, then first come, for the PriorityLimiter. With aging, the
machine uses ``aging=1000`` seconds and whole priorities, so that in the few seconds a
run takes, aging never reorders two waiters of different priorities: the aged order is
then known exactly, and the aging code path is exercised all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from anyio_keyq import PriorityLimiter, PriorityLimiterStatistics, WeightedLimiter

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


@dataclass(eq=False)
class Request:
    """One borrower, as the model sees it."""

    name: str
    weight: int
    priority: int
    seq: int
    state: str = "waiting"  # waiting, holding, released, cancelled, refused
    via_wait: bool = True  # went through acquire_on_behalf_of() (a task), not _nowait
    scope: anyio.CancelScope | None = None  # of the waiting task, created there
    outcome: str | None = None  # what the task saw: "granted" or "cancelled"


class LimiterModel(RuleBasedStateMachine):
    backend: tuple[str, dict[str, Any]] = ("asyncio", {})
    kind: str = "weighted"  # weighted, priority, priority-aging

    def __init__(self) -> None:
        super().__init__()
        self.portal_cm = start_blocking_portal(*self.backend)
        self.portal: BlockingPortal = self.portal_cm.__enter__()
        self.requests: list[Request] = []
        self.holders: dict[str, int] = {}  # name -> weight, in grant order
        self.queue: list[Request] = []  # waiting, in arrival order
        self.over = False  # borrowed > total is allowed: the total was lowered

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self.portal.call(fn, *args)

    def settle(self) -> None:
        self.call(anyio.wait_all_tasks_blocked)

    @initialize(total=st.integers(1, 5))
    def create(self, total: int) -> None:
        self.total = total
        if self.kind == "weighted":
            self.limiter: WeightedLimiter | PriorityLimiter = WeightedLimiter(total)
        elif self.kind == "priority":
            self.limiter = PriorityLimiter(total)
        else:
            self.limiter = PriorityLimiter(total, aging=1000)

    # -- the model --------------------------------------------------------------------

    @property
    def borrowed(self) -> int:
        return sum(self.holders.values())

    def rank(self, request: Request) -> tuple[int, int]:
        if self.kind == "weighted":
            return (0, request.seq)
        return (request.priority, request.seq)

    def head(self) -> Request | None:
        return min(self.queue, key=self.rank, default=None)

    def may_start(self, request: Request) -> bool:
        head = self.head()
        ahead = head is not None and self.rank(head) < self.rank(request)
        return not ahead and self.borrowed + request.weight <= self.total

    def grant(self, request: Request) -> None:
        assert self.borrowed + request.weight <= self.total
        request.state = "holding"
        self.holders[request.name] = request.weight

    def wake(self) -> None:
        while (head := self.head()) is not None and self.borrowed + head.weight <= self.total:
            self.queue.remove(head)
            self.grant(head)
        if self.borrowed <= self.total:
            self.over = False

    def new_request(self, data: st.DataObject) -> Request:
        weight = data.draw(st.integers(1, self.total), label="weight")
        priority = data.draw(st.integers(0, 3), label="priority")
        request = Request(f"b{len(self.requests)}", weight, priority, len(self.requests))
        self.requests.append(request)
        return request

    # -- rules ------------------------------------------------------------------------

    async def _wait_for_permit(self, request: Request) -> None:
        request.scope = anyio.CancelScope()
        try:
            with request.scope:
                await self.limiter.acquire_on_behalf_of(
                    request.name, weight=request.weight, priority=request.priority
                )
                request.outcome = "granted"
        finally:
            if request.outcome is None:
                request.outcome = "cancelled"

    @rule(data=st.data())
    def acquire(self, data: st.DataObject) -> None:
        request = self.new_request(data)
        if self.may_start(request):
            self.grant(request)
        else:
            self.queue.append(request)
        self.portal.start_task_soon(self._wait_for_permit, request)
        self.settle()

    @rule(data=st.data())
    def acquire_nowait(self, data: st.DataObject) -> None:
        request = self.new_request(data)
        request.via_wait = False

        def try_now() -> bool:
            try:
                self.limiter.acquire_on_behalf_of_nowait(
                    request.name, weight=request.weight, priority=request.priority
                )
            except anyio.WouldBlock:
                return False
            return True

        took = self.call(try_now)
        assert took == self.may_start(request)
        if took:
            self.grant(request)
        else:
            request.state = "refused"

    def _pick(self, data: st.DataObject, state: str) -> Request | None:
        choices = [r for r in self.requests if r.state == state]
        return data.draw(st.sampled_from(choices), label=state) if choices else None

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        request = self._pick(data, "holding")
        if request is None:
            return
        self.call(self.limiter.release_on_behalf_of, request.name)
        request.state = "released"
        del self.holders[request.name]
        self.wake()
        self.settle()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        request = self._pick(data, "waiting")
        if request is None:
            return
        assert request.scope is not None
        self.call(request.scope.cancel)
        request.state = "cancelled"
        self.queue.remove(request)
        self.wake()
        self.settle()

    @precondition(lambda self: hasattr(self, "limiter") and self.queue and self.holders)
    @rule(data=st.data())
    def cancel_in_the_instant_of_a_grant(self, data: st.DataObject) -> None:
        """Cancel the head waiter, then free enough for it at once: it must pass it on."""
        head = self.head()
        assert head is not None
        holders = [r for r in self.requests if r.state == "holding"]
        chosen = data.draw(st.lists(st.sampled_from(holders), unique=True, min_size=1))

        def cancel_then_release() -> None:
            assert head.scope is not None
            head.scope.cancel()
            for request in chosen:
                self.limiter.release_on_behalf_of(request.name)

        self.call(cancel_then_release)
        head.state = "cancelled"
        self.queue.remove(head)
        for request in chosen:
            request.state = "released"
            del self.holders[request.name]
        self.wake()
        self.settle()

    @rule(total=st.integers(1, 5))
    def set_total(self, total: int) -> None:
        self.call(setattr, self.limiter, "total_tokens", total)
        self.total = total
        if self.borrowed > total:
            self.over = True
        self.wake()
        self.settle()

    @rule(data=st.data())
    def acquire_again(self, data: st.DataObject) -> None:
        request = self._pick(data, data.draw(st.sampled_from(["holding", "waiting"])))
        if request is None:
            return

        def again() -> None:
            with pytest.raises(RuntimeError, match=r"already (holds|waiting for) a permit"):
                self.limiter.acquire_on_behalf_of_nowait(request.name)

        self.call(again)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "limiter"):
            return
        stats = self.call(self.limiter.statistics)
        assert stats.total_tokens == self.total
        assert stats.borrowers == tuple(self.holders)  # the same holders, in grant order
        assert self.limiter._holders == self.holders  # with the same weights
        assert stats.borrowed_tokens == self.borrowed
        assert stats.waiting == len(self.queue)
        assert stats.waiting_weight == sum(r.weight for r in self.queue)
        assert stats.borrowed_tokens <= stats.total_tokens or self.over
        if isinstance(stats, PriorityLimiterStatistics):
            counts: dict[float, int] = {}
            for request in self.queue:
                counts[request.priority] = counts.get(request.priority, 0) + 1
            assert stats.waiting_by_priority == tuple(sorted(counts.items()))
        # every task saw what the model says: waiting ones still wait
        for request in self.requests:
            if not request.via_wait:
                continue
            expected = {
                "waiting": None,
                "holding": "granted",
                "released": "granted",
                "cancelled": "cancelled",
            }[request.state]
            assert request.outcome == expected, request

    def teardown(self) -> None:
        try:
            if hasattr(self, "limiter"):
                # Every task, all at once (a cancelled head lets the next waiter through),
                # and whatever is held, so that a limiter that disagrees with the model
                # fails the invariant rather than hangs here.
                self.call(lambda: [r.scope.cancel() for r in self.requests if r.scope])
                self.settle()
                for name in self.call(self.limiter.statistics).borrowers:
                    self.call(self.limiter.release_on_behalf_of, name)
                stats = self.limiter.statistics()
                assert stats.borrowed_tokens == stats.waiting == stats.waiting_weight == 0
                assert stats.borrowers == ()
        finally:
            self.portal_cm.__exit__(None, None, None)


@pytest.mark.parametrize("kind", ["weighted", "priority", "priority-aging"])
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ],
)
def test_limiter_against_model(backend: tuple[str, dict[str, Any]], kind: str) -> None:
    class Machine(LimiterModel):
        pass

    Machine.backend = backend
    Machine.kind = kind
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=20,
            deadline=None,
            # no "explain" phase: it reruns a failing case too often to fit the timeout
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
