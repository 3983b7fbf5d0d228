"""The Redis queues benchmark's quick mode runs anyio_keyq, arq and SAQ end to end.

No timing assertions: the point is that the benchmark never rots.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_quick_benchmark_runs_every_queue(tmp_path: Path) -> None:
    out = tmp_path / "redis.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.redis_queues", "--quick", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=280,
        capture_output=True,
    )
    rows = json.loads(out.read_text())
    assert [row["queue"] for row in rows] == ["anyio_keyq", "arq", "saq"]
    for row in rows:
        assert row["noop_jobs_per_s"] > 0
        assert row["io_jobs_per_s"] > 0
        assert row["worker_cpu_per_job_us"] > 0


@pytest.mark.timeout(300)
def test_profile_mode_shows_where_a_worker_spends_its_time() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.redis_queues", "--profile", "--jobs", "200"],
        cwd=ROOT,
        check=True,
        timeout=280,
        capture_output=True,
        text=True,
    )
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "profiled worker on asyncio",
        "profiled worker on trio",
    ]
    assert all("anyio_keyq" in line for line in lines)
