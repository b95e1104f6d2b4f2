"""The per-socket seq order of cluster mode (halochat/cluster/delivery.py, Sequencer): frames
of one session published by two processes may arrive in either order; each socket still
gets them in seq order, once, with its own acked sends and a hello replay in their places."""

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from beanie import PydanticObjectId

from halochat.cluster import delivery
from halochat.cluster.delivery import Sequencer
from halochat.constants import Role
from halochat.db.connect import init_db, make_client
from halochat.documents import Message
from halochat.documents.common import utcnow


class FakeSocket:
    """What the Sequencer uses of a Connection."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.closed = False
        self.live_from_seq: dict[PydanticObjectId, int] = {}

    def send(self, frame: dict[str, Any]) -> bool:
        self.sent.append(frame["data"]["message"]["seq"])
        return True

    def drop(self, why: str) -> None:
        self.closed = True


async def sent(sock: FakeSocket, expected: list[int], timeout: float = 5.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while sock.sent != expected:  # noqa: ASYNC110 (the Sequencer's tasks send)
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"sent {sock.sent}, expected {expected}") from None


def message(session_id: PydanticObjectId, seq: int) -> dict[str, Any]:
    return {"type": "message.new", "data": {"session_id": str(session_id), "message": {"seq": seq}}}


async def test_frames_out_of_order_acks_and_a_replay_come_out_in_seq_order() -> None:
    order, sid = Sequencer(), PydanticObjectId()
    sock: Any = FakeSocket()

    def arrive(seq: int) -> None:
        order.message(sock, sid, seq, message(sid, seq))

    arrive(5)  # the first live frame: the device's live range starts here
    assert sock.sent == [5] and sock.live_from_seq[sid] == 5
    arrive(7)  # ahead: held until 6 arrives
    assert sock.sent == [5]
    arrive(6)
    assert sock.sent == [5, 6, 7]
    order.acked(sock, sid, 8)  # this socket's own send, answered by its ack
    arrive(9)
    arrive(9)  # twice on the bus: once on the device
    arrive(4)  # before the live range: the hello replay's, not live
    assert sock.sent == [5, 6, 7, 9]

    order.pause(sock, sid)  # a hello replay runs: live frames wait
    arrive(11)
    arrive(10)
    assert sock.sent == [5, 6, 7, 9]
    order.replayed(sock, sid, 10)  # the replay sent up to 10
    assert sock.sent == [5, 6, 7, 9, 11]

    other = FakeSocket()
    order.pause(other, sid)  # a fresh socket whose first act is hello
    order.message(other, sid, 3, message(sid, 3))
    order.replayed(other, sid, 2)
    assert other.sent == [3]
    order.forget_conn(sock)
    order.forget_conn(other)


async def test_a_first_frame_waits_for_earlier_ones_published_since_the_socket_subscribed() -> None:
    """A new session's first two messages, sent on two processes at once, reach a socket of a
    third in either order: seq 2 first must not make seq 1 look already delivered."""
    sid = PydanticObjectId()

    async def fetch(session_id: PydanticObjectId, before: int, since: Any) -> tuple[int, Any]:
        """The database: seq 1 was stored after the socket subscribed."""
        assert session_id == sid and before == 2 and since <= stored_at
        return 1, [(1, message(sid, 1))]

    order = Sequencer(fetch)
    sock: Any = FakeSocket()
    order.attached(sock)
    # After subscribing (taken before it, a slow machine could put the subscription in a
    # later millisecond: the fake database's check then failed and the probe fell back).
    stored_at = utcnow()
    order.message(sock, sid, 2, message(sid, 2))  # the Mitra's, first on the bus
    assert sock.sent == []  # held while seq 1 (stored since the socket subscribed) is awaited
    order.message(sock, sid, 1, message(sid, 1))  # the customer's, from another process
    await sent(sock, [1, 2])
    assert sock.live_from_seq[sid] == 1
    order.forget_conn(sock)


async def test_a_failed_first_lookup_keeps_the_frames_in_hand() -> None:
    """The database unreachable when a socket's first frame of a session looks for earlier
    ones: the frames that arrived live meanwhile are still sent, in seq order."""
    sid = PydanticObjectId()

    async def fetch(session_id: PydanticObjectId, before: int, since: Any) -> tuple[int, Any]:
        await asyncio.sleep(0.05)  # seq 1 arrives live meanwhile
        raise ConnectionError("database unreachable")

    order = Sequencer(fetch)
    sock: Any = FakeSocket()
    order.attached(sock)
    order.message(sock, sid, 2, message(sid, 2))
    order.message(sock, sid, 1, message(sid, 1))
    await sent(sock, [1, 2])
    assert sock.live_from_seq[sid] == 1
    order.forget_conn(sock)


@pytest.fixture
async def messages_db(mongodb_uri: str) -> AsyncIterator[None]:
    """A fresh database for the Sequencer's own reads (the stored messages), in-process."""
    client = make_client(mongodb_uri)
    name = f"t_order_{time.time_ns()}"
    await init_db(client, name)
    yield
    await client.drop_database(name)
    await client.close()


async def store(session_id: PydanticObjectId, seq: int, ago: float = 0.0) -> None:
    """A message stored under `seq`, its created_at `ago` seconds back (as the sending
    process stamps it, to the millisecond)."""
    now = utcnow() - timedelta(seconds=ago)
    await Message.get_pymongo_collection().insert_one(
        {
            "_id": PydanticObjectId(),
            "session_id": session_id,
            "seq": seq,
            "sender_id": PydanticObjectId(),
            "sender_role": Role.CUSTOMER.value,
            "client_msg_id": f"m{seq}",
            "body": "x",
            "created_at": now.replace(microsecond=now.microsecond // 1000 * 1000),
        }
    )


async def test_a_first_frame_waits_for_an_earlier_seq_still_being_stored(
    messages_db: None,
) -> None:
    """The probe of a socket's first frame must count a seq taken but not yet stored (its
    insert still in flight on another process) as one to wait for, not as one before the
    socket: else its frame, arriving live later, looks already delivered and is dropped
    (bench/load.py's saturation phase counted one such message "not delivered")."""
    sid = PydanticObjectId()
    await store(sid, 1, ago=60)  # before the socket subscribed: not its to get live
    order = Sequencer()
    sock: Any = FakeSocket()
    order.attached(sock)
    await asyncio.sleep(0.01)  # (created_at is in milliseconds)
    # Seq 2 is taken on process 1, its insert still in flight; seq 3, taken on process 2
    # just after, is stored and is this socket's first frame.
    await store(sid, 3)
    order.message(sock, sid, 3, message(sid, 3))
    await asyncio.sleep(0.2)  # the probe has read the database (seq 2 not there yet)
    await store(sid, 2)
    order.message(sock, sid, 2, message(sid, 2))  # published once stored
    await sent(sock, [2, 3])
    assert sock.live_from_seq[sid] == 2
    order.forget_conn(sock)


async def test_a_hole_filled_live_during_the_read_leaves_the_filler_reading(
    messages_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filler reads a hole's message while its frame arrives live: what it read must not
    stay held below the socket's next seq, where it would stop every later read (a later
    hole whose frame never comes live, its sender having died after storing it, would then
    hold the socket's frames until it is dropped)."""
    sid = PydanticObjectId()
    order = Sequencer()
    sock: Any = FakeSocket()
    read = delivery._messages

    async def read_while_it_arrives(*args: Any) -> list[dict[str, Any]]:
        found = await read(*args)
        order.message(sock, sid, 2, message(sid, 2))  # live, while the filler was reading
        return found

    order.message(sock, sid, 1, message(sid, 1))
    await store(sid, 2)
    order.message(sock, sid, 3, message(sid, 3))  # ahead of 2: the filler starts
    monkeypatch.setattr(delivery, "_messages", read_while_it_arrives)
    await sent(sock, [1, 2, 3])
    monkeypatch.setattr(delivery, "_messages", read)
    await store(sid, 4)  # stored, never published (its process died)
    order.message(sock, sid, 5, message(sid, 5))
    await sent(sock, [1, 2, 3, 4, 5], timeout=10)
    order.forget_conn(sock)


async def test_a_new_hole_gets_its_own_wait_before_it_is_skipped(
    messages_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hole is skipped only after HOLE_GIVE_UP_SECONDS of its own: one filled live while
    the filler waited does not count for the next (whose send may still be storing it)."""
    monkeypatch.setattr(delivery, "HOLE_GIVE_UP_SECONDS", 2.0)
    sid = PydanticObjectId()
    order = Sequencer()
    sock: Any = FakeSocket()

    def arrive(seq: int) -> None:
        order.message(sock, sid, seq, message(sid, seq))

    arrive(1)
    arrive(3)  # seq 2 still being stored: the filler reads at 0.5 s, 1.5 s, 3.5 s
    await asyncio.sleep(1.7)
    await store(sid, 2)
    arrive(2)  # filled live
    arrive(5)  # a new hole: seq 4 still being stored
    assert sock.sent == [1, 2, 3]
    await asyncio.sleep(2.3)  # past the filler's third read
    await store(sid, 4)
    arrive(4)
    await sent(sock, [1, 2, 3, 4, 5])
    order.forget_conn(sock)
