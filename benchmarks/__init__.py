"""The benchmark suite of anyio-keyq: ``python -m benchmarks --help``."""
