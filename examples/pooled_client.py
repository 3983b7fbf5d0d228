"""A pooled client: 20 requests over 3 TCP connections, which survive a server restart.

A tiny server on 127.0.0.1 answers each message in upper case. The client sends 20
requests at once through a :class:`Pool` of at most 3 connections: three connections
are opened, and each carries several requests in turn. Then the server drops every
connection, as a restarting server would. The pool does not know yet; when the next
request borrows a connection, ``validate`` (a ping round trip) finds it dead, the pool
closes it and tries the next one, and finally opens a fresh connection. Leaving the
pool's block closes the connections it still holds, and the server sees them end.

Run it with ``python examples/pooled_client.py``.
"""

from __future__ import annotations

import anyio
from anyio.abc import SocketAttribute, SocketStream

from anyio_keyq import Pool


class UpperServer:
    """Answers every message in upper case; can drop all its connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.closed = 0
        self.scopes: set[anyio.CancelScope] = set()
        self.changed = anyio.Event()

    async def handle(self, stream: SocketStream) -> None:
        self.accepted += 1
        with anyio.CancelScope() as scope:
            self.scopes.add(scope)
            async with stream:
                async for message in stream:
                    await stream.send(message.upper())
        self.scopes.discard(scope)
        self.closed += 1
        self.changed.set()

    def drop_all(self) -> None:
        for scope in self.scopes:
            scope.cancel()

    async def wait_closed(self, count: int) -> None:
        while self.closed < count:
            self.changed = anyio.Event()
            await self.changed.wait()


async def main() -> None:
    server = UpperServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)

    async def connect() -> SocketStream:
        return await anyio.connect_tcp("127.0.0.1", port)

    async def alive(stream: SocketStream) -> bool:
        """A ping round trip: False if the server is gone."""
        try:
            await stream.send(b"ping")
            return await stream.receive() == b"PING"
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return False

    async with listener, anyio.create_task_group() as server_tasks:
        server_tasks.start_soon(listener.serve, server.handle)

        async with Pool(connect, max_size=3, validate=alive, close_timeout=1) as pool:

            async def request(text: str) -> str:
                async with pool.acquire() as stream:
                    await stream.send(text.encode())
                    return (await stream.receive()).decode()

            answers: list[str] = []

            async def client(i: int) -> None:
                answers.append(await request(f"hello {i}"))

            async with anyio.create_task_group() as clients:
                for i in range(20):
                    clients.start_soon(client, i)
            assert sorted(answers) == sorted(f"HELLO {i}" for i in range(20))
            print(f"{len(answers)} answers over {pool.statistics().created} connections")

            server.drop_all()
            await server.wait_closed(3)
            print(f"the server dropped {server.closed} connections")

            answer = await request("hello again")
            stats = pool.statistics()
            print(
                f"after the drop: {answer!r} ({stats.invalid} connections refused by "
                f"validate, {stats.created - 3} new)"
            )
            assert (stats.invalid, stats.created, stats.idle, stats.borrowed) == (3, 4, 1, 0)

        await server.wait_closed(4)
        print(f"server: {server.accepted} connections accepted, {server.closed} closed")
        assert server.accepted == server.closed == 4
        server_tasks.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
