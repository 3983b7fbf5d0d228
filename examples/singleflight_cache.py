"""A thundering herd: 200 requests for 2 user profiles, answered by 2 database queries.

A web service gets a burst of requests that all need a user's profile. Without
deduplication, every request would query the database. A :class:`SingleFlight` with a
``ttl`` makes the first request for a profile query it, makes the requests that come
while that query runs share it, and serves the requests in the next ``ttl`` seconds
from the cache. A request that gives up (here: one with a short time limit) does not
disturb the others, and a failed query is not cached.

The "database" is an in-process fake that counts its queries. Run it with
``python examples/singleflight_cache.py``.
"""

from __future__ import annotations

import anyio

from anyio_keyq import SingleFlight

TTL = 5.0  # seconds a profile stays cached after its query ends
QUERY_TIME = 0.1


class FakeDatabase:
    def __init__(self) -> None:
        self.queries: list[str] = []
        self.down = False

    async def load_profile(self, user: str) -> dict[str, str]:
        self.queries.append(user)
        await anyio.sleep(QUERY_TIME)
        if self.down:
            raise ConnectionError("the database is down")
        return {"user": user, "name": user.title()}


async def main() -> None:
    db = FakeDatabase()
    served: list[dict[str, str]] = []
    gave_up = 0

    async with SingleFlight[str, dict[str, str]](ttl=TTL) as profiles:

        async def handle_request(user: str, time_limit: float) -> None:
            nonlocal gave_up
            with anyio.move_on_after(time_limit) as scope:
                served.append(await profiles.run(user, db.load_profile, user))
            if scope.cancelled_caught:
                gave_up += 1  # its query goes on for the other requests

        # The herd: 200 requests at once, the first ones impatient.
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(handle_request, ("alice", "bob")[i % 2], 0.001 if i < 4 else 5)
        print(f"{len(served)} requests served with {len(db.queries)} queries, {gave_up} gave up")
        assert sorted(db.queries) == ["alice", "bob"]
        assert len(served) == 196
        assert gave_up == 4

        # Within the ttl, the cache answers; no query.
        profile = await profiles.run("alice", db.load_profile, "alice")
        assert profile == {"user": "alice", "name": "Alice"}
        assert len(db.queries) == 2

        # A failure is shared by the requests waiting for it, and not cached.
        db.down = True
        profiles.forget("alice")
        errors: list[BaseException] = []

        async def failing_request() -> None:
            try:
                await profiles.run("alice", db.load_profile, "alice")
            except ConnectionError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(failing_request)
        assert len(errors) == 10
        assert all(exc is errors[0] for exc in errors)  # one query, one exception object
        assert db.queries.count("alice") == 2

        db.down = False
        profile = await profiles.run("alice", db.load_profile, "alice")
        assert profile == {"user": "alice", "name": "Alice"}
        assert db.queries.count("alice") == 3

        stats = profiles.statistics()
        print(stats)
        assert (stats.in_flight, stats.waiting) == (0, 0)
        assert (stats.calls, stats.hits) == (4, 1)
        # 198 requests joined the herd's 2 queries and 9 the failed one, less any of the
        # 4 impatient requests that ran out of time before they could join.
        assert 198 + 9 - 4 <= stats.shared <= 198 + 9


if __name__ == "__main__":
    anyio.run(main)
