"""Host lanes in a trio nursery, next to the tasks that use them.

A home-automation hub talks to devices that accept one command at a time. Several
client tasks send commands concurrently; the lanes, keyed by device, make each device
run its commands one after another, in the order they were sent, and let different
devices work in parallel.

Here the lanes are hosted by the application's own nursery (``task_group=nursery``)
rather than by ``async with``: their workers are tasks of that nursery, and
``await lanes.aclose()`` lets them finish. If the nursery is cancelled, every queued
and running job is cancelled with it.

This example uses trio directly. Run it with ``python examples/trio_nursery.py``.
"""

from __future__ import annotations

import trio

from anyio_keyq import JobStatus, KeyedLanes


class Hub:
    """The devices: records what each one executed, and checks it is never busy twice."""

    def __init__(self) -> None:
        self.executed: dict[str, list[str]] = {}
        self.busy: set[str] = set()

    async def send(self, device: str, command: str) -> str:
        assert device not in self.busy, f"{device} got two commands at once"
        self.busy.add(device)
        try:
            await trio.sleep(0.05 if command == "firmware update" else 0.005)
            self.executed.setdefault(device, []).append(command)
            return f"{device}: {command} ok"
        finally:
            self.busy.discard(device)


async def client(lanes: KeyedLanes[str], hub: Hub, commands: list[tuple[str, str]]) -> None:
    for device, command in commands:
        # run() waits for the device's turn, then for the command's result.
        print(await lanes.run(device, hub.send, device, command))


async def main() -> None:
    hub = Hub()
    async with trio.open_nursery() as nursery:
        lanes = KeyedLanes[str](limit=2, task_group=nursery)

        async with trio.open_nursery() as clients:
            # Two clients, sending to the same devices at the same time.
            clients.start_soon(
                client, lanes, hub, [("lamp", "on"), ("door", "lock"), ("lamp", "dim")]
            )
            clients.start_soon(client, lanes, hub, [("door", "unlock"), ("lamp", "off")])

            # A caller that gives up cancels its job: a cancelled run() leaves no
            # command behind, queued or half-done.
            update = await lanes.submit("thermostat", hub.send, "thermostat", "firmware update")
            with trio.move_on_after(0.01):
                await lanes.run("thermostat", hub.send, "thermostat", "set 21°C")
            await update.wait()

        # Close the lanes and wait for every accepted job; the workers then exit,
        # and the nursery can finish.
        await lanes.aclose()

        stats = lanes.statistics()
        print(f"{stats.completed} commands run, {stats.cancelled} cancelled")
        assert update.status is JobStatus.FINISHED
        assert hub.executed["thermostat"] == ["firmware update"]
        assert sorted(hub.executed["lamp"]) == ["dim", "off", "on"]
        assert hub.executed["lamp"].index("on") < hub.executed["lamp"].index("dim")
        assert sorted(hub.executed["door"]) == ["lock", "unlock"]
        assert (stats.completed, stats.cancelled, stats.running, len(lanes)) == (6, 1, 0, 0)


if __name__ == "__main__":
    trio.run(main)
