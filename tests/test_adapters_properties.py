"""The iterator adapters against their plain sequential equivalents, with Hypothesis.

Each example draws a source, how long each call takes (a number of checkpoints, or of
virtual seconds for ``batched``), which calls fail, and the adapter's options; the
adapter must give what a sequential loop gives: the same results, in the same order
where order is promised, and one of the expected failures, raised bare.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.lowlevel import checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyio_keyq import amap, batched, keyed_amap

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

pytestmark = pytest.mark.anyio

PROPERTIES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


class Boom(Exception):
    """The failure of one call (or of the source), carrying the item's index."""


class CountingSource:
    """Yields 0, 1, 2, ...: the indexes of the items. Counts reads, records closing."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reads = 0
        self.closed = False

    async def agen(self) -> AsyncIterator[int]:
        try:
            for i in range(self.n):
                self.reads += 1
                yield i
        finally:
            self.closed = True

    def gen(self) -> Iterator[int]:
        try:
            for i in range(self.n):
                self.reads += 1
                yield i
        finally:
            self.closed = True


def plan_items() -> st.SearchStrategy[list[tuple[int, bool]]]:
    """Per item: how many checkpoints its call takes, and whether it fails."""
    return st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9).map(lambda n: n == 0)))


async def pause(steps: int) -> None:
    for _ in range(steps):
        await checkpoint()


def check_outcome(
    got: list[Any],
    raised: BaseException | None,
    plan: list[tuple[int, bool]],
    *,
    ordered: bool,
    return_exceptions: bool,
) -> None:
    """Compare what an adapter gave with what a sequential loop over *plan* gives."""
    failing = {i for i, (_, fails) in enumerate(plan) if fails}
    sequential: list[Any] = [("boom", i) if i in failing else i * 10 for i in range(len(plan))]
    shown = [("boom", v.args[0]) if isinstance(v, Boom) else v for v in got]
    if return_exceptions or not failing:
        assert raised is None
        if ordered:
            assert shown == sequential
        else:
            assert sorted(shown, key=repr) == sorted(sequential, key=repr)
        return
    # the first failure in time ends the iteration: one of the failures, raised bare
    assert type(raised) is Boom
    assert raised.args[0] in failing
    assert all(isinstance(v, int) for v in shown)
    assert len(set(shown)) == len(shown)
    assert {v // 10 for v in shown}.isdisjoint(failing)
    if ordered:
        assert shown == sequential[: len(shown)]


@PROPERTIES
@given(
    plan=plan_items(),
    limit=st.integers(1, 4),
    ordered=st.booleans(),
    return_exceptions=st.booleans(),
    async_source=st.booleans(),
    consumer_steps=st.integers(0, 2),
)
async def test_amap_gives_what_a_sequential_map_gives(
    plan: list[tuple[int, bool]],
    limit: int,
    ordered: bool,
    return_exceptions: bool,
    async_source: bool,
    consumer_steps: int,
) -> None:
    running = peak = 0

    async def fn(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            steps, fails = plan[i]
            await pause(steps)
            if fails:
                raise Boom(i)
            return i * 10
        finally:
            running -= 1

    source = CountingSource(len(plan))
    items: Iterable[int] | AsyncIterator[int] = source.agen() if async_source else source.gen()
    got: list[Any] = []
    raised: BaseException | None = None
    try:
        async with amap(
            fn, items, limit=limit, ordered=ordered, return_exceptions=return_exceptions
        ) as results:
            async for value in results:
                got.append(value)
                assert source.reads - len(got) <= 2 * limit
                await pause(consumer_steps)
    except Boom as exc:
        raised = exc
    check_outcome(got, raised, plan, ordered=ordered, return_exceptions=return_exceptions)
    assert peak <= limit
    assert running == 0
    assert source.closed or source.reads == 0


@PROPERTIES
@given(
    plan=st.lists(
        st.tuples(
            st.sampled_from("abc"), st.integers(0, 3), st.integers(0, 9).map(lambda n: n == 0)
        )
    ),
    limit=st.integers(1, 4),
    per_key=st.integers(1, 2),
    ordered=st.booleans(),
    return_exceptions=st.booleans(),
    consumer_steps=st.integers(0, 2),
)
async def test_keyed_amap_gives_what_a_sequential_map_gives_in_order_per_key(
    plan: list[tuple[str, int, bool]],
    limit: int,
    per_key: int,
    ordered: bool,
    return_exceptions: bool,
    consumer_steps: int,
) -> None:
    running = peak = 0
    active: defaultdict[str, int] = defaultdict(int)
    started: defaultdict[str, list[int]] = defaultdict(list)

    async def fn(i: int) -> int:
        nonlocal running, peak
        key, steps, fails = plan[i]
        running += 1
        peak = max(peak, running)
        active[key] += 1
        assert active[key] <= per_key
        started[key].append(i)
        try:
            await pause(steps)
            if fails:
                raise Boom(i)
            return i * 10
        finally:
            running -= 1
            active[key] -= 1

    source = CountingSource(len(plan))
    got: list[Any] = []
    raised: BaseException | None = None
    try:
        async with keyed_amap(
            fn,
            source.agen(),
            key=lambda i: plan[i][0],
            limit=limit,
            per_key=per_key,
            ordered=ordered,
            return_exceptions=return_exceptions,
        ) as results:
            async for value in results:
                got.append(value)
                assert source.reads - len(got) <= 2 * limit
                await pause(consumer_steps)
    except Boom as exc:
        raised = exc
    steps_plan = [(steps, fails) for _, steps, fails in plan]
    check_outcome(got, raised, steps_plan, ordered=ordered, return_exceptions=return_exceptions)
    assert peak <= limit
    assert running == 0
    for key, indexes in started.items():
        # each key's calls started in source order, with no gap unless a failure ended it
        expected = [i for i, (k, _, _) in enumerate(plan) if k == key]
        assert indexes == expected[: len(indexes)]
        if raised is None:
            assert indexes == expected
    assert source.closed or source.reads == 0


# -- batched, on virtual time ---------------------------------------------------------

#: Items arrive on multiples of 1/8 s; deadlines fall on odd multiples of 1/16 s, so an
#: arrival and a deadline never coincide and the expected batches are unambiguous.
TICK = 0.125


def expected_batches(
    times: list[float], size: int, max_wait: float | None, fail_at: int | None
) -> list[tuple[float, list[int]]]:
    """When a consumer that always waits gets which batch, computed sequentially."""
    out: list[tuple[float, list[int]]] = []
    batch: list[int] = []
    first = 0.0

    def emit_if_expired(now: float) -> None:
        nonlocal batch
        if batch and max_wait is not None and first + max_wait < now:
            out.append((first + max_wait, batch))
            batch = []

    count = len(times) if fail_at is None else fail_at
    for i in range(count):
        emit_if_expired(times[i])
        if not batch:
            first = times[i]
        batch.append(i)
        if len(batch) == size:
            out.append((times[i], batch))
            batch = []
    end = times[fail_at] if fail_at is not None else (times[-1] if times else 0.0)
    emit_if_expired(end)
    if batch and fail_at is None:
        out.append((end, batch))  # the source ended: the partial batch at once
    return out


class TestBatchedOnVirtualTime:
    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    @PROPERTIES
    @given(
        data=st.data(),
        gaps=st.lists(st.integers(0, 4)),
        size=st.integers(1, 5),
        wait_sixteenths=st.one_of(st.none(), st.integers(0, 8)),
    )
    async def test_batched_emits_what_a_sequential_timer_model_emits(
        self,
        data: st.DataObject,
        gaps: list[int],
        size: int,
        wait_sixteenths: int | None,
    ) -> None:
        max_wait = None if wait_sixteenths is None else (2 * wait_sixteenths + 1) / 16
        times: list[float] = []
        now = 0.0
        for gap in gaps:
            now += gap * TICK
            times.append(now)
        fail_at = data.draw(
            st.one_of(st.none(), st.integers(0, len(times) - 1)) if times else st.none()
        )
        start = anyio.current_time()

        async def source() -> AsyncIterator[int]:
            for i, at in enumerate(times):
                await anyio.sleep_until(start + at)
                if i == fail_at:
                    raise Boom(i)
                yield i

        seen: list[tuple[float, list[int]]] = []
        raised: BaseException | None = None
        try:
            async with batched(source(), size=size, max_wait=max_wait) as batches:
                async for batch in batches:
                    seen.append((anyio.current_time() - start, batch))
        except Boom as exc:
            raised = exc
        assert seen == expected_batches(times, size, max_wait, fail_at)
        assert (raised is None) == (fail_at is None)
        flat = [i for _, batch in seen for i in batch]
        assert flat == list(range(len(flat)))
