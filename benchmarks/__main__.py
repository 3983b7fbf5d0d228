"""``python -m benchmarks``: run the benchmark suite and write its results.

The full run (the default) writes results.json, results.md, results.rst and
jobs_per_second.png to docs/performance/. ``--quick`` is a smoke test of every design on
small workloads: it checks that every design ran every job, in per-key order where it
promises that, and writes nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from .designs import DEFAULT_DESIGNS, DESIGNS
from .harness import (
    BACKENDS,
    Config,
    IdleResult,
    LatencyResult,
    log,
    measure_idle_lanes,
    measure_latency,
    measure_memory,
    measure_throughput,
)
from .report import Results, from_json, machine_info, markdown, now_utc, write
from .workload import ALL_DISTINCT, VARIANTS

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "performance"
PARTS = ("throughput", "memory", "idle", "latency")


def _names(text: str, allowed: tuple[str, ...] | list[str], what: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(allowed)}"
        )
    return names


def _keys(text: str) -> tuple[int, ...]:
    keys: list[int] = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if part in ("all", "distinct", "all-distinct"):
            keys.append(ALL_DISTINCT)
        elif part.isdigit() and int(part) > 0:
            keys.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"not a key count: {part!r} (a number, or 'all')")
    return tuple(keys)


def _positive(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark KeyedLanes against the usual alternatives.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: small N, 1 repeat, K in {1, 100, all}, no plot, writes nothing "
        "unless --out is given",
    )
    p.add_argument("--n", type=_positive, help="jobs per run, checkpoint variant (200,000)")
    p.add_argument("--sleep-n", type=_positive, help="jobs per run, sleeping variant (20,000)")
    p.add_argument(
        "--cap",
        type=_positive,
        help="most jobs per run of a design that spawns a task per job (20,000)",
    )
    p.add_argument("--repeats", type=_positive, help="timing runs per figure (5)")
    p.add_argument(
        "--backends",
        type=lambda s: _names(s, list(BACKENDS), "backend"),
        help="comma-separated: asyncio,uvloop,trio (all)",
    )
    p.add_argument(
        "--designs",
        type=lambda s: _names(s, list(DESIGNS), "design"),
        help=f"comma-separated, from {','.join(DESIGNS)} (all but spawn-uncapped)",
    )
    p.add_argument("--keys", type=_keys, help="comma-separated key counts, 'all' for distinct")
    p.add_argument(
        "--variants",
        type=lambda s: _names(s, list(VARIANTS), "variant"),
        help="comma-separated: checkpoint,sleep (both)",
    )
    p.add_argument(
        "--parts",
        type=lambda s: _names(s, list(PARTS), "part"),
        help="comma-separated: throughput,memory,idle,latency (all)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="directory for the results (the full run's default: docs/performance)",
    )
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG plot")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="run nothing: write the tables and plot of an earlier run's results.json "
        "again (into --out, or next to the file)",
    )
    return p


def config_from(args: argparse.Namespace) -> Config:
    config = Config.quick_config() if args.quick else Config()
    changes: dict[str, Any] = {"designs": args.designs or DEFAULT_DESIGNS}
    for name in ("n", "sleep_n", "cap", "repeats", "backends", "keys", "variants", "parts"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    return dataclasses.replace(config, **changes)


def run(config: Config) -> Results:
    started = now_utc()
    start = time.perf_counter()
    # The code measured is what was imported now, whatever happens to the files later.
    machine = machine_info()
    log(
        f"benchmarks: {'quick' if config.quick else 'full'} run, N={config.n:,} "
        f"(sleeping: {config.sleep_n:,}), {config.repeats} repeats, "
        f"backends {','.join(config.backends)}, designs {','.join(config.designs)}"
    )
    throughput = measure_throughput(config) if "throughput" in config.parts else []
    memory = measure_memory(config) if "memory" in config.parts else []
    idle: list[IdleResult] = []
    if "idle" in config.parts:
        for backend in config.backends:
            result = measure_idle_lanes(backend, config.idle_lanes, config.limit)
            log(
                f"idle lanes {backend}: {result.bytes_per_lane:,.0f} B per idle lane "
                f"(dict of anyio.Lock: {result.lock_dict_bytes_per_key:,.0f} B per key)"
            )
            idle.append(result)
    latency: list[LatencyResult] = []
    if "latency" in config.parts:
        for backend in config.backends:
            lat = measure_latency(config, backend)
            log(
                f"latency {backend}: capacity {lat.capacity:,.0f} jobs/s, "
                f"{lat.jobs:,} jobs at {lat.rate:,.0f}/s: p50 {lat.p50_ms:.3f} ms, "
                f"p99 {lat.p99_ms:.3f} ms, max {lat.max_ms:.3f} ms"
            )
            latency.append(lat)
    commit_at_end = machine_info()["git_commit"]
    if commit_at_end != machine["git_commit"]:
        machine["git_commit_at_end"] = commit_at_end
    return Results(
        config=config,
        machine=machine,
        started=started,
        seconds=time.perf_counter() - start,
        throughput=throughput,
        memory=memory,
        idle=idle,
        latency=latency,
    )


def failures(results: Results) -> list[str]:
    """Every cell that did not pass its checks, unless known not to (n/a cells are fine)."""
    bad = [
        f"{c.variant} {c.backend} {c.design} K={c.keys}: {c.status}: {c.note}"
        for c in results.throughput
        if c.status not in ("ok", "n/a") and c.backend not in DESIGNS[c.design].unordered_on
    ]
    bad += [
        f"memory {m.backend} {m.design} K={m.keys}: {m.status}: {m.note}"
        for m in results.memory
        if m.status not in ("ok", "n/a")
    ]
    return bad


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.render is not None:
        data = json.loads(args.render.read_text(encoding="utf-8"))
        results = from_json(data)
        out_dir: Path = args.out or args.render.parent
        for path in write(results, out_dir, with_plot=not args.no_plot):
            log(f"wrote {path}")
        return 0
    config = config_from(args)
    results = run(config)
    out: Path | None = args.out
    if out is None and not config.quick:
        out = DEFAULT_OUT
    if out is not None:
        written = write(results, out, with_plot=not (config.quick or args.no_plot))
        for path in written:
            log(f"wrote {path}")
    else:
        print(markdown(results))
    log(f"done in {results.seconds:.1f} s")
    bad = failures(results)
    for line in bad:
        log(f"FAILED: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
