"""Structured concurrency per key for anyio and trio."""

from ._adaptive import AdaptiveLimiter as AdaptiveLimiter
from ._adaptive import AdaptiveLimiterStatistics as AdaptiveLimiterStatistics
from ._exceptions import JobCancelled as JobCancelled
from ._exceptions import LaneDeadlock as LaneDeadlock
from ._exceptions import LaneFull as LaneFull
from ._exceptions import LanesClosed as LanesClosed
from ._hedge import hedge as hedge
from ._iterators import amap as amap
from ._iterators import batched as batched
from ._iterators import keyed_amap as keyed_amap
from ._job import Job as Job
from ._job import JobStatus as JobStatus
from ._lanes import KeyedLanes as KeyedLanes
from ._lanes import LanesStatistics as LanesStatistics
from ._lanes import TaskSpawner as TaskSpawner
from ._limiters import Limiter as Limiter
from ._limiters import PriorityLimiter as PriorityLimiter
from ._limiters import PriorityLimiterStatistics as PriorityLimiterStatistics
from ._limiters import WeightedLimiter as WeightedLimiter
from ._limiters import WeightedLimiterStatistics as WeightedLimiterStatistics
from ._rate import RateLimiter as RateLimiter
from ._rate import RateLimiterStatistics as RateLimiterStatistics
from ._retry import Backoff as Backoff
from ._retry import Retry as Retry
from ._retry import RetryStatistics as RetryStatistics
from ._retry import retry as retry
from ._scope import ConcurrencyScope as ConcurrencyScope
from ._scope import ScopeStatistics as ScopeStatistics
from ._singleflight import SingleFlight as SingleFlight
from ._singleflight import SingleFlightStatistics as SingleFlightStatistics
from ._util import fixup_module_metadata as _fixup_module_metadata

__all__ = (
    "AdaptiveLimiter",
    "AdaptiveLimiterStatistics",
    "Backoff",
    "ConcurrencyScope",
    "Job",
    "JobCancelled",
    "JobStatus",
    "KeyedLanes",
    "LaneDeadlock",
    "LaneFull",
    "LanesClosed",
    "LanesStatistics",
    "Limiter",
    "PriorityLimiter",
    "PriorityLimiterStatistics",
    "RateLimiter",
    "RateLimiterStatistics",
    "Retry",
    "RetryStatistics",
    "ScopeStatistics",
    "SingleFlight",
    "SingleFlightStatistics",
    "TaskSpawner",
    "WeightedLimiter",
    "WeightedLimiterStatistics",
    "amap",
    "batched",
    "hedge",
    "keyed_amap",
    "retry",
)

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
