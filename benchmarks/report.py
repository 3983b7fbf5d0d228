"""The outputs of a run: JSON, Markdown and reStructuredText tables, and a plot."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .designs import DESIGNS
from .harness import (
    BACKENDS,
    Cell,
    Config,
    IdleResult,
    LatencyResult,
    MemoryResult,
    keys_label,
)
from .workload import ALL_DISTINCT, Check, Variant, key_count

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: Typography of the tables (spelled out: the linter flags look-alike characters).
TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"
MINUS = "\N{MINUS SIGN}"

#: The design every ratio is relative to, and the floor.
REFERENCE = "dict-of-locks"
FLOOR = "bare"
LANES = "keyed-lanes"
#: The competitors of the headline table.
HEADLINE_RIVALS = ("dict-of-locks", "aiometer", "worker-per-key")
HEADLINE_KEYS = (10_000, ALL_DISTINCT)

VARIANT_TITLES = {
    "checkpoint": "Trivial jobs (one checkpoint)",
    "sleep": "Sleeping jobs (a random 0-2 ms sleep)",
}


@dataclass(slots=True)
class Results:
    config: Config
    machine: dict[str, Any]
    started: str
    seconds: float
    throughput: list[Cell]
    memory: list[MemoryResult]
    idle: list[IdleResult]
    latency: list[LatencyResult]


# -- machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                name, _, value = line.partition(":")
                if name.strip() in ("model name", "Hardware", "Processor"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "log", "-1", "--format=%h"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "anyio_keyq"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return f"{commit} (anyio_keyq/ modified)" if dirty.stdout.strip() else commit


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "versions": {
            name: _version(name) for name in ("anyio", "trio", "uvloop", "aiometer", "anyio-keyq")
        },
        "git_commit": _git_commit(),
    }


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# -- figures ----------------------------------------------------------------------------------


def _index(cells: Iterable[Cell]) -> dict[tuple[str, str, str, int], Cell]:
    return {(c.variant, c.backend, c.design, c.keys): c for c in cells}


def ratio(cells: dict[tuple[str, str, str, int], Cell], cell: Cell, other: str) -> float | None:
    """The median jobs/s of *cell* over that of design *other* on the same workload."""
    mine = cell.median
    theirs = cells.get((cell.variant, cell.backend, other, cell.keys))
    if mine is None or theirs is None or theirs.median is None:
        return None
    return mine / theirs.median


def cost_vs_floor_us(cells: dict[tuple[str, str, str, int], Cell], cell: Cell) -> float | None:
    """Microseconds per job that *cell*'s design adds to the bare loop of bodies."""
    mine = cell.median
    floor = cells.get((cell.variant, cell.backend, FLOOR, cell.keys))
    if mine is None or floor is None or floor.median is None:
        return None
    return (1 / mine - 1 / floor.median) * 1e6


def to_json(results: Results) -> dict[str, Any]:
    cells = _index(results.throughput)
    throughput: list[dict[str, Any]] = []
    for cell in results.throughput:
        rates = cell.rates if cell.status == "ok" else []
        full_n = results.config.n if cell.variant == "checkpoint" else results.config.sleep_n
        throughput.append(
            {
                "variant": cell.variant,
                "backend": cell.backend,
                "design": cell.design,
                "keys": keys_label(cell.keys),
                "distinct_keys": cell.distinct_keys,
                "n": cell.n,
                "n_capped_from": full_n if cell.n != full_n else None,
                "status": cell.status,
                "note": cell.note,
                "seconds": cell.seconds,
                "jobs_per_second": {
                    "median": cell.median,
                    "min": min(rates) if rates else None,
                    "max": max(rates) if rates else None,
                    "runs": rates,
                },
                "ratio_to_dict_of_locks": ratio(cells, cell, REFERENCE),
                "ratio_to_bare": ratio(cells, cell, FLOOR),
                "us_per_job_over_bare": cost_vs_floor_us(cells, cell),
                "checks": [asdict(check) for check in cell.checks],
            }
        )
    return {
        "schema": 1,
        "started": results.started,
        "seconds": round(results.seconds, 1),
        "machine": results.machine,
        "config": asdict(results.config),
        "designs": {
            name: {
                "description": d.description,
                "ordered": d.ordered,
                "capped": d.capped,
                "task_per_job": d.task_per_job,
                "task_per_key": d.task_per_key,
                "not_ordered_on": sorted(d.unordered_on),
                "backends": sorted(d.backends) if d.backends else sorted(BACKENDS),
            }
            for name, d in DESIGNS.items()
            if name in results.config.designs
        },
        "throughput": throughput,
        "headline": headline(results),
        "memory": [
            {
                **asdict(m),
                "keys": keys_label(m.keys),
                "peak_bytes_per_job": m.peak_bytes / m.n if m.status == "ok" else None,
            }
            for m in results.memory
        ],
        "idle_lanes": [asdict(i) for i in results.idle],
        "latency": [asdict(lat) for lat in results.latency],
    }


def headline(results: Results) -> list[dict[str, Any]]:
    cells = _index(results.throughput)
    rows: list[dict[str, Any]] = []
    for cell in results.throughput:
        if cell.design != LANES or cell.keys not in HEADLINE_KEYS:
            continue
        rows.append(
            {
                "variant": cell.variant,
                "backend": cell.backend,
                "keys": keys_label(cell.keys),
                "keyed_lanes_jobs_per_second": cell.median,
                **{f"ratio_to_{rival}": ratio(cells, cell, rival) for rival in HEADLINE_RIVALS},
                "us_per_job_over_bare": cost_vs_floor_us(cells, cell),
            }
        )
    return rows


def from_json(data: dict[str, Any]) -> Results:
    """Rebuild the results of a run from its results.json, to render them again."""
    fields = dict(data["config"])
    for name in ("backends", "designs", "keys", "variants", "parts"):
        fields[name] = tuple(fields[name])
    config = Config(**fields)
    keys_of = {keys_label(k): k for k in config.keys}
    cells = [
        Cell(
            variant=c["variant"],
            backend=c["backend"],
            design=c["design"],
            keys=keys_of[c["keys"]],
            n=c["n"],
            status=c["status"],
            note=c["note"],
            distinct_keys=c["distinct_keys"],
            seconds=list(c["seconds"]),
            checks=[Check(**check) for check in c["checks"]],
        )
        for c in data["throughput"]
    ]
    memory_fields = {f.name for f in dataclasses.fields(MemoryResult)}
    memory: list[MemoryResult] = []
    for m in data["memory"]:
        kwargs: dict[str, Any] = {k: v for k, v in m.items() if k in memory_fields}
        kwargs["keys"] = keys_of[m["keys"]]
        memory.append(MemoryResult(**kwargs))
    return Results(
        config=config,
        machine=data["machine"],
        started=data["started"],
        seconds=data["seconds"],
        throughput=cells,
        memory=memory,
        idle=[IdleResult(**i) for i in data["idle_lanes"]],
        latency=[LatencyResult(**lat) for lat in data["latency"]],
    )


# -- tables -----------------------------------------------------------------------------------

Table = tuple[str, list[str], list[list[str]], list[str]]  # title, header, rows, notes


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _status_text(cell: Cell) -> str:
    return {"n/a": "n/a", "incorrect": "incorrect", "error": "error"}.get(cell.status, "—")


def tables(results: Results) -> list[Table]:
    config = results.config
    cells = _index(results.throughput)
    out: list[Table] = []
    ks = config.keys
    k_head = [f"K = {keys_label(k)}" for k in ks]
    for variant in config.variants:
        full_n = config.n if variant == "checkpoint" else config.sleep_n
        rows: list[list[str]] = []
        ratio_rows: list[list[str]] = []
        notes: list[str] = []
        for backend in config.backends:
            for design in config.designs:
                row = [backend, design]
                ratio_row = [backend, design]
                for k in ks:
                    cell = cells.get((variant, backend, design, k))
                    if cell is None:
                        row.append("—")
                        ratio_row.append("—")
                        continue
                    if cell.status != "ok" or cell.median is None:
                        row.append(_status_text(cell))
                        ratio_row.append(_status_text(cell))
                        if cell.status in ("incorrect", "error"):
                            notes.append(f"{backend} {design} K={keys_label(k)}: {cell.note}")
                        continue
                    rates = cell.rates
                    text = f"{cell.median:,.0f} ({min(rates):,.0f}{DASH}{max(rates):,.0f})"
                    if cell.n != full_n:
                        text += f" [N={cell.n:,}]"
                    row.append(text)
                    ratio_row.append(
                        f"{_x(ratio(cells, cell, REFERENCE))} / {_x(ratio(cells, cell, FLOOR))}"
                    )
                rows.append(row)
                ratio_rows.append(ratio_row)
        repeats = config.repeats
        out.append(
            (
                f"{VARIANT_TITLES[variant]}: jobs per second",
                ["backend", "design", *k_head],
                rows,
                [
                    f"Median of {repeats} runs (min{DASH}max) of N = {full_n:,} jobs, "
                    f"unless [N=…] says otherwise.",
                    *notes,
                ],
            )
        )
        out.append(
            (
                f"{VARIANT_TITLES[variant]}: ratio to dict-of-locks / ratio to bare",
                ["backend", "design", *k_head],
                ratio_rows,
                ["Median jobs/s over that of dict-of-locks / of bare, same backend and K."],
            )
        )
    head = headline(results)
    if head:
        header = [
            "variant",
            "backend",
            "K",
            "keyed-lanes jobs/s",
            *(f"{TIMES} {rival}" for rival in HEADLINE_RIVALS),
            "µs/job over bare",
        ]
        head_rows = [
            [
                row["variant"],
                row["backend"],
                row["keys"],
                _rate(row["keyed_lanes_jobs_per_second"]),
                *(_x(row[f"ratio_to_{rival}"]) for rival in HEADLINE_RIVALS),
                "—"
                if row["us_per_job_over_bare"] is None
                else f"{row['us_per_job_over_bare']:.2f}",
            ]
            for row in head
        ]
        out.insert(
            0,
            (
                "Headline: KeyedLanes against the others",
                header,
                head_rows,
                [
                    f"{TIMES} X: KeyedLanes' median jobs/s over X's. µs/job over bare: "
                    f"1/rate(KeyedLanes) {MINUS} 1/rate(bare), the cost KeyedLanes adds per job."
                ],
            ),
        )
    if results.memory:
        mem_rows: list[list[str]] = []
        mem_keys = sorted({m.keys for m in results.memory}, key=_key_order)
        by = {(m.backend, m.design, m.keys): m for m in results.memory}
        for backend in config.backends:
            for design in config.designs:
                row = [backend, design]
                for k in mem_keys:
                    m = by.get((backend, design, k))
                    if m is None or m.status != "ok":
                        row.append("—" if m is None else m.status)
                    else:
                        row.append(f"{m.peak_bytes / m.n:,.0f} ({_kib(m.retained_bytes)} retained)")
                mem_rows.append(row)
        out.append(
            (
                "Memory: peak traced bytes per job (retained after the run)",
                ["backend", "design", *(f"K = {keys_label(k)}" for k in mem_keys)],
                mem_rows,
                [
                    f"tracemalloc, one untimed run of N = {config.memory_n:,} jobs per cell; "
                    "retained: traced memory still held after the run returned."
                ],
            )
        )
    if results.idle:
        out.append(
            (
                "Memory per live idle lane",
                ["backend", "idle lanes", "bytes per idle lane", "dict of anyio.Lock, per key"],
                [
                    [
                        i.backend,
                        f"{i.lanes:,}",
                        f"{i.bytes_per_lane:,.0f}",
                        f"{i.lock_dict_bytes_per_key:,.0f}",
                    ]
                    for i in results.idle
                ],
                [
                    "KeyedLanes(idle_timeout=1e9) after one job per key; for contrast, a "
                    "plain dict of anyio.Lock that is never cleaned up."
                ],
            )
        )
    if results.latency:
        out.append(
            (
                "Submit-to-start latency of KeyedLanes at a steady arrival rate",
                [
                    "backend",
                    "capacity jobs/s",
                    "arrivals/s",
                    "jobs",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                    "jobs per wake",
                    "pacer lag ms",
                ],
                [
                    [
                        lat.backend,
                        f"{lat.capacity:,.0f}",
                        f"{lat.rate:,.0f}",
                        f"{lat.jobs:,}",
                        f"{lat.p50_ms:.3f}",
                        f"{lat.p90_ms:.3f}",
                        f"{lat.p99_ms:.3f}",
                        f"{lat.max_ms:.3f}",
                        f"{lat.mean_batch:.1f}",
                        f"{lat.pacer_max_lag_ms:.3f}",
                    ]
                    for lat in results.latency
                ],
                [
                    f"Jobs sleep {config.job_seconds * 1e3:g} ms, each with a key of its own, "
                    f"limit={config.limit}; arrivals at {config.load:.0%} of the measured "
                    "capacity: the pacer sleeps until the next arrival is due, then submits "
                    "every job due by then."
                ],
            )
        )
    return out


def _key_order(keys: int) -> float:
    return float("inf") if keys == ALL_DISTINCT else keys


def _kib(value: int) -> str:
    return f"{value / 1024:,.1f} KiB"


def _summary(results: Results) -> list[str]:
    m = results.machine
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    return [
        f"Run of {results.started} ({results.seconds / 60:.1f} min), "
        f"anyio-keyq commit {m['git_commit'] or 'unknown'}.",
        f"{m['cpu_model']}, {m['cpu_count']} cores, {m['platform']}, "
        f"{m['python_implementation']} {m['python']}; {versions}.",
    ]


def markdown(results: Results) -> str:
    lines = ["# anyio-keyq benchmark results", ""]
    lines += [*_summary(results), ""]
    for title, header, rows, notes in tables(results):
        lines += [f"## {title}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
        lines += [f"{note}  " for note in notes]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


#: The marker after which docs/performance.rst includes the generated tables.
RST_MARKER = ".. generated-tables-start"


def _rst_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|").replace("`", "\\`")


def restructuredtext(results: Results) -> str:
    lines = [
        ":orphan:",
        "",
        "Benchmark results (generated)",
        "=============================",
        "",
        ".. This file is written by ``python -m benchmarks``; do not edit it.",
        "",
        RST_MARKER,
        "",
    ]
    lines += [" ".join(_summary(results)), ""]
    for title, header, rows, notes in tables(results):
        lines += [f".. rubric:: {_rst_cell(title)}", ""]
        lines += [
            ".. list-table::",
            "   :header-rows: 1",
            "   :stub-columns: 2" if header[:2] == ["backend", "design"] else "   :stub-columns: 1",
            "",
        ]
        for row in [header, *rows]:
            first, *rest = row
            lines.append(f"   * - {_rst_cell(first)}")
            lines += [f"     - {_rst_cell(value)}" for value in rest]
        lines.append("")
        for note in notes:
            lines += [_rst_cell(note), ""]
    return "\n".join(lines).rstrip() + "\n"


# -- plot -------------------------------------------------------------------------------------


def plot(results: Results, path: Path) -> None:
    """Jobs/s against K, per backend (columns) and variant (rows), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = results.config
    cells = _index(results.throughput)
    variants: Sequence[Variant] = config.variants
    fig, axes = plt.subplots(
        len(variants),
        len(config.backends),
        figsize=(5.2 * len(config.backends), 4.4 * len(variants)),
        squeeze=False,
        sharey="row",
    )
    markers = "os^vDP*Xh"
    for row, variant in enumerate(variants):
        full_n = config.n if variant == "checkpoint" else config.sleep_n
        xs_for = {k: key_count(k, full_n) for k in config.keys}
        for col, backend in enumerate(config.backends):
            ax = axes[row][col]
            for i, design in enumerate(config.designs):
                points = [
                    (xs_for[k], c)
                    for k in config.keys
                    if (c := cells.get((variant, backend, design, k))) is not None
                    and c.median is not None
                ]
                if not points:
                    continue
                xs = [x for x, _ in points]
                med = [c.median or 0.0 for _, c in points]
                low = [m - min(c.rates) for m, (_, c) in zip(med, points, strict=True)]
                high = [max(c.rates) - m for m, (_, c) in zip(med, points, strict=True)]
                ax.errorbar(
                    xs,
                    med,
                    yerr=[low, high],
                    label=design,
                    color=f"C{i % 10}",
                    marker=markers[i % len(markers)],
                    linewidth=2.4 if design == LANES else 1.2,
                    linestyle="--" if design == FLOOR else "-",
                    capsize=3,
                    markersize=5,
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(list(xs_for.values()))
            ax.set_xticklabels(
                [("all\n" + f"({xs_for[k]:,})") if k == ALL_DISTINCT else f"{k:,}" for k in xs_for]
            )
            _separate_crowded_labels(ax, list(xs_for.values()))
            ax.minorticks_off()
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{backend}: {VARIANT_TITLES[variant].split(' (')[0].lower()}")
            ax.set_xlabel("K (distinct keys)")
            if col == 0:
                ax.set_ylabel(f"jobs per second (median, min{DASH}max)")
    # The first panel may lack designs that run on asyncio only: collect from all.
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    order = [d for d in config.designs if d in legend]
    handles, labels = [legend[d] for d in order], order
    fig.legend(  # pyright: ignore[reportUnknownMemberType]
        handles, labels, loc="lower center", ncol=len(labels), frameon=False
    )
    fig.suptitle(  # pyright: ignore[reportUnknownMemberType]
        f"anyio-keyq benchmark, limit={config.limit} ({results.machine['cpu_model']}, "
        f"{results.machine['cpu_count']} cores, Python {results.machine['python']})"
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)  # pyright: ignore[reportUnknownMemberType]
    plt.close(fig)


def _separate_crowded_labels(ax: Any, ticks: list[int]) -> None:
    """Push apart the labels of neighbouring ticks less than a factor 4 apart."""
    labels = ax.get_xticklabels()
    for i in range(1, len(ticks)):
        if ticks[i] < 4 * ticks[i - 1]:
            labels[i - 1].set_horizontalalignment("right")
            labels[i].set_horizontalalignment("left")


def write(results: Results, out: Path, *, with_plot: bool) -> list[Path]:
    import json

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md", out / "results.rst"]
    written[0].write_text(json.dumps(to_json(results), indent=2) + "\n", encoding="utf-8")
    written[1].write_text(markdown(results), encoding="utf-8")
    written[2].write_text(restructuredtext(results), encoding="utf-8")
    if with_plot:
        png = out / "jobs_per_second.png"
        plot(results, png)
        written.append(png)
    return written
