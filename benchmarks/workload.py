"""The workload: the jobs, the bodies every design runs, and the checks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import anyio
from anyio.lowlevel import checkpoint

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .designs import Body, JobSpec

#: The body awaits one checkpoint, or sleeps a random 0-2 ms.
Variant = Literal["checkpoint", "sleep"]
VARIANTS: Final[tuple[Variant, ...]] = ("checkpoint", "sleep")

#: Stands for "every job has a key of its own" in the lists of key counts.
ALL_DISTINCT: Final = 0

#: The longest sleep of the sleeping variant, in seconds.
MAX_SLEEP: Final = 0.002


def key_count(keys: int, n: int) -> int:
    """Where a *keys* setting sits on the K axis for a workload of *n* jobs."""
    return n if keys == ALL_DISTINCT else keys


def distinct_keys(jobs: Sequence[JobSpec]) -> int:
    """How many distinct keys *jobs* really have (random draws repeat some)."""
    return len({key for key, _ in jobs})


def make_jobs(n: int, keys: int, seed: int = 1) -> list[JobSpec]:
    """*n* jobs over *keys* keys (:data:`ALL_DISTINCT`: one key per job).

    Job *i* has index *i*; its key is drawn uniformly at random (seeded), so the keys
    interleave irregularly as real traffic does.
    """
    if keys == ALL_DISTINCT or keys >= n:
        return [(i, i) for i in range(n)]
    rng = random.Random(seed)
    return [(rng.randrange(keys), i) for i in range(n)]


def make_durations(n: int, seed: int = 2) -> list[float]:
    """The sleeps of the sleeping variant: uniform in [0, 2 ms], seeded."""
    rng = random.Random(seed)
    return [rng.uniform(0.0, MAX_SLEEP) for _ in range(n)]


@dataclass(slots=True)
class Check:
    """What a run did, as seen by the bodies."""

    expected: int
    ran: int
    #: Jobs that ran more than once, or indices that were never submitted.
    duplicates: int
    #: Keys whose jobs did not start in submission order.
    out_of_order_keys: int
    #: Times a body started while another body of its key was running.
    overlaps: int

    @property
    def complete(self) -> bool:
        return self.ran == self.expected and self.duplicates == 0

    @property
    def ordered(self) -> bool:
        return self.out_of_order_keys == 0 and self.overlaps == 0

    def ok(self, ordered: bool) -> bool:
        """Whether the run passes: every job ran once, and in order if *ordered*."""
        return self.complete and (self.ordered or not ordered)

    def describe(self) -> str:
        return (
            f"ran {self.ran}/{self.expected}, {self.duplicates} duplicates, "
            f"{self.out_of_order_keys} keys out of order, {self.overlaps} overlaps"
        )


class Recorder:
    """Makes the body of a check run, and checks afterwards what the bodies saw.

    The body appends its index to the log of its key when it starts and counts
    overlaps within a key, then awaits one checkpoint (or sleeps). Timing runs use
    :func:`plain_body` instead: the workload's body and nothing else.
    """

    __slots__ = ("_busy", "_log", "_overlaps", "_variant", "durations", "jobs")

    def __init__(
        self,
        jobs: Sequence[JobSpec],
        variant: Variant,
        durations: Sequence[float] | None = None,
    ) -> None:
        self.jobs = jobs
        self._variant: Variant = variant
        # Keys are 0..K-1 (or 0..N-1 when distinct); a prefix of the jobs may use any.
        nkeys = 1 + max((key for key, _ in jobs), default=0)
        self._log: list[list[int]] = [[] for _ in range(nkeys)]
        self._busy = [0] * nkeys
        self._overlaps = [0]
        if variant == "sleep" and durations is None:
            durations = make_durations(len(jobs))
        self.durations = durations

    def body(self) -> Body:
        """The body, as a closure over local names (no attribute look-ups per job)."""
        log = self._log
        busy = self._busy
        overlaps = self._overlaps
        if self._variant == "checkpoint":

            async def body(key: int, index: int) -> None:
                log[key].append(index)
                if busy[key]:
                    overlaps[0] += 1
                busy[key] += 1
                await checkpoint()
                busy[key] -= 1

            return body

        durations = self.durations
        assert durations is not None
        sleep = anyio.sleep

        async def sleeping_body(key: int, index: int) -> None:
            log[key].append(index)
            if busy[key]:
                overlaps[0] += 1
            busy[key] += 1
            await sleep(durations[index])
            busy[key] -= 1

        return sleeping_body

    def check(self) -> Check:
        n = len(self.jobs)
        seen = bytearray(n)
        ran = duplicates = out_of_order = 0
        for indices in self._log:
            ran += len(indices)
            previous = -1
            in_order = True
            for index in indices:
                if not 0 <= index < n or seen[index]:
                    duplicates += 1
                else:
                    seen[index] = 1
                if index <= previous:
                    in_order = False
                previous = index
            if not in_order:
                out_of_order += 1
        return Check(n, ran, duplicates, out_of_order, self._overlaps[0])


def plain_body(variant: Variant, durations: Sequence[float] | None) -> Body:
    """The body of a timing run: one checkpoint (or one sleep), nothing recorded."""
    if variant == "checkpoint":

        async def body(key: int, index: int) -> None:
            await checkpoint()

        return body

    assert durations is not None
    sleep = anyio.sleep

    async def sleeping_body(key: int, index: int) -> None:
        await sleep(durations[index])

    return sleeping_body


def counting_body(variant: Variant, durations: Sequence[float] | None) -> tuple[Body, list[int]]:
    """A body that only counts (for the memory runs: nothing allocated per job)."""
    count = [0]
    if variant == "checkpoint":

        async def body(key: int, index: int) -> None:
            count[0] += 1
            await checkpoint()

        return body, count

    assert durations is not None
    sleep = anyio.sleep

    async def sleeping_body(key: int, index: int) -> None:
        count[0] += 1
        await sleep(durations[index])

    return sleeping_body, count
