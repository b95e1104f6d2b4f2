"""The notifier seam (docs/architecture.md): domain events -> per-user deliveries.

These run in-process against a real Hub (with sockets that record what they are sent) and a
recording Delivery, the contract a cluster Delivery must keep. End-to-end delivery is covered
by test_chat, test_pairing, test_lifecycle and test_push.
"""

import asyncio
from datetime import datetime
from typing import Any

import orjson
from beanie import PydanticObjectId

from halochat.constants import AppState, PushType, Role, ServerFrame
from halochat.notify.delivery import Delivery
from halochat.notify.events import MessageStored, ReceiptMoved, UserNotice
from halochat.notify.local import LocalDelivery
from halochat.notify.notifier import Notifier
from halochat.push import Push
from halochat.ws.hub import Connection, Hub


class Recording(Delivery):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def to_user(self, user_id: Any, frame: dict[str, Any], push: Push | None = None) -> None:
        self.calls.append(("to_user", user_id, frame["type"], push))

    def to_user_except(self, user_id: Any, frame: dict[str, Any], except_conn: Any) -> None:
        self.calls.append(("to_user_except", user_id, frame["type"], except_conn))

    async def close_user(
        self, user_id: Any, code: int, frame: dict[str, Any], issued_until: datetime | None = None
    ) -> int:
        self.calls.append(("close_user", user_id, code))
        return 0


class Socket:
    """The part of a Sanic websocket a Connection writes to."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        self.sent.append(orjson.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        return None


PUSH = Push(type=PushType.CHAT_MESSAGE, session_id="s", title="t", body="b")


def message_event(sender: PydanticObjectId, recipient: PydanticObjectId, origin: object, seq: int):
    sid = PydanticObjectId("0" * 24)
    data = {"session_id": str(sid), "message": {"seq": seq}}
    return MessageStored(sid, seq, data, sender, recipient, PUSH, origin)


async def test_events_become_per_user_deliveries() -> None:
    rec = Recording()
    notifier = Notifier(rec)
    a, b = PydanticObjectId(), PydanticObjectId()
    origin = object()
    notifier.publish_all(
        [
            message_event(a, b, origin, 1),
            ReceiptMoved(b, a, {"session_id": "s"}, origin),
            UserNotice(b, ServerFrame.TYPING, {}),
            UserNotice(None, ServerFrame.TYPING, {}),  # nobody to tell: nothing delivered
        ]
    )
    assert rec.calls == [
        ("to_user", b, "message.new", PUSH),
        ("to_user_except", a, "message.new", origin),
        ("to_user", a, "receipt.updated", None),
        ("to_user_except", b, "receipt.updated", origin),
        ("to_user", b, "typing", None),
    ]


async def test_local_delivery_pushes_only_when_no_device_is_in_the_foreground() -> None:
    hub = Hub()
    pushed: list[tuple[Any, Push]] = []

    class Pushes:
        def send_later(self, user_id: Any, push: Push) -> None:
            pushed.append((user_id, push))

    notifier = Notifier(LocalDelivery(hub, Pushes()))  # type: ignore[arg-type]
    sender, recipient = PydanticObjectId(), PydanticObjectId()
    phone, tablet, away = Socket(), Socket(), Socket()
    origin = Connection(ws=phone, user_id=sender, role=Role.CUSTOMER)
    other = Connection(ws=tablet, user_id=sender, role=Role.CUSTOMER)
    background = Connection(
        ws=away, user_id=recipient, role=Role.MITRA, app_state=AppState.BACKGROUND
    )
    for conn in (origin, other, background):
        assert hub.add(conn)
    notifier.publish(message_event(sender, recipient, origin, 7))
    notifier.publish(message_event(sender, recipient, origin, 8))
    await asyncio.sleep(0.05)
    # The recipient's only device is in the background: it gets the frames and the pushes.
    assert [f["data"]["message"]["seq"] for f in away.sent] == [7, 8]
    assert [user for user, _ in pushed] == [recipient, recipient]
    # The sender's other device gets the frames; the sending device does not (it is acked),
    # yet every device's live range starts at the first live seq (hello replays below it).
    assert [f["data"]["message"]["seq"] for f in tablet.sent] == [7, 8]
    assert phone.sent == []
    assert {c.live_from_seq[PydanticObjectId("0" * 24)] for c in (origin, other, background)} == {7}
    background.app_state = AppState.FOREGROUND
    notifier.publish(message_event(sender, recipient, origin, 9))
    assert len(pushed) == 2  # a device in the foreground: no push
    for conn in (origin, other, background):
        await hub.remove(conn)
