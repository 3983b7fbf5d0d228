"""Handle chat messages in order for each user, and many users at once.

A chat backend receives one stream of messages from all its users, interleaved. A
message can take a while to handle (spam checks, storage, fan-out), and the time varies
from one message to the next. Two messages of the same user must still be handled in
the order they were sent, or the conversation is scrambled; messages of different users
can be handled in parallel, up to a global cap.

Run it with ``python examples/chat_messages.py``.
"""

from __future__ import annotations

import anyio

from anyio_keyq import KeyedLanes

#: The incoming stream: (user, text), interleaved as it arrives.
INBOX = [
    ("alice", "hi all"),
    ("bob", "hello"),
    ("alice", "who is up for lunch?"),
    ("carol", "me!"),
    ("bob", "lunch sounds good"),
    ("alice", "12:30 at the usual place"),
    ("carol", "see you there"),
    ("bob", "on my way"),
    ("alice", "bring the slides"),
]


async def handle_message(history: dict[str, list[str]], user: str, text: str) -> int:
    """Store one message; return how many messages *user* has sent so far."""
    # Short messages are handled faster than long ones, so without lanes a later,
    # shorter message of the same user would overtake an earlier, longer one.
    await anyio.sleep(len(text) / 1000)
    conversation = history.setdefault(user, [])
    conversation.append(text)
    return len(conversation)


async def main() -> None:
    history: dict[str, list[str]] = {}
    async with KeyedLanes[str](limit=2) as lanes:
        # submit() queues the message in the lane of its user and returns at once
        # with a handle; the lanes run the jobs in the background.
        jobs = [
            await lanes.submit(user, handle_message, history, user, text) for user, text in INBOX
        ]
        # Handles can be awaited in any order; each gives its job's return value:
        # the n-th message of a user saw n messages of that user stored.
        for n, ((user, _), job) in enumerate(zip(INBOX, jobs, strict=True)):
            assert await job == [sender for sender, _ in INBOX[: n + 1]].count(user)
    # Leaving the block waited for every job; idle lanes were dropped.
    stats = lanes.statistics()
    assert len(lanes) == 0

    for user in sorted(history):
        print(f"{user}: {' / '.join(history[user])}")
    print(f"{stats.completed} messages handled, at most {stats.peak_running} at once")

    # Every user's messages were stored in the order they were sent ...
    for user in ("alice", "bob", "carol"):
        assert history[user] == [text for sender, text in INBOX if sender == user]
    # ... and the global limit held, while still running users in parallel.
    assert stats.peak_running == 2


if __name__ == "__main__":
    anyio.run(main)
