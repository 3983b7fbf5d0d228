"""Static type checks of anyio_keyq.redis, read by mypy and pyright."""

from __future__ import annotations

from typing import Any, assert_type

from anyio_keyq.redis import (
    DeadLetter,
    RedisJob,
    RedisQueue,
    RedisQueueInfo,
    RedisWorker,
    RedisWorkerStatistics,
    RetryPolicy,
)


async def send(job: RedisJob) -> None:
    assert_type(job.payload, Any)
    assert_type(job.fence, int)
    assert_type(job.attempt, int)


class Fixed:
    def next_delay(
        self, attempt: int, exc: BaseException, previous: float | None = None
    ) -> float | None:
        return 1.0 if attempt < 3 else None


async def check_redis() -> None:
    async with RedisQueue("redis://localhost", "emails") as queue:
        assert_type(queue, RedisQueue)
        assert_type(await queue.enqueue("k", "send", {"a": 1}, idempotency_key="x"), str)
        assert_type(await queue.enqueue_many([("k", "send", 1), ("k", "send", 2, "i")]), list[str])
        assert_type(await queue.pending("k"), int)
        assert_type(await queue.job_ids("k"), list[str])
        assert_type(await queue.lanes(), int)
        assert_type(await queue.info(), RedisQueueInfo)
        assert_type(await queue.dead_letters(limit=10), list[DeadLetter])
        assert_type(await queue.requeue("1"), bool)
        assert_type(await queue.discard("1"), bool)
        await queue.enqueue(1, "send")  # type: ignore[arg-type]
    policy: RetryPolicy = Fixed()
    async with RedisWorker(
        "redis://localhost", "emails", {"send": send}, concurrency=4, lease=10, retry=policy
    ) as worker:
        assert_type(worker, RedisWorker)
        assert_type(worker.statistics(), RedisWorkerStatistics)
        assert_type(worker.stop(), None)
        await worker.serve()
    RedisQueue("redis://", serializer="yaml")  # type: ignore[arg-type]
    RedisWorker("redis://", "q", {"send": len})  # type: ignore[dict-item]
