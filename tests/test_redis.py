"""The Redis queue and worker against a real server (the session's, from conftest)."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import coredis
import pytest
from anyio.lowlevel import checkpoint

import anyio_keyq.redis
from anyio_keyq import Backoff, Retry
from anyio_keyq.redis import (
    DeadLetter,
    RedisJob,
    RedisQueue,
    RedisQueueInfo,
    RedisWorker,
    RedisWorkerStatistics,
)
from anyio_keyq.redis._queue import Store

from .helpers import assert_cancel_point, assert_schedule_point

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.anyio


async def queue_keys(url: str, name: str) -> set[str]:
    """Every key of the queue *name* in Redis, without its prefix."""
    prefix = f"keyq:{{{name}}}:"
    async with coredis.Redis.from_url(url) as client:
        keys = [k.decode() async for k in client.scan_iter(match=prefix + "*")]
    return {k.removeprefix(prefix) for k in keys}


IDLE = {"seq", "fence"}


async def has_leases(queue: RedisQueue, n: int) -> bool:
    return (await queue.info()).leased >= n


class Recorder:
    """Handlers that record what ran, and gates to hold jobs while a test looks."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, Any, int, int]] = []
        self.running = 0
        self.peak = 0
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = 0
        self.cancelled_event = anyio.Event()

    async def record(self, job: RedisJob) -> None:
        self.runs.append((job.key, job.payload, job.attempt, job.fence))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await checkpoint()
        finally:
            self.running -= 1

    async def hold(self, job: RedisJob) -> None:
        self.runs.append((job.key, job.payload, job.attempt, job.fence))
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            self.cancelled_event.set()
            raise
        finally:
            self.running -= 1

    async def fail(self, job: RedisJob) -> None:
        self.runs.append((job.key, job.payload, job.attempt, job.fence))
        raise ValueError(f"failed {job.payload}")


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    """Poll Redis (or the test's own state) until *condition* holds."""
    with anyio.fail_after(timeout):
        for _ in itertools.count():  # pragma: no branch
            if await condition():
                return
            await anyio.sleep(0.01)


def no_lanes(queue: RedisQueue) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return await queue.lanes() == 0

    return condition


async def drain(queue: RedisQueue, worker: RedisWorker) -> None:
    """Serve until the queue has no lanes left, then stop the worker."""
    async with anyio.create_task_group() as tg:
        await tg.start(worker.serve)
        await until(no_lanes(queue))
        worker.stop()


@pytest.fixture
async def queue(redis_url: str, queue_name: str) -> AsyncIterator[RedisQueue]:
    async with RedisQueue(redis_url, queue_name) as q:
        yield q


class TestEnqueue:
    async def test_jobs_of_a_key_queue_in_order(self, queue: RedisQueue) -> None:
        ids = [await queue.enqueue("a", "t", i) for i in range(3)]
        await queue.enqueue("b", "t", None)
        assert ids == sorted(ids, key=int)
        assert await queue.job_ids("a") == ids
        assert await queue.pending("a") == 3
        assert await queue.pending("nothing") == 0
        assert await queue.lanes() == 2
        assert await queue.info() == RedisQueueInfo(ready=2, leased=0, dead=0)

    async def test_enqueue_many_is_one_step_in_order(
        self, queue: RedisQueue, redis_url: str
    ) -> None:
        ids = await queue.enqueue_many([("a", "t", 1), ("b", "t", 2), ("a", "t", 3, "idem")])
        assert len(ids) == 3
        assert await queue.job_ids("a") == [ids[0], ids[2]]
        again = await queue.enqueue_many([("a", "t", 4, "idem")])
        assert again == [ids[2]]
        assert await queue.enqueue_many([]) == []

    async def test_idempotency_key_adds_one_job(self, queue: RedisQueue) -> None:
        first = await queue.enqueue("k", "t", 1, idempotency_key="once")
        second = await queue.enqueue("k", "t", 2, idempotency_key="once")
        assert first == second
        assert await queue.pending("k") == 1

    async def test_payload_bounds_and_formats(self, redis_url: str, queue_name: str) -> None:
        async with RedisQueue(redis_url, queue_name, max_payload=10) as q:
            with pytest.raises(ValueError, match=r"^payload is 12 bytes .* max_payload=10: "):
                await q.enqueue("k", "t", "x" * 10)
            with pytest.raises(TypeError, match=r"^payload must be JSON-serialisable, got "):
                await q.enqueue("k", "t", {1, 2})
            assert await q.pending("k") == 0

    @pytest.mark.parametrize(
        ("args", "error", "message"),
        [
            ((1, "t"), TypeError, r"^key must be a str, got 1$"),
            (("", "t"), ValueError, r"^key must not be empty, got ''$"),
            (("k", None), TypeError, r"^task must be a str, got None$"),
        ],
    )
    async def test_bad_arguments(
        self, queue: RedisQueue, args: tuple[Any, Any], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            await queue.enqueue(*args)
        with pytest.raises(error, match=message):
            await queue.enqueue_many([(*args, None)])

    async def test_bad_batch_items_and_idempotency_keys(self, queue: RedisQueue) -> None:
        with pytest.raises(TypeError, match=r"^each job must be a tuple \(key, task, payload"):
            await queue.enqueue_many([("k", "t")])  # type: ignore[list-item]
        with pytest.raises(ValueError, match=r"^idempotency_key must not be empty"):
            await queue.enqueue("k", "t", idempotency_key="")

    def test_bad_constructor_arguments(self) -> None:
        with pytest.raises(ValueError, match=r"^serializer must be 'json' or 'pickle', got 'x'$"):
            RedisQueue("redis://", serializer="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^max_payload must be >= 1, got 0$"):
            RedisQueue("redis://", max_payload=0)
        with pytest.raises(TypeError, match=r"^name must be a str, got 3$"):
            RedisQueue("redis://", 3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^a queue name must not contain braces"):
            RedisQueue("redis://", "a{b}")
        with pytest.raises(ValueError, match=r"^a queue name must not contain braces"):
            RedisWorker("redis://", "a}", {})

    async def test_calls_are_checkpoints(self, queue: RedisQueue) -> None:
        await assert_cancel_point(lambda: queue.enqueue("k", "t"))
        await assert_cancel_point(lambda: queue.enqueue_many([]))
        await assert_schedule_point(lambda: queue.enqueue_many([]))
        await assert_schedule_point(lambda: queue.pending("k"))

    async def test_closed_queue_refuses_calls(self, redis_url: str) -> None:
        q = RedisQueue(redis_url, "closed")
        assert "closed" in repr(q)
        with pytest.raises(RuntimeError, match=r"^use 'async with' first"):
            await q.pending("k")
        async with q:
            assert re.fullmatch(r"<anyio_keyq.redis.RedisQueue 'closed' at 0x\w+: open>", repr(q))
            with pytest.raises(RuntimeError, match=r"already open"):
                await q.__aenter__()
        assert q.name == "closed"


class TestWorker:
    async def test_runs_each_key_in_order_and_leaves_nothing(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        rec = Recorder()
        for i in range(5):
            await queue.enqueue_many([(k, "record", i) for k in "abc"])
        async with RedisWorker(redis_url, queue_name, {"record": rec.record}, concurrency=3) as w:
            await drain(queue, w)
            stats = w.statistics()
        assert stats == RedisWorkerStatistics(
            running=0, claimed=15, completed=15, retried=0, dead_lettered=0, lost=0, released=0
        )
        for key in "abc":
            assert [p for k, p, _, _ in rec.runs if k == key] == list(range(5))
        fences = [f for _, _, _, f in rec.runs]
        assert sorted(fences) == list(range(1, 16))
        assert await queue_keys(redis_url, queue_name) == IDLE

    async def test_one_job_per_key_at_a_time_over_workers(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        active: dict[str, int] = {}
        overlaps = 0
        order: dict[str, list[int]] = {}

        async def job(j: RedisJob) -> None:
            nonlocal overlaps
            active[j.key] = active.get(j.key, 0) + 1
            overlaps += active[j.key] > 1
            order.setdefault(j.key, []).append(j.payload)
            await anyio.sleep(0.001)
            active[j.key] -= 1

        await queue.enqueue_many([(f"k{i % 4}", "job", i) for i in range(40)])
        handlers = {"job": job}
        async with (
            RedisWorker(redis_url, queue_name, handlers, concurrency=4) as w1,
            RedisWorker(redis_url, queue_name, handlers, concurrency=4) as w2,
            anyio.create_task_group() as tg,
        ):
            await tg.start(w1.serve)
            await tg.start(w2.serve)
            await until(no_lanes(queue))
            w1.stop()
            w2.stop()
        assert overlaps == 0
        assert order == {f"k{k}": list(range(k, 40, 4)) for k in range(4)}

    async def test_concurrency_and_global_cap(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        rec = Recorder()
        await queue.enqueue_many([(f"k{i}", "hold", i) for i in range(6)])
        handlers = {"hold": rec.hold}
        async with (
            RedisWorker(redis_url, queue_name, handlers, concurrency=2, max_active=3) as w1,
            RedisWorker(redis_url, queue_name, handlers, concurrency=4, max_active=3) as w2,
            anyio.create_task_group() as tg,
        ):
            await tg.start(w1.serve)
            await tg.start(w2.serve)
            await until(lambda: has_leases(queue, 3))
            # Give both workers a chance to claim more than the cap allows.
            await anyio.sleep(0.1)
            assert rec.running == 3
            assert w1.statistics().running <= 2
            rec.release.set()
            await until(no_lanes(queue))
            w1.stop()
            w2.stop()
        assert rec.peak == 3
        assert len(rec.runs) == 6

    async def test_failed_job_retries_after_the_delay_and_blocks_its_key(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        calls: list[tuple[int, float | None]] = []

        class Policy:
            def next_delay(
                self, attempt: int, exc: BaseException, previous: float | None = None
            ) -> float | None:
                calls.append((attempt, previous))
                return 0.125 * attempt if attempt < 3 else None

        log: list[tuple[str, int]] = []

        async def flaky(job: RedisJob) -> None:
            log.append((job.payload, job.attempt))
            if job.payload == "first":
                raise ValueError("boom")

        await queue.enqueue("k", "flaky", "first")
        await queue.enqueue("k", "flaky", "second")
        await queue.enqueue("other", "flaky", "other")
        async with RedisWorker(
            redis_url, queue_name, {"flaky": flaky}, retry=Policy(), poll_interval=0.05
        ) as w:
            before = anyio.current_time()
            await drain(queue, w)
            elapsed = anyio.current_time() - before
            stats = w.statistics()
        assert calls == [(1, None), (2, 0.125), (3, 0.25)]
        assert [x for x in log if x[0] != "other"] == [
            ("first", 1),
            ("first", 2),
            ("first", 3),
            ("second", 1),
        ]
        assert elapsed >= 0.375
        assert (stats.retried, stats.dead_lettered, stats.completed) == (2, 1, 2)
        [dead] = await queue.dead_letters()
        assert dead.reason == "ValueError: boom"
        assert (dead.key, dead.task, dead.payload, dead.attempts) == ("k", "flaky", b'"first"', 3)

    async def test_the_retry_policy_of_the_lanes_with_a_retry_after_hint(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        class Busy(Exception):
            retry_after = 0.0625

        starts: list[float] = []

        async def busy(job: RedisJob) -> None:
            starts.append(anyio.current_time())
            if len(starts) < 3:
                raise Busy("try later")

        policy = Retry(attempts=3, backoff=Backoff(base=10.0), jitter="none")
        await queue.enqueue("k", "busy")
        async with RedisWorker(
            redis_url, queue_name, {"busy": busy}, retry=policy, poll_interval=0.01
        ) as w:
            await drain(queue, w)
            assert (w.statistics().retried, w.statistics().completed) == (2, 1)
        # The hint, not the 10 s backoff, set both waits.
        assert starts[2] - starts[0] < 5
        assert starts[1] - starts[0] >= 0.0625
        assert await queue.dead_letters() == []

    async def test_dead_letters_can_be_requeued_or_discarded(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        rec = Recorder()
        await queue.enqueue("k", "missing", 1)
        await queue.enqueue("k", "fail", 2)
        async with RedisWorker(redis_url, queue_name, {"fail": rec.fail}) as w:
            await drain(queue, w)
        letters = await queue.dead_letters()
        assert [(d.payload, d.reason) for d in letters] == [
            (b"1", "no handler for task 'missing' in this worker"),
            (b"2", "ValueError: failed 2"),
        ]
        assert isinstance(letters[0], DeadLetter)
        assert letters[0].died_at > 1e9
        assert await queue.dead_letters(limit=1) == letters[:1]
        assert await queue.requeue(letters[0].id)
        assert not await queue.requeue(letters[0].id)
        assert await queue.job_ids("k") == [letters[0].id]
        assert await queue.discard(letters[1].id)
        assert not await queue.discard(letters[1].id)
        assert (await queue.info()).dead == 0
        async with RedisWorker(redis_url, queue_name, {"missing": rec.record}) as w:
            await drain(queue, w)
        assert rec.runs[-1][:3] == ("k", 1, 1)
        assert await queue_keys(redis_url, queue_name) == IDLE

    async def test_malformed_entries_are_dead_lettered(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        rec = Recorder()
        prefix = f"keyq:{{{queue_name}}}:"
        a = await queue.enqueue("a", "record", 1)
        b = await queue.enqueue("b", "record", 2)
        c = await queue.enqueue("c", "record", 3)
        async with coredis.Redis.from_url(redis_url) as client:
            await client.hset(prefix + f"job:{a}", {"payload": b"{not json"})
            await client.delete([prefix + f"job:{b}"])
            await client.hset(prefix + f"job:{c}", {"fmt": b"?"})
            await client.rpush(prefix + "lane:a", [b"999"])
        async with RedisWorker(redis_url, queue_name, {"record": rec.record}) as w:
            await drain(queue, w)
        reasons = {d.id: d.reason for d in await queue.dead_letters()}
        assert reasons[a].startswith("malformed JSON payload: ")
        assert reasons[b] == "malformed job: its data is missing from Redis"
        assert reasons[c] == "unknown payload format b'?'"
        assert reasons["999"] == "malformed job: its data is missing from Redis"
        assert rec.runs == []

    async def test_pickle_needs_opting_in_on_both_sides(
        self, redis_url: str, queue_name: str
    ) -> None:
        rec = Recorder()
        async with RedisQueue(redis_url, queue_name, serializer="pickle") as q:
            await q.enqueue("k", "record", {1, 2})
            await q.enqueue("k", "record", b"\x00")
            async with RedisWorker(redis_url, queue_name, {"record": rec.record}) as w:
                await drain(q, w)
            letters = await q.dead_letters()
            assert [d.reason for d in letters] == 2 * [
                "the payload is pickled and this worker has accept_pickle=False"
            ]
            for dead in letters:
                await q.requeue(dead.id)
            async with RedisWorker(
                redis_url, queue_name, {"record": rec.record}, accept_pickle=True
            ) as w:
                await drain(q, w)
        assert [r[1] for r in rec.runs] == [{1, 2}, b"\x00"]

    async def test_long_job_keeps_its_lease(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        async def slow(job: RedisJob) -> None:
            await anyio.sleep(1.25)  # 2.5 leases

        await queue.enqueue("k", "slow")
        async with (
            RedisWorker(redis_url, queue_name, {"slow": slow}, lease=0.5) as w1,
            RedisWorker(redis_url, queue_name, {"slow": slow}, lease=0.5) as w2,
        ):
            async with anyio.create_task_group() as tg:
                await tg.start(w1.serve)
                await tg.start(w2.serve)
                await until(no_lanes(queue))
                w1.stop()
                w2.stop()
            assert w1.statistics().claimed + w2.statistics().claimed == 1
            assert w1.statistics().lost + w2.statistics().lost == 0

    async def test_lost_lease_cancels_the_handler_and_drops_its_result(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        rec = Recorder()
        await queue.enqueue("k", "hold", 1)
        async with RedisWorker(
            redis_url, queue_name, {"hold": rec.hold}, lease=1.0, poll_interval=0.05
        ) as w:
            async with anyio.create_task_group() as tg:
                await tg.start(w.serve)
                await rec.started.wait()
                # Another worker took the key over: the owner's token changed.
                async with coredis.Redis.from_url(redis_url) as client:
                    await client.hset(f"keyq:{{{queue_name}}}:owner", {"k": "999999"})
                with anyio.fail_after(20):
                    await rec.cancelled_event.wait()
                w.stop()
            assert w.statistics().lost == 1
        assert await queue.pending("k") == 1

    async def test_crashed_workers_lease_expires_and_the_head_runs_again(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        rec = Recorder()
        await queue.enqueue("k", "record", 1)
        await queue.enqueue("k", "record", 2)
        # A worker claims the head and dies without a word.
        store = Store(redis_url, queue_name)
        await store.open()
        try:
            [hint, claimed] = await store.run("CLAIM", 200, 1, 0)
        finally:
            await store.close()
        assert hint == -1
        assert claimed[1].decode() == (await queue.job_ids("k"))[0]
        assert await queue.info() == RedisQueueInfo(ready=0, leased=1, dead=0)
        async with RedisWorker(
            redis_url, queue_name, {"record": rec.record}, poll_interval=0.05
        ) as w:
            await drain(queue, w)
        assert [(p, a) for _, p, a, _ in rec.runs] == [(1, 2), (2, 1)]
        assert rec.runs[0][3] > int(claimed[2])
        assert await queue_keys(redis_url, queue_name) == IDLE

    async def test_max_lost_dead_letters_a_job_that_keeps_killing_workers(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        await queue.enqueue("k", "record", 1)
        store = Store(redis_url, queue_name)
        await store.open()
        try:
            for _ in range(2):
                [_, claimed] = await store.run("CLAIM", 200, 1, 0)
                # "dies": the lease runs out
                await store.client.zadd(store.prefix + "leases", {"k": 0})
        finally:
            await store.close()
        rec = Recorder()
        async with RedisWorker(redis_url, queue_name, {"record": rec.record}, max_lost=1) as w:
            await drain(queue, w)
        [dead] = await queue.dead_letters()
        assert dead.reason == "lost with its worker 2 times"
        assert dead.id == claimed[1].decode()
        assert rec.runs == []

    @pytest.mark.parametrize("grace", [0, 5])
    async def test_stop_lets_jobs_finish_or_hands_them_back(
        self, queue: RedisQueue, redis_url: str, queue_name: str, grace: float
    ) -> None:
        rec = Recorder()
        await queue.enqueue("k", "hold", 1)
        async with RedisWorker(redis_url, queue_name, {"hold": rec.hold}, grace=grace) as w:
            async with anyio.create_task_group() as tg:
                await tg.start(w.serve)
                await rec.started.wait()
                w.stop()
                w.stop()
                if grace:
                    rec.release.set()
            stats = w.statistics()
        if grace:
            assert (stats.completed, stats.released, rec.cancelled) == (1, 0, 0)
            assert await queue.pending("k") == 0
        else:
            assert (stats.completed, stats.released, rec.cancelled) == (0, 1, 1)
            assert await queue.pending("k") == 1
            async with RedisWorker(redis_url, queue_name, {"hold": rec.record}) as w2:
                await drain(queue, w2)
            assert rec.runs[-1][2] == 1  # the released run did not count as an attempt

    async def test_cancelling_serve_hands_the_keys_back(
        self, queue: RedisQueue, redis_url: str, queue_name: str
    ) -> None:
        rec = Recorder()
        await queue.enqueue("k", "hold", 1)
        async with RedisWorker(redis_url, queue_name, {"hold": rec.hold}) as w:
            async with anyio.create_task_group() as tg:
                await tg.start(w.serve)
                await rec.started.wait()
                assert "serving, 1 running" in repr(w)
                tg.cancel_scope.cancel()
            assert w.statistics().released == 1
        assert await queue.info() == RedisQueueInfo(ready=1, leased=0, dead=0)

    async def test_serve_misuse(self, redis_url: str, queue_name: str) -> None:
        w = RedisWorker(redis_url, queue_name, {})
        assert "idle" in repr(w)
        with pytest.raises(RuntimeError, match=r"^use 'async with' first"):
            await w.serve()
        async with w, anyio.create_task_group() as tg:
            await tg.start(w.serve)
            with pytest.raises(RuntimeError, match=r"^this worker is already serving$"):
                await w.serve()
            w.stop()
            assert "stopping" in repr(w)
        # A stop before serve() makes it return at once; then it can serve again.
        async with w:
            w.stop()
            await w.serve()
            assert "idle" in repr(w)

    def test_bad_worker_arguments(self) -> None:
        with pytest.raises(TypeError, match=r"^handlers must be a mapping of task names, got"):
            RedisWorker("redis://", "q", [])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^the handler of task 't' must be callable"):
            RedisWorker("redis://", "q", {"t": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match=r"^retry must be a retry policy"):
            RedisWorker("redis://", "q", {}, retry=3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^concurrency must be >= 1, got 0$"):
            RedisWorker("redis://", "q", {}, concurrency=0)
        with pytest.raises(ValueError, match=r"^lease must be >= 0.01 seconds and finite"):
            RedisWorker("redis://", "q", {}, lease=0.001)
        with pytest.raises(ValueError, match=r"^max_lost must be >= 1, got 0$"):
            RedisWorker("redis://", "q", {}, max_lost=0)


class TestRedisUnavailable:
    async def test_worker_survives_a_broken_connection(
        self, redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        rec = Recorder()
        async with RedisQueue(redis_url, queue_name) as q:
            await q.enqueue("k", "record", 1)
            async with RedisWorker(
                redis_url, queue_name, {"record": rec.record}, poll_interval=0.01, lease=0.2
            ) as w:
                real = w._store.run
                failures = {"CLAIM": 1, "COMPLETE": 1}

                async def flaky(script: str, *args: str | bytes | int) -> Any:
                    if failures.get(script):
                        failures[script] -= 1
                        raise coredis.exceptions.ConnectionError("gone")
                    return await real(script, *args)

                monkeypatch.setattr(w._store, "run", flaky)
                await drain(q, w)
        # The first completion was lost: the lease expired and the job ran again.
        assert [r[:3] for r in rec.runs] == [("k", 1, 1), ("k", 1, 2)]

    async def test_renewals_that_fail_until_the_lease_ends_cancel_the_handler(
        self, redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        rec = Recorder()
        async with RedisQueue(redis_url, queue_name) as q:
            await q.enqueue("k", "hold", 1)
            async with RedisWorker(
                redis_url, queue_name, {"hold": rec.hold}, lease=0.3, grace=0
            ) as w:
                real = w._store.run

                async def no_renewals(script: str, *args: str | bytes | int) -> Any:
                    if script == "RENEW":
                        raise coredis.exceptions.ConnectionError("gone")
                    return await real(script, *args)

                monkeypatch.setattr(w._store, "run", no_renewals)
                async with anyio.create_task_group() as tg:
                    await tg.start(w.serve)
                    with anyio.fail_after(20):
                        await rec.cancelled_event.wait()
                    w.stop()
                assert w.statistics().lost == 1
            assert await q.pending("k") == 1

    async def test_a_late_report_is_refused_when_the_key_changed_hands(
        self, redis_url: str, queue_name: str
    ) -> None:
        async def steal(job: RedisJob) -> None:
            async with coredis.Redis.from_url(redis_url) as client:
                await client.hset(f"keyq:{{{queue_name}}}:owner", {job.key: "999999"})

        async with RedisQueue(redis_url, queue_name) as q:
            await q.enqueue("k", "steal", 1)
            async with RedisWorker(redis_url, queue_name, {"steal": steal}, lease=10) as w:
                async with anyio.create_task_group() as tg:
                    await tg.start(w.serve)
                    await until(lambda: has_lost(w))
                    w.stop()
                assert w.statistics().completed == 0
            assert await q.pending("k") == 1

    async def test_a_failed_wait_is_survived(
        self, redis_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        rec = Recorder()
        async with RedisQueue(redis_url, queue_name) as q:
            async with RedisWorker(
                redis_url, queue_name, {"record": rec.record}, poll_interval=0.01
            ) as w:
                failures = 1
                real = w._store.client.blpop

                def blpop(keys: list[str], timeout: float) -> Any:
                    nonlocal failures
                    if failures:
                        failures -= 1
                        raise coredis.exceptions.ConnectionError("gone")
                    return real(keys, timeout=timeout)

                async def no_failures_left() -> bool:
                    return failures == 0

                monkeypatch.setattr(w._store.client, "blpop", blpop)
                async with anyio.create_task_group() as tg:
                    await tg.start(w.serve)
                    await until(no_failures_left)
                    await q.enqueue("k", "record", 1)
                    await until(no_lanes(q))
                    w.stop()

        assert rec.runs[0][:2] == ("k", 1)


async def has_lost(worker: RedisWorker) -> bool:
    return worker.statistics().lost > 0


async def test_odd_stored_values_are_read_defensively(redis_url: str, queue_name: str) -> None:
    from anyio_keyq.redis._queue import decode

    with pytest.raises(ValueError, match=r"^malformed pickled payload: "):
        decode(b"not a pickle", b"p", accept_pickle=True)
    store = Store(redis_url, queue_name)
    await store.close()  # closing what is not open does nothing
    async with RedisQueue(redis_url, queue_name) as q:
        await q.enqueue("k", "missing")
        async with RedisWorker(redis_url, queue_name, {}) as w:
            await drain(q, w)
        [dead] = await q.dead_letters()
        async with coredis.Redis.from_url(redis_url) as client:
            await client.hset(f"keyq:{{{queue_name}}}:job:{dead.id}", {"attempts": "x"})
        [dead] = await q.dead_letters()
        assert dead.attempts == 0


async def test_tls_urls_pass_through(redis_tls_url: str, queue_name: str) -> None:
    rec = Recorder()
    async with RedisQueue(redis_tls_url, queue_name) as q:
        await q.enqueue("k", "record", "over TLS")
        async with RedisWorker(redis_tls_url, queue_name, {"record": rec.record}) as w:
            await drain(q, w)
    assert rec.runs[0][:2] == ("k", "over TLS")


def test_importing_the_package_does_not_import_coredis() -> None:
    code = "import sys, anyio_keyq; assert 'coredis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_public_names() -> None:
    for name in anyio_keyq.redis.__all__:
        obj = getattr(anyio_keyq.redis, name)
        assert obj.__module__ == "anyio_keyq.redis"
        assert obj.__doc__
    for cls in (RedisQueue, RedisWorker, RedisJob, DeadLetter, RedisQueueInfo):
        with pytest.raises(TypeError, match="does not support subclassing"):
            type("Sub", (cls,), {})
