"""Handlers for the worker processes of tests/test_redis_crash.py.

Each run appends lines to a log file of its process, with ``os.write`` on a file
opened with ``O_APPEND``: a line written is in the kernel and survives SIGKILL.
"""

from __future__ import annotations

import os
import random
import time
from typing import TYPE_CHECKING

import anyio
import coredis

from anyio_keyq import Backoff, Retry

if TYPE_CHECKING:
    from anyio_keyq.redis import RedisJob

_fds: dict[str, int] = {}


def _log(*fields: object) -> None:
    path = os.path.join(os.environ["KEYQ_TEST_LOG_DIR"], f"{os.getpid()}.log")
    if path not in _fds:
        _fds[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(_fds[path], (" ".join(map(str, fields)) + "\n").encode())


async def step(job: RedisJob) -> None:
    """Log the start, work a little, log the end."""
    _log("start", job.key, job.payload, job.fence, os.getpid(), f"{time.time():.6f}")
    try:
        await anyio.sleep(random.uniform(0.02, 0.12))
    finally:
        # also when cancelled: the lease was lost, or the worker stops
        _log("end", job.key, job.payload, job.fence, os.getpid(), f"{time.time():.6f}")


# A store that keeps the largest fence it has seen and refuses writes with a smaller one.
FENCED_SET = """
local seen = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) < seen then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
return 1
"""


async def fenced_write(job: RedisJob, value: str) -> int:
    async with coredis.Redis.from_url(os.environ["KEYQ_TEST_URL"]) as client:
        script = client.register_script(FENCED_SET)
        key = f"store:{os.environ['KEYQ_TEST_QUEUE']}:{job.key}"
        result: int = await script([key], [job.fence, value])
        return result


async def pause(job: RedisJob) -> None:
    """The first run writes, signals, and is frozen by the test mid-write."""
    accepted = await fenced_write(job, f"early {os.getpid()} {job.fence}")
    _log("early", job.attempt, job.fence, accepted, os.getpid())
    if job.attempt == 1:
        # The rest models a write already on its way when the process froze.
        with anyio.CancelScope(shield=True):
            _log("frozen", job.attempt, job.fence)
            await anyio.sleep(0.5)  # the test stops the process here for longer
            accepted = await fenced_write(job, f"late {os.getpid()} {job.fence}")
            _log("late", job.attempt, job.fence, accepted)


async def hang(job: RedisJob) -> None:
    """Run until cancelled."""
    _log("hang", job.key, job.attempt)
    await anyio.sleep_forever()


RETRY = Retry(attempts=2, backoff=Backoff(base=0.01), jitter="none")

HANDLERS = {"step": step, "pause": pause, "hang": hang}
