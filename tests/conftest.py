from __future__ import annotations

from typing import Any

import pytest

BACKENDS = [
    pytest.param(("asyncio", {"debug": True}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param  # type: ignore[no-any-return]


def _virtual_asyncio() -> tuple[str, dict[str, Any]]:
    import async_solipsism

    return ("asyncio", {"loop_factory": async_solipsism.EventLoop})


def _virtual_trio() -> tuple[str, dict[str, Any]]:
    import trio.testing

    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


@pytest.fixture(params=["asyncio", "trio"], ids=["asyncio-virtual", "trio-virtual"])
def virtual_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """A backend whose clock is virtual: sleeps finish at once at exact instants."""
    return _virtual_asyncio() if request.param == "asyncio" else _virtual_trio()
