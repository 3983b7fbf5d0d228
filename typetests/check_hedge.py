"""Static type checks of hedge, read by mypy and pyright, never executed."""

from __future__ import annotations

from typing import assert_type

from anyio_keyq import hedge


async def read(table: str, key: int) -> bytes:
    return b""


async def check() -> None:
    assert_type(await hedge(read, "users", 42), bytes)
    assert_type(await hedge(read, "users", 42, delays=(0.05, 0.2)), bytes)
    assert_type(await hedge(read, "users", 42, delays=[0, 1.5]), bytes)
    assert_type(await hedge(read, "users", 42, delays=()), bytes)
    await hedge(read, "users", "42")  # type: ignore[arg-type]
    await hedge(read, "users")  # type: ignore[arg-type]
    await hedge(read, "users", 42, delays=0.05)  # type: ignore[arg-type]
    await hedge(read, "users", 42, timeout=1)  # type: ignore[call-arg]
