"""Download files part by part, without ever interleaving the writes to one file.

Each file is fetched as a series of parts, and each part is streamed into the file as
it arrives, piece by piece. Parts of different files are downloaded in parallel (three
at a time), but two parts of the same file must never be written at the same time,
or their pieces would interleave, and they must be appended in order. A last job per
file checks the result and renames ``NAME.part`` to ``NAME``: as it is queued in the
same lane after the parts, it starts only once they have all been written.

The "network" is simulated with ``anyio.sleep``; the files go to a temporary directory.
Run it with ``python examples/file_downloads.py``.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import anyio

from anyio_keyq import KeyedLanes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio_keyq import Job

#: How many parts each file is downloaded in.
FILES = {"alpha.bin": 4, "beta.bin": 3, "gamma.bin": 5}
PIECE = 8  # bytes per network read


def part_data(name: str, index: int) -> bytes:
    """The bytes of part *index* of *name*, as the server would send them."""
    return f"<{name} part {index}: {'.' * (8 * index)}>\n".encode()


async def fetch(name: str, index: int) -> AsyncIterator[bytes]:
    """Stream part *index* of *name* from the (simulated) network, piece by piece."""
    data = part_data(name, index)
    for start in range(0, len(data), PIECE):
        await anyio.sleep(0.001)
        yield data[start : start + PIECE]


async def download_part(path: anyio.Path, name: str, index: int) -> int:
    """Append part *index* of *name* to *path*; return the number of bytes written."""
    written = 0
    async with await anyio.open_file(path, "ab") as file:
        async for piece in fetch(name, index):
            # Another part of this file writing here would interleave its pieces.
            written += await file.write(piece)
    return written


async def finish(part_path: anyio.Path, name: str) -> anyio.Path:
    """Check the downloaded file and give it its final name."""
    expected = b"".join(part_data(name, index) for index in range(FILES[name]))
    assert await part_path.read_bytes() == expected, f"{name} is corrupt"
    return await part_path.rename(part_path.with_name(name))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = anyio.Path(tmp)
        async with KeyedLanes[str](limit=3) as lanes:
            # Queue the parts as a scheduler would, across files: alpha 0, beta 0,
            # gamma 0, alpha 1, ...: the lanes keep each file's parts apart and in order.
            parts: list[Job[int]] = []
            for index in range(max(FILES.values())):
                for name, count in FILES.items():
                    if index < count:
                        part_path = directory / f"{name}.part"
                        parts.append(
                            await lanes.submit(name, download_part, part_path, name, index)
                        )
            # The last job of each lane runs after all the parts of its file.
            done = [
                await lanes.submit(name, finish, directory / f"{name}.part", name) for name in FILES
            ]

            total = sum([await job for job in parts])
            for job in done:
                path = await job
                print(f"{path.name}: {(await path.stat()).st_size} bytes")
            print(f"{len(parts)} parts, {total} bytes in all")
        stats = lanes.statistics()

        print(f"{stats.completed} jobs, at most {stats.peak_running} at once")
        assert sorted([path.name async for path in directory.iterdir()]) == sorted(FILES)
        assert stats.completed == sum(FILES.values()) + len(FILES)
        assert stats.peak_running == 3


if __name__ == "__main__":
    anyio.run(main)
