"""The iterator adapters amap, keyed_amap and batched, on every backend."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from anyio_keyq import amap, batched, keyed_amap

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Iterator
    from contextlib import AbstractAsyncContextManager

from .helpers import assert_cancel_point, assert_schedule_point

pytestmark = pytest.mark.anyio


class Fatal(BaseException):
    """A BaseException that is not a cancellation."""


class Source:
    """An async (or sync) generator over *items* that records reads and its closing."""

    def __init__(self, items: Iterable[Any], *, then_block: bool = False) -> None:
        self.items = list(items)
        self.then_block = then_block
        self.reads = 0
        self.closed = False
        self.cancelled = False

    async def agen(self) -> AsyncIterator[Any]:
        try:
            for item in self.items:
                self.reads += 1
                yield item
            if self.then_block:
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        finally:
            self.closed = True

    def gen(self) -> Iterator[Any]:
        try:
            for item in self.items:
                self.reads += 1
                yield item
        finally:
            self.closed = True


class Calls:
    """An async function that waits until the test opens its item, recording calls.

    Items in *auto*, and every item after ``open_all()``, finish after one checkpoint.
    """

    def __init__(self, *, auto: Iterable[Any] = ()) -> None:
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.cancelled: list[Any] = []
        self.events: dict[Any, anyio.Event] = defaultdict(anyio.Event)
        self.auto = set(auto)
        self.everything = False
        self.running = 0
        self.peak = 0

    async def __call__(self, item: Any) -> Any:
        self.started.append(item)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.everything or item in self.auto:
                await checkpoint()
            else:
                await self.events[item].wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(item)
            raise
        finally:
            self.running -= 1
        self.finished.append(item)
        return item

    def open(self, *items: Any) -> None:
        for item in items:
            self.events[item].set()

    def open_all(self) -> None:
        self.everything = True
        for event in self.events.values():
            event.set()


async def instant(item: Any) -> Any:
    await checkpoint()
    return item


async def double(item: int) -> int:
    await checkpoint()
    return item * 2


def task_ids() -> set[int]:
    return {task.id for task in anyio.get_running_tasks()}


async def cancel_when_blocked(scope: anyio.CancelScope) -> None:
    await anyio.wait_all_tasks_blocked()
    scope.cancel()


KINDS = ["amap", "amap-unordered", "keyed_amap", "keyed_amap-ordered", "batched"]


def by_parity(item: int) -> int:
    return item % 2


def open_adapter(
    kind: str,
    fn: Callable[[Any], Any],
    source: Any,
    limit: int = 2,
    key: Callable[[Any], Any] = by_parity,
) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
    """The adapter *kind* over *source*; batched ignores *fn* and groups by 2."""
    if kind == "amap":
        return amap(fn, source, limit=limit)
    if kind == "amap-unordered":
        return amap(fn, source, limit=limit, ordered=False)
    if kind == "keyed_amap":
        return keyed_amap(fn, source, key=key, limit=limit)
    if kind == "keyed_amap-ordered":
        return keyed_amap(fn, source, key=key, limit=limit, ordered=True)
    assert kind == "batched"
    return batched(source, size=2, max_wait=None)


def first_result(kind: str) -> Any:
    return [0, 1] if kind == "batched" else 0


class TestAmap:
    @pytest.mark.parametrize("sync", [False, True], ids=["async-source", "sync-source"])
    async def test_results_come_in_source_order(self, sync: bool) -> None:
        calls = Calls()
        source = Source(range(6))
        async with amap(calls, source.gen() if sync else source.agen(), limit=3) as results:
            await anyio.wait_all_tasks_blocked()
            assert calls.started == [0, 1, 2]
            got: list[int] = []
            for item in (2, 1):
                calls.open(item)
                await anyio.wait_all_tasks_blocked()
            calls.open_all()
            async for value in results:
                got.append(value)
        assert got == [0, 1, 2, 3, 4, 5]
        assert calls.finished[:2] == [2, 1]
        assert source.closed

    async def test_unordered_yields_in_completion_order(self) -> None:
        calls = Calls()
        async with amap(calls, range(3), limit=3, ordered=False) as results:
            await anyio.wait_all_tasks_blocked()
            got: list[int] = []
            for item in (2, 0, 1):
                calls.open(item)
                got.append(await results.__anext__())
            with pytest.raises(StopAsyncIteration):
                await results.__anext__()
        assert got == [2, 0, 1]

    async def test_limit_is_reached_and_never_exceeded(self) -> None:
        calls = Calls()
        async with amap(calls, range(10), limit=3, ordered=False) as results:
            await anyio.wait_all_tasks_blocked()
            assert calls.running == 3
            got = []
            for item in range(10):
                calls.open(item)
                got.append(await results.__anext__())
                await anyio.wait_all_tasks_blocked()
                assert calls.running <= 3
        assert got == list(range(10))
        assert calls.peak == 3

    async def test_shared_capacity_limiter_caps_the_calls(self) -> None:
        limiter = anyio.CapacityLimiter(2)
        calls = Calls()
        async with amap(calls, range(6), limit=limiter) as results:
            await anyio.wait_all_tasks_blocked()
            assert calls.running == 2
            assert limiter.borrowed_tokens == 2
            calls.open_all()
            assert [value async for value in results] == list(range(6))
        assert calls.peak == 2
        assert limiter.borrowed_tokens == 0

    async def test_calls_wait_for_tokens_held_elsewhere(self) -> None:
        limiter = anyio.CapacityLimiter(1)
        await limiter.acquire()
        async with amap(instant, range(3), limit=limiter) as results:
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().tasks_waiting == 1
            limiter.release()
            assert [value async for value in results] == [0, 1, 2]
        assert limiter.borrowed_tokens == 0

    async def test_limiter_tokens_are_released_on_cancellation(self) -> None:
        limiter = anyio.CapacityLimiter(2)
        calls = Calls(auto=[0])
        async with amap(calls, range(6), limit=limiter) as results:
            assert await results.__anext__() == 0
            await anyio.wait_all_tasks_blocked()
            assert limiter.borrowed_tokens == 2
        assert limiter.borrowed_tokens == 0
        assert sorted(calls.cancelled) == [1, 2]

    async def test_empty_source(self) -> None:
        async with amap(instant, [], limit=4) as results:
            assert [value async for value in results] == []
            with pytest.raises(StopAsyncIteration):
                await results.__anext__()

    async def test_workers_are_spawned_only_as_needed(self) -> None:
        before = len(task_ids())
        async with amap(instant, [1, 2], limit=100) as results:
            await anyio.wait_all_tasks_blocked()
            assert len(task_ids()) - before <= 3
            assert [value async for value in results] == [1, 2]

    @pytest.mark.parametrize("kind", ["amap", "keyed_amap"])
    async def test_calls_see_the_context_of_the_async_with(self, kind: str) -> None:
        request = ContextVar("request", default="none")

        async def fn(item: int) -> str:
            await checkpoint()
            return request.get()

        request.set("entry")
        async with open_adapter(kind, fn, range(20), limit=4) as results:
            request.set("body")  # set after entering: no call sees it
            seen = {value async for value in results}
        assert seen == {"entry"}

    async def test_a_plain_function_returning_no_awaitable_fails_the_iteration(self) -> None:
        def not_async(item: int) -> int:
            return item

        with pytest.raises(TypeError, match="can't be used in 'await' expression"):
            async with amap(not_async, [1], limit=1) as results:  # type: ignore[arg-type]
                async for _ in results:
                    pass  # pragma: no cover

    async def test_repr(self) -> None:
        adapter = amap(instant, [1], limit=1)
        assert re.fullmatch(r"<anyio_keyq\.amap at 0x[0-9a-f]+: new, 0 read, .*>", repr(adapter))
        async with adapter as results:
            assert [value async for value in results] == [1]
            assert "running, 1 read, 0 unfinished, 0 ready, 1 delivered" in repr(results)
        assert "closed" in repr(adapter)


class TestKeyedAmap:
    async def test_same_key_in_source_order_one_at_a_time_other_keys_in_parallel(
        self,
    ) -> None:
        log: list[tuple[str, str, int]] = []
        active: defaultdict[str, int] = defaultdict(int)

        async def apply(event: tuple[str, int]) -> tuple[str, int]:
            account, seq = event
            active[account] += 1
            assert active[account] == 1
            log.append(("start", account, seq))
            for _ in range(seq % 3 + 1):
                await checkpoint()
            active[account] -= 1
            return event

        events = [(account, seq) for seq in range(8) for account in ("a", "b", "c")]
        async with keyed_amap(apply, events, key=lambda e: e[0], limit=3) as results:
            got = [value async for value in results]
        assert sorted(got) == sorted(events)
        for account in "abc":
            assert [seq for _, acc, seq in log if acc == account] == list(range(8))

    async def test_ordered_yields_in_source_order(self) -> None:
        calls = Calls()
        items = list(range(6))
        async with keyed_amap(calls, items, key=lambda i: i % 3, limit=3, ordered=True) as out:
            await anyio.wait_all_tasks_blocked()
            assert sorted(calls.started) == [0, 1, 2]  # keys start in any order
            calls.open(2)
            await anyio.wait_all_tasks_blocked()
            assert calls.started[3:] == [5]
            calls.open_all()
            assert [value async for value in out] == items

    async def test_unordered_yields_in_completion_order(self) -> None:
        calls = Calls()
        async with keyed_amap(calls, range(3), key=lambda i: i, limit=3) as results:
            await anyio.wait_all_tasks_blocked()
            got = []
            for item in (1, 2, 0):
                calls.open(item)
                got.append(await results.__anext__())
        assert got == [1, 2, 0]

    async def test_global_limit_holds_across_keys(self) -> None:
        calls = Calls()
        async with keyed_amap(calls, range(10), key=lambda i: i, limit=3) as results:
            await anyio.wait_all_tasks_blocked()
            assert calls.running == 3
            calls.open_all()
            assert sorted([value async for value in results]) == list(range(10))
        assert calls.peak == 3

    async def test_shared_capacity_limiter(self) -> None:
        limiter = anyio.CapacityLimiter(2)
        calls = Calls()
        async with keyed_amap(calls, range(6), key=lambda i: i, limit=limiter) as results:
            await anyio.wait_all_tasks_blocked()
            assert limiter.borrowed_tokens == 2
            calls.open_all()
            assert sorted([value async for value in results]) == list(range(6))
        assert calls.peak == 2
        assert limiter.borrowed_tokens == 0

    async def test_per_key_runs_that_many_of_one_key_at_once(self) -> None:
        calls = Calls()
        async with keyed_amap(calls, range(6), key=lambda i: "k", limit=5, per_key=2) as out:
            await anyio.wait_all_tasks_blocked()
            assert calls.started == [0, 1]
            calls.open_all()
            assert sorted([value async for value in out]) == list(range(6))
        assert calls.peak == 2
        assert calls.started == list(range(6))

    async def test_failing_key_function_is_raised_bare(self) -> None:
        source = Source(range(5))

        def key(item: int) -> int:
            if item == 3:
                raise KeyError(item)
            return item

        with pytest.raises(KeyError, match="^3$"):
            async with keyed_amap(instant, source.agen(), key=key, limit=2) as results:
                async for _ in results:
                    pass
        assert source.closed

    async def test_unhashable_key_is_raised_bare(self) -> None:
        with pytest.raises(TypeError, match="key must be hashable"):
            async with keyed_amap(instant, [[1]], key=lambda item: item, limit=2) as results:
                async for _ in results:
                    pass  # pragma: no cover


class TestFailures:
    @pytest.mark.parametrize("kind", ["amap", "amap-unordered", "keyed_amap"])
    async def test_first_failure_cancels_the_calls_in_flight_and_is_raised_bare(
        self, kind: str
    ) -> None:
        calls = Calls()
        source = Source([0, 1, 2, 3, 4, 5])

        async def fn(item: int) -> int:
            if item == 2:
                await checkpoint()
                raise ValueError("two")
            result: int = await calls(item)
            return result

        got = []
        with pytest.raises(ValueError, match="^two$") as caught:
            cm = open_adapter(kind, fn, source.agen(), limit=3, key=lambda item: item)
            async with cm as results:
                async for value in results:
                    got.append(value)  # pragma: no cover
        assert type(caught.value) is ValueError  # not an ExceptionGroup
        assert got == []
        assert {0, 1} <= set(calls.started)
        assert sorted(calls.cancelled) == sorted(calls.started)
        assert calls.finished == []
        assert source.closed

    @pytest.mark.parametrize("kind", ["amap", "keyed_amap"])
    async def test_only_the_first_of_simultaneous_failures_is_raised(self, kind: str) -> None:
        async def fn(item: int) -> int:
            await checkpoint()
            raise ValueError(item)

        with pytest.raises(ValueError, match=r"^\d$"):
            async with open_adapter(kind, fn, range(4), limit=4, key=lambda i: i) as results:
                await anyio.wait_all_tasks_blocked()
                await results.__anext__()

    async def test_results_not_yet_handed_out_are_dropped(self) -> None:
        calls = Calls(auto=[0, 1])

        async def fn(item: int) -> int:
            if item == 2:
                raise ValueError(item)
            result: int = await calls(item)
            return result

        async with amap(fn, range(5), limit=3) as results:
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(ValueError, match="^2$"):
                await results.__anext__()
            with pytest.raises(StopAsyncIteration):
                await results.__anext__()

    @pytest.mark.parametrize("kind", ["amap", "keyed_amap", "batched"])
    async def test_failing_source_is_raised_bare(self, kind: str) -> None:
        async def broken() -> AsyncIterator[int]:
            yield 0
            yield 1
            raise OSError("disk on fire")

        got = []
        with pytest.raises(OSError, match="^disk on fire$"):
            async with open_adapter(kind, instant, broken()) as results:
                async for value in results:
                    got.append(value)
        assert got in ([], [0], [0, 1], [1], [[0, 1]])

    @pytest.mark.parametrize("kind", ["amap", "keyed_amap"])
    async def test_stop_async_iteration_from_fn_does_not_end_the_loop_quietly(
        self, kind: str
    ) -> None:
        async def fn(item: int) -> int:
            await checkpoint()
            raise StopAsyncIteration

        with pytest.raises(RuntimeError, match=r"got StopAsyncIteration$") as caught:
            async with open_adapter(kind, fn, range(3)) as results:
                async for _ in results:
                    pass  # pragma: no cover
        assert type(caught.value.__cause__) is StopAsyncIteration

    async def test_failing_sync_source_is_raised_bare(self) -> None:
        def broken() -> Iterator[int]:
            yield 0
            raise OSError("bad sector")

        with pytest.raises(OSError, match="^bad sector$"):
            async with amap(instant, broken(), limit=2) as results:
                async for _ in results:
                    pass

    @pytest.mark.parametrize("kind", ["amap", "amap-unordered", "keyed_amap"])
    async def test_return_exceptions_yields_them_as_values(self, kind: str) -> None:
        async def fn(item: int) -> int:
            await checkpoint()
            if item % 3 == 0:
                raise ValueError(item)
            return item

        ordered = kind == "amap"
        if kind.startswith("amap"):
            cm = amap(fn, range(7), limit=2, ordered=ordered, return_exceptions=True)
        else:
            cm = keyed_amap(fn, range(7), key=lambda i: i % 2, limit=2, return_exceptions=True)
        async with cm as results:
            got = [value async for value in results]
        values = sorted(v for v in got if isinstance(v, int))
        errors = sorted(e.args[0] for e in got if isinstance(e, ValueError))
        assert values == [1, 2, 4, 5]
        assert errors == [0, 3, 6]
        if ordered:
            assert [v if isinstance(v, int) else v.args[0] for v in got] == list(range(7))

    @pytest.mark.parametrize("kind", ["amap", "keyed_amap"])
    async def test_base_exceptions_are_never_returned_as_values(self, kind: str) -> None:
        async def fn(item: int) -> int:
            await checkpoint()
            if item == 1:
                raise Fatal("stop everything")
            return item

        if kind == "amap":
            cm = amap(fn, range(4), limit=1, return_exceptions=True)
        else:
            cm = keyed_amap(fn, range(4), key=lambda i: i, limit=1, return_exceptions=True)
        got: list[int | Exception] = []
        with pytest.raises(Fatal, match="^stop everything$"):
            async with cm as results:
                async for value in results:
                    got.append(value)
        assert got in ([], [0])


class TestBackpressure:
    @pytest.mark.parametrize("kind", ["amap", "amap-unordered", "keyed_amap"])
    @pytest.mark.parametrize("limit", [1, 3])
    async def test_source_is_never_more_than_twice_limit_ahead(self, kind: str, limit: int) -> None:
        source = Source(range(40))
        received = 0
        async with open_adapter(kind, instant, source.agen(), limit=limit) as results:
            await anyio.wait_all_tasks_blocked()
            assert source.reads == 2 * limit
            async for _ in results:
                received += 1
                assert source.reads - received <= 2 * limit
                await anyio.wait_all_tasks_blocked()  # a slow consumer
                assert source.reads - received == min(2 * limit, 40 - received)
        assert received == 40

    @pytest.mark.parametrize("kind", ["amap", "keyed_amap-ordered"])
    async def test_a_slow_first_item_holds_back_the_source_when_ordered(self, kind: str) -> None:
        calls = Calls(auto=range(1, 100))
        source = Source(range(100))
        async with open_adapter(kind, calls, source.agen(), limit=3) as results:
            await anyio.wait_all_tasks_blocked()
            assert source.reads == 6
            assert calls.running == 1
            calls.open(0)
            assert [value async for value in results] == list(range(100))

    async def test_hot_key_fills_the_window_and_no_more(self) -> None:
        calls = Calls()
        source = Source(range(50))
        async with keyed_amap(calls, source.agen(), key=lambda i: "hot", limit=4) as results:
            await anyio.wait_all_tasks_blocked()
            assert source.reads == 8
            assert calls.started == [0]
            calls.open_all()
            assert [value async for value in results] == list(range(50))

    async def test_batched_reads_at_most_one_batch_ahead(self) -> None:
        source = Source(range(20))
        async with batched(source.agen(), size=4, max_wait=None) as batches:
            await anyio.wait_all_tasks_blocked()
            assert source.reads == 4
            taken = 0
            async for batch in batches:
                taken += len(batch)
                await anyio.wait_all_tasks_blocked()
                assert source.reads - taken == min(4, 20 - taken)


class TestCleanup:
    @pytest.mark.parametrize("sync", [False, True], ids=["async-source", "sync-source"])
    @pytest.mark.parametrize("kind", KINDS)
    async def test_break_cancels_the_work_and_closes_the_source(
        self, kind: str, sync: bool
    ) -> None:
        if sync and kind == "batched":
            source = Source(range(3))
        else:
            source = Source(range(10), then_block=kind == "batched")
        calls = Calls(auto=[0])
        before = task_ids()
        async with open_adapter(kind, calls, source.gen() if sync else source.agen()) as results:
            async for value in results:
                assert value == first_result(kind)
                break
            await anyio.wait_all_tasks_blocked()
            in_flight = calls.running
        assert source.closed
        assert calls.running == 0
        assert len(calls.cancelled) == in_flight
        assert task_ids() == before
        if kind != "batched":
            assert in_flight == 2

    @pytest.mark.parametrize("kind", KINDS)
    async def test_exception_in_the_body_propagates_bare_and_cleans_up(self, kind: str) -> None:
        source = Source(range(10), then_block=True)
        calls = Calls(auto=[0])
        before = task_ids()
        with pytest.raises(LookupError, match="^body$") as caught:
            async with open_adapter(kind, calls, source.agen()) as results:
                async for _ in results:
                    await anyio.wait_all_tasks_blocked()
                    raise LookupError("body")
        assert type(caught.value) is LookupError
        assert source.closed
        assert calls.running == 0
        assert task_ids() == before

    @pytest.mark.parametrize("where", ["in __anext__", "in the body"])
    @pytest.mark.parametrize("kind", KINDS)
    async def test_cancelling_the_consumer_cancels_the_work_and_closes_the_source(
        self, kind: str, where: str
    ) -> None:
        source = Source(range(10) if kind != "batched" else [0, 1], then_block=True)
        calls = Calls(auto=[0])
        before = task_ids()
        got = []
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_when_blocked, scope)
                async with open_adapter(kind, calls, source.agen()) as results:
                    async for value in results:
                        got.append(value)
                        if where == "in the body":
                            await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert got == [first_result(kind)]
        assert source.closed
        assert calls.running == 0
        if kind != "batched":
            assert len(calls.cancelled) == 2
        else:
            assert source.cancelled  # the reader was waiting inside the source
        assert task_ids() == before

    @pytest.mark.parametrize("cancelled", [False, True], ids=["break", "cancelled"])
    async def test_the_source_is_closed_like_aclosing_would(self, cancelled: bool) -> None:
        cleanup: list[str] = []

        async def source() -> AsyncIterator[int]:
            try:
                for i in range(10):
                    yield i
            finally:
                try:
                    await checkpoint()
                    cleanup.append("awaited")
                except anyio.get_cancelled_exc_class():
                    cleanup.append("cancelled")
                    raise

        with anyio.CancelScope() as scope:
            async with amap(instant, source(), limit=1) as results:
                async for _ in results:
                    await anyio.wait_all_tasks_blocked()  # suspended at a yield
                    if cancelled:
                        scope.cancel()
                    break
        assert scope.cancelled_caught == cancelled
        # aclose() ran in the consumer's scope: cancelled if the consumer was
        assert cleanup == ["cancelled" if cancelled else "awaited"]

    @pytest.mark.parametrize("kind", KINDS)
    async def test_an_untouched_source_is_closed_too(self, kind: str) -> None:
        class Items:
            def __init__(self) -> None:
                self.closed = False

            def __iter__(self) -> Items:
                return self

            def __next__(self) -> int:
                raise StopIteration  # pragma: no cover

            def close(self) -> None:
                self.closed = True

        class AsyncItems:
            def __init__(self) -> None:
                self.closed = False

            def __aiter__(self) -> AsyncItems:
                return self

            async def __anext__(self) -> int:
                await anyio.sleep_forever()
                raise AssertionError  # pragma: no cover

            async def aclose(self) -> None:
                self.closed = True

        items, async_items = Items(), AsyncItems()
        async with open_adapter(kind, instant, items):
            pass
        async with open_adapter(kind, instant, async_items):
            await anyio.wait_all_tasks_blocked()
        assert items.closed
        assert async_items.closed


class TestMisuse:
    @pytest.mark.parametrize("kind", KINDS)
    async def test_iterating_before_entering_raises(self, kind: str) -> None:
        adapter = open_adapter(kind, instant, range(3))
        iterator: Any = adapter
        name = kind.split("-")[0]
        with pytest.raises(
            RuntimeError,
            match=rf"^iterate the results of {name}\(\) inside its 'async with' block",
        ):
            async for _ in iterator:
                pass  # pragma: no cover

    @pytest.mark.parametrize("kind", KINDS)
    async def test_iterating_after_the_block_raises(self, kind: str) -> None:
        async with open_adapter(kind, instant, range(3)) as results:
            pass
        with pytest.raises(RuntimeError, match=r"'async with' block of .* has exited"):
            await results.__anext__()

    @pytest.mark.parametrize("kind", KINDS)
    async def test_two_tasks_iterating_at_once_raises(self, kind: str) -> None:
        source = Source([], then_block=True)
        async with open_adapter(kind, instant, source.agen()) as results:
            async with anyio.create_task_group() as tg:
                tg.start_soon(results.__anext__)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(RuntimeError, match="^another task is already iterating"):
                    await results.__anext__()
                tg.cancel_scope.cancel()

    async def test_a_waiting_consumer_in_another_task_learns_the_block_exited(self) -> None:
        source = Source([], then_block=True)
        errors: list[BaseException] = []

        async def consume(results: AsyncIterator[Any]) -> None:
            try:
                await results.__anext__()
            except RuntimeError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            async with amap(instant, source.agen(), limit=1) as results:
                tg.start_soon(consume, results)
                await anyio.wait_all_tasks_blocked()
        assert len(errors) == 1
        assert "has exited" in str(errors[0])

    @pytest.mark.parametrize("kind", KINDS)
    async def test_entering_twice_raises(self, kind: str) -> None:
        adapter = open_adapter(kind, instant, range(3))
        async with adapter:
            pass
        with pytest.raises(RuntimeError, match=r"can be entered only once$"):
            async with adapter:
                pass  # pragma: no cover

    async def test_iteration_can_resume_after_a_break_inside_the_block(self) -> None:
        async with amap(instant, range(6), limit=2) as results:
            async for value in results:
                if value == 2:
                    break
            assert [value async for value in results] == [3, 4, 5]
            assert [value async for value in results] == []


class TestCheckpoints:
    @pytest.mark.parametrize("kind", KINDS)
    async def test_anext_is_a_checkpoint_when_a_result_is_ready(self, kind: str) -> None:
        async with open_adapter(kind, instant, range(6)) as results:
            await anyio.wait_all_tasks_blocked()
            await assert_cancel_point(results.__anext__)
            first = await assert_schedule_point(results.__anext__)
            assert first in (first_result(kind), 1)  # 1 may finish first when unordered

    @pytest.mark.parametrize("kind", KINDS)
    async def test_anext_is_a_checkpoint_at_the_end(self, kind: str) -> None:
        async with open_adapter(kind, instant, []) as results:
            await anyio.wait_all_tasks_blocked()
            await assert_cancel_point(results.__anext__)

            async def end() -> None:
                with pytest.raises(StopAsyncIteration):
                    await results.__anext__()

            await assert_schedule_point(end)

    @pytest.mark.parametrize("kind", KINDS)
    async def test_entering_is_a_checkpoint(self, kind: str) -> None:
        async def enter() -> None:
            async with open_adapter(kind, instant, []):
                pass

        await assert_cancel_point(enter)
        await assert_schedule_point(enter)


async def agen_function() -> AsyncIterator[int]:
    yield 1  # pragma: no cover


_amap: Any = amap
_keyed_amap: Any = keyed_amap
_batched: Any = batched

# (callable making the bad call, exception type, the message it starts with)
BAD_CALLS: list[tuple[Callable[[], object], type[Exception], str]] = [
    (lambda: _amap(42, [1], limit=1), TypeError, "fn must be a function, got 42"),
    (
        lambda: _amap(instant, 42, limit=1),
        TypeError,
        "source must be an iterable or an async iterable, got 42",
    ),
    (
        lambda: _amap(instant, agen_function, limit=1),
        TypeError,
        r"source must be .*, got <function agen_function at 0x[0-9a-f]+>; call it to get an "
        r"iterable",
    ),
    (lambda: _amap(instant, [1], limit=0), ValueError, "limit must be >= 1, got 0"),
    (lambda: _amap(instant, [1], limit=-3), ValueError, "limit must be >= 1, got -3"),
    (lambda: _amap(instant, [1], limit=2.5), TypeError, r"limit must be an int >= 1, got 2\.5"),
    (lambda: _amap(instant, [1], limit=True), TypeError, "limit must be an int >= 1, got True"),
    (
        lambda: _amap(instant, [1], limit=anyio.CapacityLimiter(math.inf)),
        ValueError,
        "limit must have a finite number of tokens, got a CapacityLimiter with "
        "total_tokens=inf: they set the number of worker tasks and the read-ahead bound",
    ),
    (lambda: _keyed_amap(instant, [1], key=1, limit=1), TypeError, "key must be a function, got 1"),
    (
        lambda: _keyed_amap(None, [1], key=str, limit=1),
        TypeError,
        "fn must be a function, got None",
    ),
    (lambda: _keyed_amap(instant, [1], key=str, limit=0), ValueError, "limit must be >= 1, got 0"),
    (
        lambda: _keyed_amap(instant, [1], key=str, limit=1, per_key=0),
        ValueError,
        "per_key must be >= 1, got 0",
    ),
    (
        lambda: _keyed_amap(instant, None, key=str, limit=1),
        TypeError,
        "source must be an iterable or an async iterable, got None",
    ),
    (lambda: _batched([1], size=0, max_wait=None), ValueError, "size must be >= 1, got 0"),
    (
        lambda: _batched([1], size=1.0, max_wait=None),
        TypeError,
        r"size must be an int >= 1, got 1\.0",
    ),
    (
        lambda: _batched([1], size=1, max_wait=0),
        ValueError,
        "max_wait must be > 0 seconds, got 0",
    ),
    (
        lambda: _batched([1], size=1, max_wait=-1.5),
        ValueError,
        r"max_wait must be > 0 seconds, got -1\.5",
    ),
    (
        lambda: _batched([1], size=1, max_wait=math.nan),
        ValueError,
        "max_wait must be > 0 seconds, got nan",
    ),
    (
        lambda: _batched([1], size=1, max_wait="1"),
        TypeError,
        "max_wait must be a number of seconds, got '1'",
    ),
    (
        lambda: _batched(3, size=1, max_wait=None),
        TypeError,
        "source must be an iterable or an async iterable, got 3",
    ),
]


class TestBadInput:
    @pytest.mark.parametrize(("call", "exc_type", "message"), BAD_CALLS)
    async def test_raised_at_the_call_site_naming_the_parameter(
        self, call: Callable[[], object], exc_type: type[Exception], message: str
    ) -> None:
        with pytest.raises(exc_type, match=f"^{message}$"):
            call()

    async def test_a_coroutine_instead_of_a_function_gets_a_hint(self) -> None:
        with pytest.raises(TypeError, match=r"^fn must be a function, got the awaitable .*: pass"):
            _amap(instant(1), [1], limit=1)


class TestBatched:
    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    async def test_size_only(self) -> None:
        async with batched(range(7), size=3, max_wait=None) as batches:
            assert [batch async for batch in batches] == [[0, 1, 2], [3, 4, 5], [6]]

    async def test_infinite_max_wait_is_size_only(self) -> None:
        async with batched(range(4), size=3, max_wait=math.inf) as batches:
            assert [batch async for batch in batches] == [[0, 1, 2], [3]]

    async def test_repr(self) -> None:
        adapter = batched(range(3), size=2, max_wait=None)
        assert re.fullmatch(r"<anyio_keyq\.batched at 0x[0-9a-f]+: new>", repr(adapter))
        async with adapter as batches:
            assert repr(batches).endswith(": running>")

    async def test_empty_source_gives_no_batch(self) -> None:
        async with batched([], size=3, max_wait=1) as batches:
            assert [batch async for batch in batches] == []

    async def test_exact_emission_instants(self) -> None:
        # item: arrival time (s after start). max_wait 0.25, size 3.
        arrivals = [0.5, 0.625, 1.0, 1.125, 1.1875, 2.0, 3.0]
        start = anyio.current_time()

        async def source() -> AsyncIterator[float]:
            for at in arrivals:
                await anyio.sleep_until(start + at)
                yield at

        seen: list[tuple[float, list[float]]] = []
        async with batched(source(), size=3, max_wait=0.25) as batches:
            async for batch in batches:
                seen.append((anyio.current_time() - start, batch))
        assert seen == [
            (0.75, [0.5, 0.625]),  # 0.25 s after its first item
            (1.1875, [1.0, 1.125, 1.1875]),  # full before its time was up
            (2.25, [2.0]),
            (3.0, [3.0]),  # the source ended: the partial batch at once
        ]

    async def test_a_late_consumer_gets_the_batch_at_once_grown_up_to_size(self) -> None:
        async def source() -> AsyncIterator[int]:
            for i in range(7):
                await anyio.sleep(0.125)
                yield i

        start = anyio.current_time()
        seen: list[tuple[float, list[int]]] = []
        async with batched(source(), size=4, max_wait=0.1875) as batches:
            async for batch in batches:
                seen.append((anyio.current_time() - start, batch))
                await anyio.sleep(1)  # busy: the next batch is due meanwhile
        assert seen == [(0.3125, [0, 1]), (1.3125, [2, 3, 4, 5]), (2.3125, [6])]

    async def test_the_clock_of_a_batch_starts_at_its_first_item(self) -> None:
        async def source() -> AsyncIterator[int]:
            await anyio.sleep(10)
            yield 1
            await anyio.sleep(0.5)
            yield 2

        start = anyio.current_time()
        seen: list[tuple[float, list[int]]] = []
        async with batched(source(), size=10, max_wait=1) as batches:
            async for batch in batches:
                seen.append((anyio.current_time() - start, batch))
        assert seen == [(10.5, [1, 2])]
