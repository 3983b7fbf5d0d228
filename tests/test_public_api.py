"""The public surface: exports, module names, final classes."""

from __future__ import annotations

import inspect

import pytest

import anyio_keyq


def test_all_matches_the_public_names() -> None:
    # Subpackages such as anyio_keyq.redis appear once imported, and are not names of
    # the package itself.
    public = {
        name
        for name, obj in vars(anyio_keyq).items()
        if not name.startswith("_") and not inspect.ismodule(obj)
    }
    assert public == set(anyio_keyq.__all__)


@pytest.mark.parametrize("name", anyio_keyq.__all__)
def test_public_objects_report_the_public_module(name: str) -> None:
    obj = getattr(anyio_keyq, name)
    assert obj.__module__ == "anyio_keyq"
    assert obj.__doc__


FINAL_CLASSES = (
    "AdaptiveLimiter",
    "AdaptiveLimiterStatistics",
    "Backoff",
    "CircuitBreaker",
    "CircuitBreakerStatistics",
    "ConcurrencyScope",
    "DeadLetter",
    "Job",
    "KeyedLanes",
    "LanesStatistics",
    "Pool",
    "PoolStatistics",
    "PriorityLimiter",
    "PriorityLimiterStatistics",
    "RateLimiter",
    "RateLimiterStatistics",
    "Retry",
    "RetryStatistics",
    "ScopeStatistics",
    "SingleFlight",
    "SingleFlightStatistics",
    "WeightedLimiter",
    "WeightedLimiterStatistics",
)


@pytest.mark.parametrize("name", FINAL_CLASSES)
def test_concrete_classes_refuse_subclassing(name: str) -> None:
    assert name in anyio_keyq.__all__
    cls = getattr(anyio_keyq, name)
    assert inspect.isclass(cls)
    with pytest.raises(TypeError, match="does not support subclassing"):
        type("Sub", (cls,), {})


def test_limiters_implement_the_protocol() -> None:
    assert isinstance(anyio_keyq.WeightedLimiter(1), anyio_keyq.Limiter)
    assert isinstance(anyio_keyq.PriorityLimiter(1), anyio_keyq.Limiter)


def test_exception_hierarchy() -> None:
    import anyio

    assert issubclass(anyio_keyq.LanesClosed, anyio.ClosedResourceError)
    assert issubclass(anyio_keyq.PoolClosed, anyio.ClosedResourceError)
    assert issubclass(anyio_keyq.LaneFull, anyio.WouldBlock)
    assert issubclass(anyio_keyq.LaneDeadlock, RuntimeError)
    assert issubclass(anyio_keyq.JobCancelled, Exception)
    assert issubclass(anyio_keyq.CircuitOpen, Exception)


def test_the_package_may_derive_from_its_final_classes() -> None:
    # The job that opens a lane is a Lane: a Job like the others, and not generic.
    from anyio_keyq._lane import Lane

    assert issubclass(Lane, anyio_keyq.Job)
    assert Lane.__parameters__ == ()  # Job[Any]: the package's subclass is not generic
