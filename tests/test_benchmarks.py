"""The benchmark suite's quick mode: every design runs every job, in order where promised.

No timing assertions: the point is that the suite never rots.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from benchmarks.designs import DEFAULT_DESIGNS, DESIGNS
from benchmarks.workload import ALL_DISTINCT, Recorder, make_jobs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.designs import Body, JobSpec

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("asyncio", "uvloop", "trio")
QUICK_KEYS = ("1", "100", "all distinct")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("benchmarks")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    results: dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return out, results


def test_quick_run_writes_its_outputs(quick_run: tuple[Path, dict[str, Any]]) -> None:
    out, results = quick_run
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.rst"]
    assert results["config"]["quick"] is True
    machine = results["machine"]
    assert machine["cpu_count"] >= 1
    assert {"anyio", "trio", "uvloop"} <= set(machine["versions"])
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| backend | design |" in markdown
    assert "keyed-lanes" in markdown
    rst = (out / "results.rst").read_text(encoding="utf-8")
    assert ".. generated-tables-start" in rst
    assert ".. list-table::" in rst


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_design_ran_every_job_in_order(
    quick_run: tuple[Path, dict[str, Any]], backend: str
) -> None:
    _, results = quick_run
    cells = [c for c in results["throughput"] if c["backend"] == backend]
    seen = {(c["variant"], c["design"], c["keys"]) for c in cells}
    expected = {
        (variant, design, keys)
        for variant in ("checkpoint", "sleep")
        for design in DEFAULT_DESIGNS
        for keys in QUICK_KEYS
    }
    assert seen == expected
    for cell in cells:
        design = DESIGNS[cell["design"]]
        where = f"{cell['variant']} {cell['design']} K={cell['keys']}"
        if design.backends is not None and backend not in design.backends:
            assert cell["status"] == "n/a", where
            continue
        if backend in design.unordered_on:
            assert cell["status"] == "incorrect", where
            assert not cell["seconds"], where  # never timed
            continue
        assert cell["status"] == "ok", f"{where}: {cell['note']}"
        assert len(cell["seconds"]) == len(cell["checks"]) == 1, where
        for check in cell["checks"]:
            assert check["ran"] == check["expected"] == cell["n"], where
            assert check["duplicates"] == 0, where
            if design.ordered:
                assert check["out_of_order_keys"] == 0, where
                assert check["overlaps"] == 0, where


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_idle_lanes_and_latency_were_measured(
    quick_run: tuple[Path, dict[str, Any]], backend: str
) -> None:
    _, results = quick_run
    memory = [m for m in results["memory"] if m["backend"] == backend]
    assert memory
    for m in memory:
        design = DESIGNS[m["design"]]
        if (design.backends is None or backend in design.backends) and (
            backend not in design.unordered_on
        ):
            assert m["status"] == "ok", m
            assert m["peak_bytes"] > 0, m
    (idle,) = [i for i in results["idle_lanes"] if i["backend"] == backend]
    assert idle["bytes_per_lane"] > 0
    (latency,) = [lat for lat in results["latency"] if lat["backend"] == backend]
    assert latency["capacity"] > 0
    assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]


# -- the checks themselves catch broken designs -----------------------------------------------


async def reversed_per_key(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    for key, index in reversed(jobs):
        await body(key, index)


async def drops_one(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    for key, index in jobs[1:]:
        await body(key, index)


async def overlapping(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    async with anyio.create_task_group() as tg:
        for key, index in jobs:
            tg.start_soon(body, key, index)


@pytest.mark.parametrize(
    ("design", "complete", "ordered"),
    [(reversed_per_key, True, False), (drops_one, False, True), (overlapping, True, False)],
)
def test_the_checks_catch_broken_designs(design: Any, complete: bool, ordered: bool) -> None:
    jobs = make_jobs(200, 3)
    recorder = Recorder(jobs, "checkpoint")
    body = recorder.body()

    async def main() -> None:
        await design(jobs, body, 100)

    anyio.run(main)
    check = recorder.check()
    assert check.complete is complete
    assert check.ordered is ordered
    assert not check.ok(ordered=True)


async def serial(jobs: Sequence[JobSpec], body: Body, limit: int) -> None:
    for key, index in jobs:
        await body(key, index)


@pytest.mark.parametrize("keys", [1, 100, 10_000, ALL_DISTINCT])
def test_a_prefix_of_a_workload_checks_clean(keys: int) -> None:
    jobs = make_jobs(20_000, keys)[:5_000]  # as in a pilot run or a capped design
    recorder = Recorder(jobs, "sleep", durations=[0.0] * 20_000)
    body = recorder.body()

    async def main() -> None:
        await serial(jobs, body, 100)

    anyio.run(main)
    assert recorder.check().ok(ordered=True)


def test_all_distinct_keys_are_distinct() -> None:
    jobs = make_jobs(50, ALL_DISTINCT)
    assert len({key for key, _ in jobs}) == 50
    assert [index for _, index in jobs] == list(range(50))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_phases_probe_runs(backend: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.phases", backend, "100", "300"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"{backend} K=100 collector on ",
        f"{backend} K=100 collector off",
        "bare loop of bodies",
    ]


# -- the floor under KeyedLanes (benchmarks.floor) --------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["ordered", "handles", "contexts"])
@pytest.mark.parametrize("keys", [1, 3, ALL_DISTINCT])
def test_the_floor_runners_keep_per_key_order(backend: str, name: str, keys: int) -> None:
    from benchmarks.floor import ROWS
    from benchmarks.harness import check_once

    (design,) = [row for row in ROWS if row.name == name]
    # Sleeping bodies: the jobs of a key finish out of step, so busy keys are common.
    jobs = make_jobs(600, keys)
    check = check_once(backend, design, jobs, "sleep", [0.0005 * (i % 3) for i in range(600)], 50)
    assert check.ok(ordered=True), check.describe()


def floor_table(*args: str) -> list[str]:
    """The lines that ``python -m benchmarks.floor *args`` prints."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.floor", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    return done.stdout.splitlines()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_floor_table_runs(backend: str) -> None:
    lines = floor_table(backend, "--keys=7,all", "-n=300", "-r=1")
    assert lines[0] == "| backend | K | bare | ordered | handles | contexts | keyed-lanes |"
    rows = [line.split(" | ") for line in lines[2:4]]
    assert [row[:2] for row in rows] == [[f"| {backend}", "7"], [f"| {backend}", "distinct"]]
    for row in rows:
        assert row[2].endswith("(1.00x)")  # the bare loop is the unit
        assert all(cell.endswith("x)") or cell.endswith("x) |") for cell in row[2:])


def test_the_floor_rejects_an_unknown_backend() -> None:
    from benchmarks.floor import main

    with pytest.raises(SystemExit) as raised:
        main(["curio"])
    assert raised.value.code == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_pool_floor_runs_every_job_within_its_limit(backend: str) -> None:
    from benchmarks.floor import pool_dispatcher
    from benchmarks.harness import run_on

    ran: list[int] = []
    running = peak = 0

    async def job(index: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        ran.append(index)
        await anyio.sleep(0.0005 * (index % 3))
        running -= 1

    async def main() -> None:
        async with pool_dispatcher(5) as submit:
            for index in range(40):
                submit(index, job, index)
            await anyio.wait_all_tasks_blocked()
            for index in range(40, 60):  # some workers are parked again by now
                submit(index, job, index)

    run_on(backend, main)
    assert sorted(ran) == list(range(60))
    assert sorted(ran[:5]) == [0, 1, 2, 3, 4]  # the first jobs went to the workers at once
    assert peak == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_floor_latency_table_runs(backend: str) -> None:
    lines = floor_table(backend, "--latency=0.05")
    assert lines[0].startswith("| backend | dispatcher | lanes' capacity (jobs/s) | rate")
    rows = [line.split(" | ") for line in lines[2:]]
    assert [row[:2] for row in rows] == [[f"| {backend}", "pool"], [f"| {backend}", "keyed-lanes"]]
    assert rows[0][3] == rows[1][3]  # the same arrival rate for both
