"""Durable keyed lanes on Redis, for many worker processes (``pip install anyio-keyq[redis]``).

See :doc:`/scaling`.
"""

from .._util import fixup_module_metadata as _fixup_module_metadata
from ._queue import DeadLetter as DeadLetter
from ._queue import RedisQueue as RedisQueue
from ._queue import RedisQueueInfo as RedisQueueInfo
from ._worker import RedisJob as RedisJob
from ._worker import RedisWorker as RedisWorker
from ._worker import RedisWorkerStatistics as RedisWorkerStatistics
from ._worker import RetryPolicy as RetryPolicy

__all__ = (
    "DeadLetter",
    "RedisJob",
    "RedisQueue",
    "RedisQueueInfo",
    "RedisWorker",
    "RedisWorkerStatistics",
    "RetryPolicy",
)

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
