"""The Redis queue's scripts against a plain sequential model, driven by Hypothesis.

Each rule runs one script (enqueue, claim, renew, complete, release, dead-letter,
requeue) or makes a lease expire, through a blocking portal; after each step the whole
state in Redis is compared with the model: every lane, which keys are ready or leased
and by which token, the dead letters, and that an empty lane leaves no key behind.
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from anyio_keyq.redis._queue import Store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

T = TypeVar("T")
KEYS = ("a", "b", "c")
PARKED_MS = 10**9  # a retry delay that does not run out during a test


@asynccontextmanager
async def opened(store: Store) -> AsyncIterator[Store]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


class RedisModel(RuleBasedStateMachine):
    backend: tuple[str, dict[str, Any]] = ("asyncio", {})
    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.portal_cm = start_blocking_portal(*self.backend)
        self.portal: BlockingPortal = self.portal_cm.__enter__()
        self.store = Store(self.url, f"model-{uuid.uuid4().hex[:12]}")
        # opened and closed in one host task, as coredis's task group must be
        self.store_cm = self.portal.wrap_async_context_manager(opened(self.store))
        self.store_cm.__enter__()
        self.lanes: dict[str, list[str]] = {k: [] for k in KEYS}
        self.key_of: dict[str, str] = {}
        self.leased: dict[str, str] = {}  # key -> token
        self.expired: set[str] = set()
        self.parked: set[str] = set()
        self.dead: set[str] = set()
        self.idem: dict[str, str] = {}
        self.last_token = 0

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.portal.call(fn, *args)

    def run(self, script: str, *args: str | bytes | int) -> Any:
        return self.call(self.store.run, script, *args)

    def teardown(self) -> None:
        try:
            self.store_cm.__exit__(None, None, None)
        finally:
            self.portal_cm.__exit__(None, None, None)

    def ready(self) -> set[str]:
        return {k for k, lane in self.lanes.items() if lane} - set(self.leased) - self.parked

    @rule(key=st.sampled_from(KEYS), idem=st.none() | st.sampled_from(["i1", "i2"]))
    def enqueue(self, key: str, idem: str | None) -> None:
        out = self.run("ENQUEUE", 10**7, key, "task", b"null", b"j", idem or "")
        job_id, new = out[0].decode(), out[1]
        if idem is not None and idem in self.idem:
            assert (job_id, new) == (self.idem[idem], 0)
            return
        assert new == 1
        self.lanes[key].append(job_id)
        self.key_of[job_id] = key
        if idem is not None:
            self.idem[idem] = job_id

    @rule(count=st.integers(1, 3))
    def claim(self, count: int) -> None:
        out = self.run("CLAIM", 10**7, count, 0)
        # Expired leases are taken back first: their keys are ready again.
        for key in self.expired:
            del self.leased[key]
        self.expired.clear()
        ready = self.ready()
        claimed = out[1:]
        assert len(claimed) == min(count, len(ready))
        for raw in claimed:
            key, job_id, token = raw[0].decode(), raw[1].decode(), int(raw[2])
            assert key in ready
            ready.discard(key)
            assert job_id == self.lanes[key][0]
            assert token > self.last_token
            self.last_token = token
            self.leased[key] = str(token)

    def _end(self, script: str, key: str, stale: bool, *args: str | int) -> bool:
        token = "0" if stale else self.leased[key]
        ok = self.run(script, key, self.lanes[key][0], token, *args)
        assert ok == (0 if stale else 1)
        if not stale:
            del self.leased[key]
            self.expired.discard(key)
        return not stale

    @precondition(lambda self: self.leased)
    @rule(data=st.data(), stale=st.booleans())
    def complete(self, data: st.DataObject, stale: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.leased)))
        if self._end("COMPLETE", key, stale):
            self.lanes[key].pop(0)

    @precondition(lambda self: self.leased)
    @rule(data=st.data(), park=st.booleans(), stale=st.booleans())
    def release(self, data: st.DataObject, park: bool, stale: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.leased)))
        if self._end("RELEASE", key, stale, PARKED_MS if park else 0, "err", 0) and park:
            self.parked.add(key)

    @precondition(lambda self: self.leased)
    @rule(data=st.data(), stale=st.booleans())
    def dead_letter(self, data: st.DataObject, stale: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.leased)))
        if self._end("DEAD_LETTER", key, stale, "reason"):
            self.dead.add(self.lanes[key].pop(0))

    @precondition(lambda self: self.leased)
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.leased)))
        assert self.run("RENEW", 10**7, key, self.leased[key], key, "0") == [1, 0]
        self.expired.discard(key)

    @precondition(lambda self: self.leased)
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.leased)))
        self.call(self.store.client.zadd, self.store.prefix + "leases", {key: 0})
        self.expired.add(key)

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.dead)))
        assert self.run("REQUEUE", job_id) == 1
        self.dead.discard(job_id)
        self.lanes[self.key_of[job_id]].append(job_id)

    @invariant()
    def redis_matches_the_model(self) -> None:
        prefix = self.store.prefix
        client = self.store.client
        for key, lane in self.lanes.items():
            stored = self.call(client.lrange, prefix + "lane:" + key, 0, -1)
            assert [i.decode() for i in stored] == lane
        ready = {k.decode() for k in self.call(client.zrange, prefix + "ready", 0, -1)}
        leases = {k.decode() for k in self.call(client.zrange, prefix + "leases", 0, -1)}
        owner = {
            k.decode(): v.decode() for k, v in self.call(client.hgetall, prefix + "owner").items()
        }
        dead = {k.decode() for k in self.call(client.zrange, prefix + "dead", 0, -1)}
        assert leases == set(self.leased)
        assert owner == self.leased
        assert ready == {k for k, lane in self.lanes.items() if lane} - set(self.leased)
        assert dead == self.dead
        assert self.call(client.llen, prefix + "wake") <= 64


@pytest.mark.parametrize(
    "backend",
    [("asyncio", {}), ("trio", {})],
    ids=["asyncio", "trio"],
)
def test_redis_scripts_against_model(backend: tuple[str, dict[str, Any]], redis_url: str) -> None:
    class Machine(RedisModel):
        pass

    Machine.backend = backend
    Machine.url = redis_url
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
