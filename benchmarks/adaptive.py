"""``python -m benchmarks.adaptive``: an AdaptiveLimiter finding a downstream's capacity.

Many clients call a simulated downstream service through an :class:`AdaptiveLimiter`.
The service serves a bounded number of requests at once, and refuses the others fast
with an "overloaded" error; that bound changes during the run (40, then 10, then 25).
The limiter sees nothing but the outcomes of the requests. The same clients also run
behind a fixed limit of 40 (an :class:`anyio.CapacityLimiter`), for comparison.

Everything runs on a virtual clock (async-solipsism's event loop): a run of 90
simulated seconds takes a few real ones, and the results are the same on every
machine, so the plot is reproducible. The full run writes ``adaptive.json`` and
``adaptive_limit.png`` to docs/performance/; ``--quick`` is a smoke test on a shorter
scenario that writes nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from anyio_keyq import AdaptiveLimiter

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

DEFAULT_OUT: Final = Path(__file__).resolve().parent.parent / "docs" / "performance"
#: The designs compared: the adaptive limiter, and a fixed limit at the first capacity.
ADAPTIVE: Final = "adaptive"
FIXED: Final = "fixed-40"


@dataclass(frozen=True, slots=True)
class Scenario:
    """The simulated downstream, its clients, and how the run is sampled."""

    #: (start second, capacity): how many requests the downstream serves at once.
    phases: tuple[tuple[float, int], ...] = ((0.0, 40), (30.0, 10), (60.0, 25))
    #: Simulated seconds of the run.
    duration: float = 90.0
    #: Clients, each calling the downstream in a loop, one request at a time.
    clients: int = 100
    #: Seconds the downstream takes to serve a request (before jitter).
    service_time: float = 0.1
    #: Seconds it takes to refuse a request when it is at capacity.
    reject_time: float = 0.01
    #: Relative spread of the service time: uniform in ``1 ± jitter``.
    jitter: float = 0.2
    #: Seconds between two samples of the state.
    sample_every: float = 0.1
    #: The limiter's starting limit.
    initial: int = 20
    #: The fixed limit of the baseline.
    fixed_limit: int = 40
    seed: int = 2024

    @classmethod
    def quick(cls) -> Scenario:
        return cls(phases=((0.0, 40), (4.0, 10), (8.0, 25)), duration=12.0, clients=60)

    def capacity(self, t: float) -> int:
        current = self.phases[0][1]
        for start, capacity in self.phases:
            if t >= start:
                current = capacity
        return current


class Overloaded(Exception):
    """The downstream refused a request: it is serving as many as it can."""


class Downstream:
    """A service that serves up to ``capacity(t)`` requests at once, and refuses more."""

    def __init__(self, scenario: Scenario, t0: float) -> None:
        self.scenario = scenario
        self.t0 = t0
        self.rng = random.Random(scenario.seed)
        self.in_flight = 0
        self.served = 0
        self.rejected = 0

    def now(self) -> float:
        return anyio.current_time() - self.t0

    async def request(self) -> None:
        scenario = self.scenario
        if self.in_flight >= scenario.capacity(self.now()):
            self.rejected += 1
            await anyio.sleep(scenario.reject_time)
            raise Overloaded
        self.in_flight += 1
        try:
            spread = 1 + scenario.jitter * (2 * self.rng.random() - 1)
            await anyio.sleep(scenario.service_time * spread)
        finally:
            self.in_flight -= 1
        self.served += 1


@dataclass(slots=True)
class Run:
    """The samples of one design over the run, column by column."""

    design: str
    t: list[float] = field(default_factory=list[float])
    capacity: list[int] = field(default_factory=list[int])
    limit: list[float] = field(default_factory=list[float])
    in_flight: list[int] = field(default_factory=list[int])
    served: list[int] = field(default_factory=list[int])
    rejected: list[int] = field(default_factory=list[int])
    decreases: int = 0

    def phase_summaries(self, scenario: Scenario) -> list[dict[str, Any]]:
        """Per phase: the mean limit, the requests served and refused per second."""
        ends = [start for start, _ in scenario.phases[1:]] + [scenario.duration]
        summaries: list[dict[str, Any]] = []
        for (start, capacity), end in zip(scenario.phases, ends, strict=True):
            first = self._index(start)
            last = self._index(end)
            seconds = self.t[last] - self.t[first]
            served = self.served[last] - self.served[first]
            refused = self.rejected[last] - self.rejected[first]
            limits = self.limit[first:last]
            summaries.append(
                {
                    "start": start,
                    "end": end,
                    "capacity": capacity,
                    "mean_limit": round(sum(limits) / len(limits), 3),
                    "served_per_second": round(served / seconds, 2),
                    "refused_per_second": round(refused / seconds, 2),
                    "refused_share": round(refused / max(1, served + refused), 4),
                    # of the downstream's best: capacity requests every service_time
                    "utilisation": round(served / seconds * scenario.service_time / capacity, 3),
                }
            )
        return summaries

    def _index(self, t: float) -> int:
        """The first sample at or after *t* (or the last sample)."""
        for i, ti in enumerate(self.t):
            if ti >= t:
                return i
        return len(self.t) - 1


def _virtual_loop() -> asyncio.AbstractEventLoop:
    """A fresh async-solipsism event loop: virtual time, deterministic scheduling."""
    module = importlib.import_module("async_solipsism")
    loop: asyncio.AbstractEventLoop = module.EventLoop()
    return loop


async def _simulate(scenario: Scenario, design: str) -> Run:
    t0 = anyio.current_time()
    downstream = Downstream(scenario, t0)
    run = Run(design)
    adaptive = AdaptiveLimiter(scenario.initial)
    fixed = anyio.CapacityLimiter(scenario.fixed_limit)
    acquire: Callable[[], AbstractAsyncContextManager[Any]]
    if design == ADAPTIVE:
        acquire = adaptive.acquire
    else:

        def acquire() -> AbstractAsyncContextManager[Any]:
            return fixed

    def limit() -> float:
        return adaptive.limit if design == ADAPTIVE else float(scenario.fixed_limit)

    end = t0 + scenario.duration

    async def client() -> None:
        while anyio.current_time() < end:
            try:
                async with acquire():  # an Overloaded error is a failure
                    await downstream.request()
            except Overloaded:
                pass

    async def sample() -> None:
        ticks = 0
        while True:
            t = ticks * scenario.sample_every
            run.t.append(round(t, 6))
            run.capacity.append(scenario.capacity(t))
            run.limit.append(round(limit(), 4))
            run.in_flight.append(downstream.in_flight)
            run.served.append(downstream.served)
            run.rejected.append(downstream.rejected)
            if t >= scenario.duration:
                return
            ticks += 1
            # sleep to the next instant of the grid, not by steps that add up errors
            await anyio.sleep(t0 + ticks * scenario.sample_every - anyio.current_time())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        for _ in range(scenario.clients):
            tg.start_soon(client)
    run.decreases = adaptive.statistics().decreases
    return run


def simulate(scenario: Scenario, design: str) -> Run:
    """Run *design* through *scenario* on a fresh virtual clock."""
    return anyio.run(
        _simulate,
        scenario,
        design,
        backend="asyncio",
        backend_options={"loop_factory": _virtual_loop},
    )


def results(scenario: Scenario, runs: list[Run]) -> dict[str, Any]:
    return {
        "generated_by": "python -m benchmarks.adaptive",
        "clock": "virtual (async-solipsism): the same results on every machine",
        "scenario": dataclasses.asdict(scenario),
        "limiter": {
            "class": "anyio_keyq.AdaptiveLimiter",
            "initial": scenario.initial,
            "min": 1,
            "max": None,
            "increase": 1,
            "decrease": 0.5,
            "latency_target": None,
        },
        "runs": {
            run.design: {
                "summary": run.phase_summaries(scenario),
                "decreases": run.decreases,
                "samples": {
                    "t": run.t,
                    "capacity": run.capacity,
                    "limit": run.limit,
                    "in_flight": run.in_flight,
                    "served": run.served,
                    "refused": run.rejected,
                },
            }
            for run in runs
        },
    }


def _per_second(
    t: list[float], counts: list[int], window: float = 1.0
) -> tuple[list[float], list[float]]:
    """Counts per second over sliding windows of *window* seconds, from cumulative *counts*."""
    xs: list[float] = []
    ys: list[float] = []
    j = 0
    for i, ti in enumerate(t):
        while t[j] < ti - window:
            j += 1
        if ti - t[j] >= window / 2:
            xs.append(ti)
            ys.append((counts[i] - counts[j]) / (ti - t[j]))
    return xs, ys


def plot(data: dict[str, Any], path: Path) -> None:
    """The limit against the capacity over time; below, requests served and refused."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adaptive = data["runs"][ADAPTIVE]["samples"]
    fixed = data["runs"][FIXED]["samples"]
    scenario = data["scenario"]
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(10, 9), sharex=True, gridspec_kw={"height_ratios": [2.2, 1, 1]}
    )
    t = adaptive["t"]
    top.step(t, adaptive["capacity"], where="post", color="black", linewidth=2, label="capacity")
    top.plot(t, adaptive["limit"], color="C0", linewidth=1.5, label="AdaptiveLimiter.limit")
    top.axhline(
        scenario["fixed_limit"], color="C3", linestyle=":", linewidth=1.4, label="fixed limit"
    )
    top.set_ylabel("concurrent requests")
    top.set_ylim(0, 1.3 * max(max(adaptive["limit"]), scenario["fixed_limit"]))
    top.legend(loc="upper right", frameon=False, ncol=3)
    best = [c / scenario["service_time"] for c in adaptive["capacity"]]
    middle.step(t, best, where="post", color="black", linewidth=1.5, label="capacity")
    for samples, design, color in ((adaptive, "adaptive", "C0"), (fixed, "fixed limit", "C3")):
        xs, served = _per_second(samples["t"], samples["served"])
        middle.plot(xs, served, color=color, linewidth=1.3, label=design)
        xs, refused = _per_second(samples["t"], samples["refused"])
        bottom.plot(xs, refused, color=color, linewidth=1.3, label=design)
    middle.set_ylabel("served per second")
    middle.set_ylim(0, 1.3 * max(best))
    middle.legend(loc="upper right", frameon=False, ncol=3)
    bottom.set_yscale("symlog", linthresh=1)
    bottom.set_ylim(0, 1e4)
    bottom.set_ylabel("refused per second")
    bottom.set_xlabel("simulated seconds (1 s windows for the rates)")
    bottom.legend(loc="upper left", frameon=False, ncol=2)
    for ax in (top, middle, bottom):
        ax.grid(True, alpha=0.3)
    fig.suptitle(  # pyright: ignore[reportUnknownMemberType]
        f"AdaptiveLimiter (AIMD, from {scenario['initial']}) in front of a downstream "
        f"whose capacity changes; {scenario['clients']} clients, virtual time"
    )
    fig.tight_layout()
    fig.savefig(  # pyright: ignore[reportUnknownMemberType]
        path, dpi=100, metadata={"Software": None}
    )
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adaptive",
        description="An AdaptiveLimiter finding a downstream's changing capacity.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a shorter scenario; writes nothing unless --out is given",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for adaptive.json and the plot (the full run's default: docs/performance)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG plot")
    args = parser.parse_args(argv)
    scenario = Scenario.quick() if args.quick else Scenario()
    started = time.perf_counter()
    runs = [simulate(scenario, design) for design in (ADAPTIVE, FIXED)]
    data = results(scenario, runs)
    for design, run in data["runs"].items():
        for phase in run["summary"]:
            print(
                f"{design:>9} {phase['start']:5.1f}-{phase['end']:5.1f} s, capacity "
                f"{phase['capacity']:>3}: mean limit {phase['mean_limit']:7.2f}, "
                f"served {phase['served_per_second']:7.1f}/s, "
                f"refused {phase['refused_per_second']:8.1f}/s",
                file=sys.stderr,
            )
    out: Path | None = args.out
    if out is None and not args.quick:
        out = DEFAULT_OUT
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "adaptive.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out / 'adaptive.json'}", file=sys.stderr)
        if not (args.quick or args.no_plot):
            plot(data, out / "adaptive_limit.png")
            print(f"wrote {out / 'adaptive_limit.png'}", file=sys.stderr)
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
