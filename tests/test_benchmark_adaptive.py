"""The adaptive benchmark's quick mode: it runs, writes its results, and the limiter adapts.

It runs on a virtual clock, so its figures are the same on every machine: the checks on
the limit are about behaviour (it follows the capacity down and up again), not speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.adaptive import ADAPTIVE, FIXED, Scenario, plot, results, simulate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("adaptive")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.adaptive", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    data: dict[str, Any] = json.loads((out / "adaptive.json").read_text(encoding="utf-8"))
    return out, data


def test_quick_run_writes_its_results(quick_run: tuple[Path, dict[str, Any]]) -> None:
    out, data = quick_run
    assert [p.name for p in out.iterdir()] == ["adaptive.json"]  # no plot in quick mode
    assert data["scenario"]["phases"] == [[0.0, 40], [4.0, 10], [8.0, 25]]
    assert set(data["runs"]) == {ADAPTIVE, FIXED}
    for run in data["runs"].values():
        samples = run["samples"]
        assert len({len(column) for column in samples.values()}) == 1
        assert samples["t"][0] == 0
        assert samples["t"][-1] == Scenario.quick().duration
        assert [phase["capacity"] for phase in run["summary"]] == [40, 10, 25]


def test_the_limit_follows_the_capacity(quick_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = quick_run
    high, low, middle = data["runs"][ADAPTIVE]["summary"]
    assert high["mean_limit"] > middle["mean_limit"] > low["mean_limit"]
    assert low["mean_limit"] <= 10
    # Behind the fixed limit, the downstream refuses requests by the thousand once its
    # capacity drops; behind the adaptive limiter, a handful.
    fixed_low = data["runs"][FIXED]["summary"][1]
    assert low["refused_per_second"] * 100 < fixed_low["refused_per_second"]
    assert data["runs"][ADAPTIVE]["decreases"] > 0
    limits = data["runs"][ADAPTIVE]["samples"]["limit"]
    capacities = data["runs"][ADAPTIVE]["samples"]["capacity"]
    # Never far above the capacity for long: at most one round of growth past it.
    assert sum(limit > 1.2 * cap for limit, cap in zip(limits, capacities, strict=True)) < 10


def test_the_plot_is_drawn(tmp_path: Path) -> None:
    scenario = Scenario(phases=((0.0, 8), (1.0, 4)), duration=2.0, clients=10)
    data = results(scenario, [simulate(scenario, ADAPTIVE), simulate(scenario, FIXED)])
    plot(data, tmp_path / "adaptive_limit.png")
    assert (tmp_path / "adaptive_limit.png").read_bytes().startswith(b"\x89PNG")
