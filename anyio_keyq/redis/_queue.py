"""The producer side of a queue on Redis, and the store both sides share."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self, cast

import coredis
from anyio.lowlevel import checkpoint

from .._util import check_positive_int, check_seconds, final
from . import _scripts

if TYPE_CHECKING:
    from types import TracebackType

    from coredis.commands.script import Script

#: Payload formats, as stored in the job's ``fmt`` field.
JSON = b"j"
PICKLE = b"p"

EnqueueItem = tuple[str, str, object] | tuple[str, str, object, str | None]


def check_name(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {value!r}")
    if not value:
        raise ValueError(f"{what} must not be empty, got {value!r}")
    return value


def encode(payload: object, serializer: str, max_payload: int) -> tuple[bytes, bytes]:
    """Return the payload's bytes and format, or raise if it cannot be stored."""
    if serializer == "json":
        try:
            data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"payload must be JSON-serialisable, got {payload!r} ({exc}); pass "
                f"serializer='pickle' to RedisQueue to store other Python objects"
            ) from exc
        fmt = JSON
    else:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        fmt = PICKLE
    if len(data) > max_payload:
        raise ValueError(
            f"payload is {len(data)} bytes once serialised, more than "
            f"max_payload={max_payload}: store large data elsewhere and enqueue a reference"
        )
    return data, fmt


def decode(data: bytes, fmt: bytes, *, accept_pickle: bool) -> object:
    """Return the payload; raise ValueError with a reason when it cannot be read."""
    if fmt == JSON:
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ValueError(f"malformed JSON payload: {exc}") from None
    if fmt == PICKLE:
        if not accept_pickle:
            raise ValueError("the payload is pickled and this worker has accept_pickle=False")
        try:
            return pickle.loads(data)  # opted in with accept_pickle=True
        except Exception as exc:
            raise ValueError(f"malformed pickled payload: {exc!r}") from None
    raise ValueError(f"unknown payload format {fmt!r}")


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Store:
    """A connection to Redis and the queue's scripts: what producers and workers share."""

    def __init__(self, url: str, name: str) -> None:
        if "{" in name or "}" in name:
            raise ValueError(
                f"a queue name must not contain braces (it becomes the hash tag "
                f"{{name}} of every key of the queue), got {name!r}"
            )
        self.url = url
        self.name = name
        self.prefix = f"keyq:{{{name}}}:"
        self.keys = [self.prefix + k for k in _scripts.FIXED_KEYS]
        self.wake_key = self.prefix + "wake"
        self._client: coredis.Redis[bytes] | None = None
        self._scripts: dict[str, Script[bytes]] = {}

    @property
    def client(self) -> coredis.Redis[bytes]:
        if self._client is None:
            raise RuntimeError("use 'async with' first: the connection to Redis is not open")
        return self._client

    async def open(self) -> None:
        if self._client is not None:
            raise RuntimeError("the connection to Redis is already open")
        client = coredis.Redis.from_url(self.url, decode_responses=False)
        await client.__aenter__()
        self._client = client
        self._scripts = {
            name: client.register_script(getattr(_scripts, name))
            for name in (
                "ENQUEUE",
                "CLAIM",
                "RENEW",
                "COMPLETE",
                "RELEASE",
                "DEAD_LETTER",
                "REQUEUE",
                "DISCARD",
            )
        }

    async def close(self) -> None:
        # The exception in flight, if any, is not passed on: coredis would raise it
        # again wrapped in an exception group, out of its connection pool's task group.
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(None, None, None)

    async def run(self, script: str, *args: str | bytes | int) -> Any:
        self.client  # noqa: B018 - raises when closed
        call: Any = self._scripts[script]  # its result type depends on the script
        return await call(self.keys, [self.prefix, *args])

    def lane_key(self, key: str) -> str:
        return f"{self.prefix}lane:{key}"

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"


@final
@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job in a queue's dead letters, from :meth:`RedisQueue.dead_letters`."""

    #: The job's id, as :meth:`RedisQueue.enqueue` returned it.
    id: str
    #: The job's key.
    key: str
    #: The job's task name, or ``None`` when its data was missing from Redis.
    task: str | None
    #: The stored payload, not deserialised (``None`` when missing).
    payload: bytes | None
    #: Why the job is dead: the last exception, an unknown task, a malformed entry...
    reason: str
    #: How many times the job was started.
    attempts: int
    #: When it was dead-lettered, in seconds since the epoch (the server's clock).
    died_at: float


@final
@dataclass(frozen=True, slots=True)
class RedisQueueInfo:
    """A snapshot of a queue's counts in Redis, from :meth:`RedisQueue.info`."""

    #: Keys with pending jobs whose head may be claimed now or after a retry delay.
    ready: int
    #: Keys whose head job is leased by a worker (running, or its worker crashed and
    #: the lease has not expired yet).
    leased: int
    #: Jobs in the dead letters.
    dead: int

    @property
    def lanes(self) -> int:
        """Keys with pending jobs: ``ready + leased``."""
        return self.ready + self.leased


@final
class RedisQueue:
    """The producer side of a queue of keyed lanes on Redis.

    Jobs with the same key run one at a time, in the order they were enqueued, on
    whichever :class:`RedisWorker` claims them; jobs with different keys run in
    parallel. See :doc:`/scaling` for the guarantees and the key layout.

    .. code-block:: python

        async with RedisQueue("redis://localhost:6379", "emails") as queue:
            job_id = await queue.enqueue("user-42", "send_welcome", {"lang": "fr"})

    **Payloads** are stored as JSON by default. ``serializer="pickle"`` stores any
    picklable object instead, and workers must opt in with ``accept_pickle=True``:
    unpickling runs code chosen by whoever can write to the queue, so use it only when
    every writer is trusted.

    ``async with`` opens a connection to Redis (entry and exit are checkpoints); every
    method is a checkpoint, and a cancelled call may or may not have taken effect on
    the server (use an idempotency key to make a retried enqueue harmless).

    :param url: the Redis URL (``redis://``, ``rediss://`` for TLS, ``unix://``), with
        user, password and database as usual; it goes to ``coredis.Redis.from_url``
        unchanged
    :param name: the queue's name: every key of the queue lives under the hash tag
        ``{name}``
    :param serializer: ``"json"`` (default) or ``"pickle"``
    :param max_payload: the largest serialised payload accepted, in bytes
    :param idempotency_ttl: how long, in seconds, an idempotency key is remembered
    """

    __slots__ = ("_idempotency_ttl", "_max_payload", "_serializer", "_store")

    def __init__(
        self,
        url: str,
        name: str = "default",
        *,
        serializer: Literal["json", "pickle"] = "json",
        max_payload: int = 512 * 1024,
        idempotency_ttl: float = 24 * 3600.0,
    ) -> None:
        check_name("url", url)
        check_name("name", name)
        if serializer not in ("json", "pickle"):
            raise ValueError(f"serializer must be 'json' or 'pickle', got {serializer!r}")
        self._serializer = serializer
        self._max_payload = check_positive_int("max_payload", max_payload)
        self._idempotency_ttl = check_seconds("idempotency_ttl", idempotency_ttl, allow_zero=False)
        self._store = Store(url, name)

    @property
    def name(self) -> str:
        """The queue's name."""
        return self._store.name

    def __repr__(self) -> str:
        state = "open" if self._store._client is not None else "closed"
        return f"<anyio_keyq.redis.RedisQueue {self._store.name!r} at {id(self):#x}: {state}>"

    async def __aenter__(self) -> Self:
        await self._store.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self._store.close()

    def _args(self, key: object, task: object, payload: object, idem: object) -> list[bytes | str]:
        check_name("key", key)
        check_name("task", task)
        if idem is not None:
            check_name("idempotency_key", idem)
        data, fmt = encode(payload, self._serializer, self._max_payload)
        return [cast("str", key), cast("str", task), data, fmt, cast("str | None", idem) or ""]

    async def enqueue(
        self, key: str, task: str, payload: object = None, *, idempotency_key: str | None = None
    ) -> str:
        """Append a job to the lane of *key* and return its id.

        :param key: the job's key: jobs with the same key run one at a time, in order
        :param task: the name of the handler that runs it (a key of the worker's
            ``handlers``)
        :param payload: the handler's input, JSON-serialisable by default
        :param idempotency_key: when given, a second enqueue with the same
            idempotency key (within ``idempotency_ttl``) adds nothing and returns the
            first job's id
        :raises TypeError: if the payload cannot be serialised
        :raises ValueError: if the serialised payload is larger than ``max_payload``
        """
        args = self._args(key, task, payload, idempotency_key)
        result: list[bytes | int] = await self._store.run(
            "ENQUEUE", int(self._idempotency_ttl * 1000), *args
        )
        return text(result[0])

    async def enqueue_many(self, jobs: Iterable[EnqueueItem]) -> list[str]:
        """Enqueue several jobs in one atomic step and return their ids, in order.

        Each item is ``(key, task, payload)`` or ``(key, task, payload,
        idempotency_key)``; the jobs of one key keep the order of *jobs*.
        """
        args: list[bytes | str] = []
        for item in jobs:
            if not isinstance(item, tuple) or len(item) not in (3, 4):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(
                    f"each job must be a tuple (key, task, payload[, idempotency_key]), "
                    f"got {item!r}"
                )
            idem = item[3] if len(item) == 4 else None
            args += self._args(item[0], item[1], item[2], idem)
        if not args:
            await checkpoint()
            return []
        result: list[bytes | int] = await self._store.run(
            "ENQUEUE", int(self._idempotency_ttl * 1000), *args
        )
        return [text(result[i]) for i in range(0, len(result), 2)]

    async def pending(self, key: str) -> int:
        """Return how many jobs of *key* are not done yet (the running one included)."""
        check_name("key", key)
        return await self._store.client.llen(self._store.lane_key(key))

    async def job_ids(self, key: str) -> list[str]:
        """Return the ids of the jobs of *key* not done yet, the running one first."""
        check_name("key", key)
        ids = await self._store.client.lrange(self._store.lane_key(key), 0, -1)
        return [text(i) for i in ids]

    async def lanes(self) -> int:
        """Return how many keys have pending jobs."""
        return (await self.info()).lanes

    async def info(self) -> RedisQueueInfo:
        """Return the queue's counts, read in one atomic step."""
        client = self._store.client
        prefix = self._store.prefix
        async with client.pipeline(transaction=True) as pipe:
            ready = pipe.zcard(prefix + "ready")
            leased = pipe.zcard(prefix + "leases")
            dead = pipe.zcard(prefix + "dead")
        return RedisQueueInfo(ready=await ready, leased=await leased, dead=await dead)

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """Return up to *limit* dead letters, the oldest first."""
        check_positive_int("limit", limit)
        client = self._store.client
        ids = [text(i) for i in await client.zrange(self._store.prefix + "dead", 0, limit - 1)]
        async with client.pipeline(transaction=False) as pipe:
            requests = [pipe.hgetall(self._store.job_key(i)) for i in ids]
        letters: list[DeadLetter] = []
        for job_id, request in zip(ids, requests, strict=True):
            fields = await request
            task = fields.get(b"task")
            letters.append(
                DeadLetter(
                    id=job_id,
                    key=text(fields.get(b"key", b"")),
                    task=None if task is None else text(task),
                    payload=fields.get(b"payload"),
                    reason=text(fields.get(b"reason", b"")),
                    attempts=_int(fields.get(b"attempts")),
                    died_at=_int(fields.get(b"died")) / 1000,
                )
            )
        return letters

    async def requeue(self, job_id: str) -> bool:
        """Move a dead job back to the tail of its key's lane, with its attempts reset.

        :return: ``False`` if *job_id* is not in the dead letters
        """
        check_name("job_id", job_id)
        return bool(await self._store.run("REQUEUE", job_id))

    async def discard(self, job_id: str) -> bool:
        """Delete a dead job for good.

        :return: ``False`` if *job_id* is not in the dead letters
        """
        check_name("job_id", job_id)
        return bool(await self._store.run("DISCARD", job_id))


def _int(value: bytes | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
