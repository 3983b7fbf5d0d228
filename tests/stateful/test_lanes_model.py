"""KeyedLanes against a plain sequential model, driven by Hypothesis.

Rules are synchronous (Hypothesis cannot run async rules yet), so they drive the lanes
through a blocking portal, and let the event loop settle after each step with
``wait_all_tasks_blocked()`` before comparing the lanes with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from anyio_keyq import Job, JobCancelled, JobStatus, KeyedLanes

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")
KEYS = ("a", "b", "c")


@dataclass
class Record:
    """One job as the model sees it."""

    key: str
    handle: Job[Any]
    state: str = "queued"  # queued, running, finished, failed, cancelled, timed_out
    event: anyio.Event = field(default_factory=anyio.Event)
    fail: bool = False


class LanesModel(RuleBasedStateMachine):
    backend: tuple[str, dict[str, Any]] = ("asyncio", {})

    def __init__(self) -> None:
        super().__init__()
        self.portal_cm = start_blocking_portal(*self.backend)
        self.portal: BlockingPortal = self.portal_cm.__enter__()
        self.records: list[Record] = []
        self.began: dict[str, list[int]] = {key: [] for key in KEYS}
        self.running_now = 0

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self.portal.call(fn, *args)

    def settle(self) -> None:
        self.call(anyio.wait_all_tasks_blocked)
        for record in self.records:
            status = record.handle.status
            if record.state in ("queued", "running") and status is JobStatus.RUNNING:
                record.state = "running"

    @initialize(limit=st.integers(1, 3), per_key=st.integers(1, 2))
    def open_lanes(self, limit: int, per_key: int) -> None:
        self.limit = limit
        self.per_key = per_key
        self.lanes = KeyedLanes[str](limit=limit, per_key=per_key, timeout=3600)
        # entered and exited in one host task, as a task group must be
        self.lanes_cm = self.portal.wrap_async_context_manager(self.lanes)
        self.lanes_cm.__enter__()

    async def _job(self, index: int) -> int:
        record = self.records[index]
        self.began[record.key].append(index)
        self.running_now += 1
        try:
            await record.event.wait()
        finally:
            self.running_now -= 1
        if record.fail:
            raise ValueError(index)
        return index

    # -- rules ----------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), explicit=st.booleans())
    def submit(self, key: str, explicit: bool) -> None:
        index = len(self.records)

        def submit_now() -> None:
            if explicit:  # the lanes' default, given: the general path, not the short one
                handle = self.lanes.submit_nowait(key, self._job, index, timeout=3600)
            else:
                handle = self.lanes.submit_nowait(key, self._job, index)
            self.records.append(Record(key, handle))

        self.call(submit_now)
        self.settle()

    def _pick(self, data: st.DataObject, states: tuple[str, ...]) -> Record | None:
        choices = [r for r in self.records if r.state in states]
        return data.draw(st.sampled_from(choices)) if choices else None

    @rule(data=st.data(), fail=st.booleans())
    def complete(self, data: st.DataObject, fail: bool) -> None:
        record = self._pick(data, ("running",))
        if record is None:
            return
        record.fail = fail
        self.call(record.event.set)
        record.state = "failed" if fail else "finished"
        self.settle()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        record = self._pick(data, ("queued", "running"))
        if record is None:
            return
        self.call(record.handle.cancel)
        record.state = "cancelled"
        self.settle()

    @rule(data=st.data())
    def time_out(self, data: st.DataObject) -> None:
        record = self._pick(data, ("running",))
        if record is None:
            return
        scope = record.handle._scope
        assert scope is not None
        # The job's time is up: move its deadline to now, as the clock would.
        self.call(lambda: setattr(scope, "deadline", anyio.current_time()))
        record.state = "timed_out"
        self.settle()

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "lanes"):
            return
        stats = self.call(self.lanes.statistics)
        count = {
            s: sum(r.state == s for r in self.records)
            for s in ("queued", "running", "finished", "failed", "cancelled", "timed_out")
        }
        assert stats.submitted == len(self.records)
        assert stats.completed == count["finished"]
        assert stats.failed == count["failed"]
        assert stats.cancelled == count["cancelled"]
        assert stats.timed_out == count["timed_out"]
        assert stats.running == count["running"] == self.running_now
        assert stats.queued == count["queued"]
        assert stats.running <= self.limit
        live_keys = {r.key for r in self.records if r.state in ("queued", "running")}
        assert set(self.call(self.lanes.keys)) == live_keys
        for key in KEYS:
            mine = [i for i, r in enumerate(self.records) if r.key == key]
            # jobs begin in submission order (those cancelled while queued never do)
            assert self.began[key] == sorted(self.began[key])
            assert set(self.began[key]) <= set(mine)
            unsettled = [i for i in mine if self.records[i].state in ("queued", "running")]
            running = [i for i in unsettled if self.records[i].state == "running"]
            # the running jobs are the oldest unsettled ones, at most per_key of them
            assert running == unsettled[: len(running)]
            assert len(running) <= self.per_key
            # work-conserving: a free permit never leaves a runnable lane waiting
            if stats.running < self.limit and len(unsettled) > len(running):
                assert len(running) == self.per_key
        for record in self.records:
            settled = record.state not in ("queued", "running")
            assert record.handle.done() == settled

    def teardown(self) -> None:
        try:
            if hasattr(self, "lanes"):
                for record in self.records:
                    if record.state in ("queued", "running"):
                        record.state = "finished"
                        self.call(record.event.set)
                self.lanes_cm.__exit__(None, None, None)
                stats = self.lanes.statistics()
                assert stats.queued == stats.running == stats.lanes == 0
                assert stats.workers == 0
                for index, record in enumerate(self.records):
                    handle = record.handle
                    if record.state == "finished":
                        assert handle.result() == index
                    elif record.state == "cancelled":
                        with pytest.raises(JobCancelled):
                            handle.result()
                    else:
                        error = ValueError if record.state == "failed" else TimeoutError
                        assert isinstance(handle.exception(), error)
                assert stats.completed == sum(r.state == "finished" for r in self.records)
        finally:
            self.portal_cm.__exit__(None, None, None)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ],
)
def test_lanes_against_model(backend: tuple[str, dict[str, Any]]) -> None:
    class Machine(LanesModel):
        pass

    Machine.backend = backend
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=100,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
