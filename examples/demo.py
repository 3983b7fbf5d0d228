"""``make demo``: a chat backend's day in a few seconds.

50,000 messages from 2,000 users go through ``KeyedLanes(limit=200)``, keyed by user.
They come in bursts of 1 to 12 messages from the same user. Most handlers take 0 to
5 ms, 3% take 100 to 300 ms, about 1% fail, and about 0.5% hang until their per-job
timeout cuts them off.

Several producer tasks submit the messages: each producer owns a share of the users, so
each user's messages are submitted in order. A lane accepts at most ``max_pending``
queued messages of its user, so a producer that runs ahead waits for room. Each
producer retires its handles in order, as they settle, and counts their outcomes: no
failure goes unnoticed, and as every job ends within its timeout, the handles in
flight stay bounded too.

At the end, a table shows the throughput, the latency from submission to the end of
the handler, the peak concurrency, the lanes, the outcomes, and whether every user's
messages were handled in order. The exit code is 1 if a check failed.

Options: ``--messages N --users U --backend {asyncio,uvloop,trio}``, and ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import functools
import math
import random
import sys
from collections import deque
from typing import TYPE_CHECKING

import anyio
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from anyio_keyq import JobStatus, KeyedLanes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio_keyq import Job


LIMIT = 200  # handlers running at once, over all users
MAX_PENDING = 16  # queued messages per user before producers have to wait
PRODUCERS = 16
TIMEOUT = 0.5  # seconds a handler may run
SEED = 20_240_611


class Kind(enum.Enum):
    """What a handler will do with a message."""

    OK = "ok"
    SLOW = "slow"
    FAIL = "fail"
    HANG = "hang"


class Message:
    __slots__ = ("delay", "kind", "seq", "submitted_at", "user")

    def __init__(self, user: int, seq: int, kind: Kind, delay: float) -> None:
        self.user = user
        self.seq = seq  # the message's position among its user's messages
        self.kind = kind
        self.delay = delay  # seconds the handler works on it
        self.submitted_at = 0.0


def make_workload(messages: int, users: int, seed: int) -> list[Message]:
    """A reproducible stream of messages, interleaved across users.

    People often send a few messages in a row: the stream comes in bursts of 1 to 12
    messages from the same user.
    """
    rng = random.Random(seed)
    counts = [0] * users
    stream: list[Message] = []
    while len(stream) < messages:
        user = rng.randrange(users)
        burst = rng.choice((1, 1, 1, 1, 2, 2, 3, 4, 6, 12))
        for _ in range(min(burst, messages - len(stream))):
            roll = rng.random()
            if roll < 0.005:
                kind, delay = Kind.HANG, 60.0
            elif roll < 0.015:
                kind, delay = Kind.FAIL, rng.uniform(0, 0.005)
            elif roll < 0.045:
                kind, delay = Kind.SLOW, rng.uniform(0.1, 0.3)
            else:
                kind, delay = Kind.OK, rng.uniform(0, 0.005)
            stream.append(Message(user, counts[user], kind, delay))
            counts[user] += 1
    return stream


class HandlerError(Exception):
    """A handler's failure, as a real one might raise on bad input."""


class ChatServer:
    """The chat server: handles messages and checks their order per user."""

    def __init__(self, users: int) -> None:
        self.next_seq = [0] * users
        self.busy = [False] * users
        self.out_of_order = 0
        self.overlapping = 0
        self.latencies: list[float] = []

    async def handle(self, msg: Message) -> None:
        user = msg.user
        if msg.seq != self.next_seq[user]:
            self.out_of_order += 1
        self.next_seq[user] = msg.seq + 1
        if self.busy[user]:
            self.overlapping += 1
        self.busy[user] = True
        try:
            await anyio.sleep(msg.delay)
            if msg.kind is Kind.FAIL:
                raise HandlerError(f"cannot parse message {msg.seq} of user {user}")
        finally:
            # Runs when the handler returns, fails or is cut off by its timeout.
            self.busy[user] = False
            self.latencies.append(anyio.current_time() - msg.submitted_at)


class Sampled:
    """Peaks seen by the progress display, which samples the statistics 10 times a second."""

    def __init__(self) -> None:
        self.lanes = 0
        self.waiting_for_room = 0


class Outcomes:
    """The outcomes of the jobs, as their handles tell them."""

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.cancelled = 0

    def retire(self, job: Job[None]) -> None:
        """Retrieve the outcome of a settled job, and count it."""
        if job.status is JobStatus.CANCELLED:
            self.cancelled += 1
            return
        exc = job.exception()
        if exc is None:
            self.completed += 1
        elif isinstance(exc, TimeoutError):
            self.timed_out += 1
        elif isinstance(exc, HandlerError):
            self.failed += 1
        else:
            raise exc


async def produce(
    lanes: KeyedLanes[int], server: ChatServer, share: list[Message], outcomes: Outcomes
) -> None:
    """Submit a share of the messages, each in the lane of its user."""
    in_flight: deque[Job[None]] = deque()
    for msg in share:
        msg.submitted_at = anyio.current_time()
        # Waits while the user's lane already has MAX_PENDING queued messages.
        in_flight.append(await lanes.submit(msg.user, server.handle, msg, timeout=TIMEOUT))
        while in_flight and in_flight[0].done():
            outcomes.retire(in_flight.popleft())
    for job in in_flight:
        await job.wait()
        outcomes.retire(job)


def event_loop_name() -> str:
    """The name of the running event loop: trio, asyncio, or asyncio + uvloop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "trio"
    return "asyncio + uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value below which *fraction* of the sorted sample lies (nearest rank)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


async def main(
    messages: int = 50_000,
    users: int = 2_000,
    *,
    seed: int = SEED,
    console: Console | None = None,
) -> None:
    """Run the workload and print the summary; raise ``SystemExit(1)`` if a check fails."""
    console = console or Console()
    workload = make_workload(messages, users, seed)
    shares: list[list[Message]] = [[] for _ in range(PRODUCERS)]
    for msg in workload:
        shares[msg.user % PRODUCERS].append(msg)
    server = ChatServer(users)
    outcomes = Outcomes()
    lanes = KeyedLanes[int](limit=LIMIT, max_pending=MAX_PENDING)
    sampled = Sampled()

    progress = Progress(
        TextColumn("[bold]messages"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        auto_refresh=False,
    )
    bar = progress.add_task("messages", total=messages, info="")

    def refresh() -> None:
        stats = lanes.statistics()
        sampled.lanes = max(sampled.lanes, stats.lanes)
        sampled.waiting_for_room = max(sampled.waiting_for_room, stats.waiting_for_room)
        settled = stats.completed + stats.failed + stats.timed_out + stats.cancelled
        info = f"{stats.running:3} running, {stats.lanes:4} lanes"
        progress.update(bar, completed=settled, info=info)
        progress.refresh()

    async def show_progress() -> None:
        while True:
            refresh()
            await anyio.sleep(0.1)

    started = anyio.current_time()
    with progress:
        async with anyio.create_task_group() as tg:
            tg.start_soon(show_progress)
            async with lanes, anyio.create_task_group() as producers:
                for share in shares:
                    producers.start_soon(produce, lanes, server, share, outcomes)
            tg.cancel_scope.cancel()
        elapsed = anyio.current_time() - started
        refresh()
    stats = lanes.statistics()

    expected = {kind: sum(msg.kind is kind for msg in workload) for kind in Kind}
    per_user = [0] * users
    for msg in workload:
        per_user[msg.user] += 1
    keys_seen = sum(count > 0 for count in per_user)
    in_order = server.out_of_order == server.overlapping == 0 and server.next_seq == per_user
    # The handles and the statistics agree, every message settled, none was cancelled,
    # and every hanging handler was cut off. (On a badly overloaded machine, a slow
    # handler could time out too, so that count is a lower bound.)
    accounted = (
        (outcomes.completed, outcomes.failed, outcomes.timed_out, outcomes.cancelled)
        == (stats.completed, stats.failed, stats.timed_out, stats.cancelled)
        and stats.completed + stats.failed + stats.timed_out == stats.submitted == messages
        and stats.cancelled == 0
        and stats.timed_out >= expected[Kind.HANG]
    )
    torn_down = len(lanes) == 0
    latencies = sorted(server.latencies)

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:,.1f} ms"

    def check(ok: bool) -> str:
        return "[bold green]✓[/]" if ok else "[bold red]✗[/]"

    table = Table(
        title=f"anyio-keyq demo on {event_loop_name()}", show_header=False, title_justify="left"
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("messages / users", f"{messages:,} / {users:,}")
    table.add_row("elapsed", f"{elapsed:,.2f} s")
    table.add_row("throughput", f"{messages / elapsed:,.0f} msgs/s")
    for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        table.add_row(f"latency {name} (submit → end)", ms(percentile(latencies, fraction)))
    table.add_row("peak concurrency", f"{stats.peak_running} (limit {LIMIT})")
    table.add_row(
        "lanes: keys seen / left at the end", f"{keys_seen:,} / {len(lanes)} {check(torn_down)}"
    )
    table.add_row("lanes live at once (sampled peak)", f"{sampled.lanes:,}")
    table.add_row("producers waiting for room (sampled peak)", f"{sampled.waiting_for_room:,}")
    table.add_row("completed", f"{stats.completed:,}")
    table.add_row("failed", f"{stats.failed:,}")
    table.add_row("timed out", f"{stats.timed_out:,}")
    table.add_row("cancelled", f"{stats.cancelled:,}")
    table.add_row("every outcome accounted for", check(accounted))
    table.add_row("every user's messages handled in order", check(in_order))
    console.print(table)

    if not (in_order and accounted and torn_down):
        raise SystemExit(1)


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Run a chat workload through KeyedLanes and summarise it."
    )
    parser.add_argument("--messages", type=int, default=50_000, help="default: %(default)s")
    parser.add_argument("--users", type=int, default=2_000, help="default: %(default)s")
    parser.add_argument(
        "--backend",
        choices=("asyncio", "uvloop", "trio"),
        default="asyncio",
        help="default: %(default)s",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.users < 1:
        parser.error("--messages and --users must be at least 1")
    backend = "trio" if args.backend == "trio" else "asyncio"
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    anyio.run(
        functools.partial(main, args.messages, args.users, seed=args.seed),
        backend=backend,
        backend_options=options,
    )


if __name__ == "__main__":
    cli(sys.argv[1:])
