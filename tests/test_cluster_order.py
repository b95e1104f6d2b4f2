"""The per-socket seq order of cluster mode (halochat/cluster/delivery.py, Sequencer): frames
of one session published by two processes may arrive in either order; each socket still
gets them in seq order, once, with its own acked sends and a hello replay in their places."""

from typing import Any

from beanie import PydanticObjectId

from halochat.cluster.delivery import Sequencer


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
