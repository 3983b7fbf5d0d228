"""The examples in examples/ (pulled into the docs) run and check themselves."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import ModuleType

EXAMPLES = Path(__file__).parent.parent / "examples"
# Examples whose point is timing (backups after a delay, a pause after failures, a
# priority that ages): on a busy machine the real clock stretches any interval, so they
# run on a virtual clock, where every interval is exact. The others check what their
# program guarantees, whatever the timing, and run on every real backend.
ON_VIRTUAL_CLOCK = ("hedged_read", "pause_on_failures", "priority_requests")
ON_REAL_CLOCK = sorted(
    p.stem
    for p in EXAMPLES.glob("*.py")
    if p.stem not in ("demo", "trio_nursery", "redis_worker", *ON_VIRTUAL_CLOCK)
)

pytestmark = pytest.mark.anyio


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ON_REAL_CLOCK)
async def test_example_runs(name: str) -> None:
    main = cast("Callable[[], Awaitable[None]]", load(name).main)
    await main()


async def test_redis_worker_example_runs(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYQ_REDIS_URL", redis_url)
    main = cast("Callable[[], Awaitable[None]]", load("redis_worker").main)
    await main()
    assert "account-0: [100, -75, 5] -> 30" in capsys.readouterr().out


class TestOnVirtualClock:
    @pytest.fixture
    def anyio_backend(self, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
        return virtual_backend

    @pytest.mark.parametrize("name", ON_VIRTUAL_CLOCK)
    async def test_example_runs(self, name: str) -> None:
        main = cast("Callable[[], Awaitable[None]]", load(name).main)
        await main()


def test_trio_nursery_example_runs() -> None:
    subprocess.run([sys.executable, str(EXAMPLES / "trio_nursery.py")], check=True, timeout=60)


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_demo_runs_quickly_and_checks_order(backend: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "demo.py"),
            "--messages",
            "2000",
            "--users",
            "100",
            "--backend",
            backend,
        ],
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert "in order" in result.stdout
