"""``python -m anyio_keyq.redis worker``: run a :class:`RedisWorker` until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from ._worker import RedisWorker, RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import TaskStatus


def _load(spec: str, what: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise SystemExit(f"{what} must look like 'package.module:name', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load {what} {spec!r}: {exc}") from None
    return obj


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anyio_keyq.redis",
        description="Run the jobs of a queue of keyed lanes on Redis.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser(
        "worker",
        help="run a worker until SIGTERM or SIGINT",
        description=(
            "Run a worker until SIGTERM or SIGINT: then it stops claiming, lets running "
            "jobs finish for --grace seconds and hands the others back. A second signal "
            "cancels the running jobs at once."
        ),
    )
    worker.add_argument(
        "handlers", help="'package.module:name' of a mapping from task names to handlers"
    )
    worker.add_argument(
        "--url",
        default=os.environ.get("KEYQ_REDIS_URL", "redis://localhost:6379"),
        help="the Redis URL (default: $KEYQ_REDIS_URL, else redis://localhost:6379); "
        "prefer the variable for URLs with a password, which other users can see in "
        "the process list",
    )
    worker.add_argument("--queue", default="default", help="the queue's name")
    worker.add_argument("--concurrency", type=int, default=10, help="jobs at once (10)")
    worker.add_argument("--lease", type=float, default=30.0, help="lease in seconds (30)")
    worker.add_argument("--max-active", type=int, default=None, help="cap over all workers")
    worker.add_argument("--max-lost", type=int, default=None, help="runs lost before dead")
    worker.add_argument("--poll-interval", type=float, default=1.0, help="seconds (1)")
    worker.add_argument("--grace", type=float, default=None, help="seconds (the lease)")
    worker.add_argument("--retry", default=None, help="'package.module:name' of a Retry")
    worker.add_argument(
        "--accept-pickle", action="store_true", help="run jobs with pickled payloads"
    )
    worker.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    worker.add_argument("--log-level", default="INFO")
    return parser


_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Signals that came before the worker could handle them (while it connects).
_early_signals: list[int] = []


def _remember(signum: int, frame: object) -> None:
    _early_signals.append(signum)


async def _serve(worker: RedisWorker) -> None:
    async with worker, anyio.create_task_group() as tg:

        async def on_signals(*, task_status: TaskStatus[None]) -> None:
            with anyio.open_signal_receiver(*_SIGNALS) as signals:
                task_status.started()
                count = 0
                if _early_signals:
                    count = 1
                    worker.stop()
                async for signum in signals:
                    count += 1
                    logging.getLogger("anyio_keyq.redis").info(
                        "%s: %s", signal.Signals(signum).name,
                        "stopping" if count == 1 else "cancelling the running jobs",
                    )  # fmt: skip
                    if count == 1:
                        worker.stop()
                    else:
                        tg.cancel_scope.cancel()

        await tg.start(on_signals)
        await worker.serve()
        tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    handlers = _load(args.handlers, "handlers")
    if not isinstance(handlers, Mapping):
        raise SystemExit(f"handlers {args.handlers!r} is not a mapping: {handlers!r}")
    retry: RetryPolicy | None = None if args.retry is None else _load(args.retry, "retry")
    try:
        worker = RedisWorker(
            args.url,
            args.queue,
            handlers,  # pyright: ignore[reportUnknownArgumentType]
            concurrency=args.concurrency,
            lease=args.lease,
            retry=retry,
            max_active=args.max_active,
            max_lost=args.max_lost,
            poll_interval=args.poll_interval,
            grace=args.grace,
            accept_pickle=args.accept_pickle,
        )
    except (TypeError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    # A signal before the worker serves stops it as soon as it does, not the process.
    _early_signals.clear()
    previous = {signum: signal.signal(signum, _remember) for signum in _SIGNALS}
    try:
        anyio.run(_serve, worker, backend=args.backend)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as python -m
    sys.exit(main())
