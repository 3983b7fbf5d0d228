"""KeyedLanes with a rate per key and a global rate, on virtual clocks: exact instants."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from anyio_keyq import JobStatus, KeyedLanes, RateLimiter

from .conftest import virtual_backend as anyio_backend  # noqa: F401

pytestmark = pytest.mark.anyio


class Clock:
    """Records the instant each job starts, relative to the clock at creation."""

    def __init__(self) -> None:
        self.origin = anyio.current_time()
        self.starts: dict[Any, float] = {}

    async def job(self, tag: Any, seconds: float = 0.0) -> Any:
        # Rounded: the clock sums floats, so 0.1 + 0.1 + 0.1 is 0.30000000000000004.
        self.starts[tag] = round(anyio.current_time() - self.origin, 9)
        await anyio.sleep(seconds)
        return tag


async def test_each_key_has_a_bucket_of_its_own() -> None:
    clock = Clock()
    async with KeyedLanes[str](rate=RateLimiter(10, per=1, burst=1)) as lanes:
        for i in range(3):
            lanes.submit_nowait("a", clock.job, ("a", i))
            lanes.submit_nowait("b", clock.job, ("b", i))
    for key in "ab":
        assert [clock.starts[(key, i)] for i in range(3)] == [0.0, 0.1, 0.2]


async def test_a_burst_then_the_steady_pace() -> None:
    clock = Clock()
    async with KeyedLanes[str](rate=RateLimiter(2, per=1, burst=2)) as lanes:
        for i in range(5):
            lanes.submit_nowait("k", clock.job, i)
    assert [clock.starts[i] for i in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.5]


async def test_a_lane_waiting_for_its_rate_holds_no_permit() -> None:
    clock = Clock()
    async with KeyedLanes[str](limit=1, rate=RateLimiter(1, per=1, burst=1)) as lanes:
        lanes.submit_nowait("a", clock.job, "a1")
        lanes.submit_nowait("a", clock.job, "a2")
        lanes.submit_nowait("b", clock.job, "b1", 0.25)
    assert clock.starts == {"a1": 0.0, "b1": 0.0, "a2": 1.0}


async def test_a_global_rate_spaces_every_job() -> None:
    clock = Clock()
    async with KeyedLanes[int](global_rate=RateLimiter(2, per=1, burst=1)) as lanes:
        for key in range(4):
            lanes.submit_nowait(key, clock.job, key)
    assert [clock.starts[key] for key in range(4)] == [0.0, 0.5, 1.0, 1.5]


async def test_rates_per_key_and_global_together() -> None:
    clock = Clock()
    per_key = RateLimiter(1, per=1, burst=1)
    overall = RateLimiter(4, per=1, burst=1)
    async with KeyedLanes[str](rate=per_key, global_rate=overall) as lanes:
        for i in range(2):
            for key in "ab":
                lanes.submit_nowait(key, clock.job, (key, i))
    assert clock.starts == {("a", 0): 0.0, ("b", 0): 0.25, ("a", 1): 1.0, ("b", 1): 1.25}


async def test_the_global_rate_is_shared_with_other_users_first_come() -> None:
    overall = RateLimiter(1, per=1, burst=1)
    clock = Clock()
    await overall.acquire()  # someone else took the token at 0
    async with KeyedLanes[str](global_rate=overall) as lanes:
        lanes.submit_nowait("k", clock.job, "job")
    assert clock.starts == {"job": 1.0}


async def test_an_idle_lane_stays_until_its_bucket_is_full() -> None:
    clock = Clock()
    async with KeyedLanes[str](rate=RateLimiter(1, per=2, burst=1)) as lanes:
        await lanes.run("k", clock.job, 1)
        assert "k" in lanes  # its bucket is empty: forgetting it would allow a burst
        await anyio.sleep(1)
        await lanes.run("k", clock.job, 2)
        assert clock.starts[2] == 2.0
        await anyio.sleep(1.5)
        assert "k" in lanes  # full again at 4.0
        await anyio.sleep(1)
        assert "k" not in lanes
    assert lanes.statistics().lanes == 0


async def test_cancelling_a_job_that_waits_for_its_rate() -> None:
    clock = Clock()
    async with KeyedLanes[str](rate=RateLimiter(1, per=1, burst=1)) as lanes:
        lanes.submit_nowait("k", clock.job, 1)
        waiting = lanes.submit_nowait("k", clock.job, 2)
        await anyio.sleep(0.5)
        waiting.cancel()
        third = lanes.submit_nowait("k", clock.job, 3)
        await third
    assert waiting.status is JobStatus.CANCELLED
    assert 2 not in clock.starts
    assert clock.starts[3] == 1.0


@pytest.mark.parametrize("name", ["rate", "global_rate"])
async def test_a_rate_must_be_a_rate_limiter(name: str) -> None:
    with pytest.raises(TypeError, match=f"^{name} must be a RateLimiter or None, got 10$"):
        KeyedLanes[str](**{name: 10})  # type: ignore[arg-type]


async def test_a_global_rate_at_a_tenth_of_a_second() -> None:
    clock = Clock()
    async with KeyedLanes[int](global_rate=RateLimiter(10, per=1, burst=1)) as lanes:
        for key in range(6):
            lanes.submit_nowait(key, clock.job, key)
    assert [clock.starts[key] for key in range(6)] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


async def test_a_global_rate_with_a_burst_shared_with_a_waiting_task() -> None:
    overall = RateLimiter(4, per=1, burst=4)
    clock = Clock()
    for _ in range(4):
        await overall.acquire()
    async with anyio.create_task_group() as tg, KeyedLanes[int](global_rate=overall) as lanes:
        tg.start_soon(overall.acquire, 2)  # waits first: it goes first
        await anyio.wait_all_tasks_blocked()
        for key in range(3):
            lanes.submit_nowait(key, clock.job, key)
    assert [clock.starts[key] for key in range(3)] == [0.75, 1.0, 1.25]
