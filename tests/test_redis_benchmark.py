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
