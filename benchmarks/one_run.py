"""One timing run in an interpreter of its own: ``python -m benchmarks.one_run ...``.

The harness times every run in a fresh process, as ``pyperf`` does, so that no design
inherits the heap that another design left behind. That matters with many keys, where
a design's speed depends on where its objects land in memory: run after other designs
in one process, KeyedLanes at K = 10,000 ran up to 10 % slower than in a fresh one.
Prints the run's seconds.
"""

from __future__ import annotations

import argparse

from .designs import DESIGNS
from .harness import time_once
from .workload import VARIANTS, make_durations, make_jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One timing run in a fresh interpreter.")
    parser.add_argument("backend")
    parser.add_argument("design", choices=sorted(DESIGNS))
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("keys", type=int, help="the key count (0: distinct keys)")
    parser.add_argument("full_n", type=int, help="the workload's size")
    parser.add_argument("n", type=int, help="how many of its jobs to run")
    parser.add_argument("limit", type=int)
    args = parser.parse_args(argv)
    jobs = make_jobs(args.full_n, args.keys)[: args.n]
    durations = make_durations(args.full_n) if args.variant == "sleep" else None
    design = DESIGNS[args.design]
    print(repr(time_once(args.backend, design, jobs, args.variant, durations, args.limit)))


if __name__ == "__main__":
    main()
