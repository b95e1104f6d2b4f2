"""The one path from domain events to devices: events -> frames -> Delivery.

Domain actions publish typed events (halochat/notify/events.py); the notifier turns each into
per-user deliveries (a WebSocket frame, maybe an FCM push) on its `Delivery`. Nothing else in
the code sends frames to users: a new kind of event is routed here, and a cluster bus replaces
the Delivery (docs/architecture.md).
"""

from collections.abc import Iterable
from typing import Any, assert_never

from halochat.auth import ws_close_code
from halochat.constants import ServerFrame
from halochat.notify.delivery import Delivery
from halochat.notify.events import (
    AccessEnded,
    Event,
    MessageStored,
    PartyNotice,
    ReceiptMoved,
    UserNotice,
)
from halochat.views import session_view


def frame(type_: ServerFrame, data: dict[str, Any]) -> dict[str, Any]:
    """An event frame as it goes on the wire (docs/protocol.md)."""
    return {"type": type_.value, "data": data}


class Notifier:
    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery

    def publish(self, event: Event) -> None:
        """Delivers at once (enqueues on the devices' outbound queues, never blocks), in
        call order: callers holding a session lock keep that session's order."""
        d = self.delivery
        match event:
            case UserNotice():
                if event.user_id is not None:
                    d.to_user(event.user_id, frame(event.type, event.data), event.push)
            case PartyNotice():
                user_id = event.session.other_party(event.role.counterpart)[0]
                if user_id is not None:
                    view = session_view(event.session, event.role)
                    data = {**event.data, "session": view}
                    d.to_user(user_id, frame(event.type, data), event.push)
            case MessageStored():
                new = frame(ServerFrame.MESSAGE, event.data)
                d.to_user(event.recipient_id, new, event.push)
                d.to_user_except(event.sender_id, new, event.origin)  # the origin gets the ack
            case ReceiptMoved():
                moved = frame(ServerFrame.RECEIPT, event.data)
                if event.other_id is not None:
                    d.to_user(event.other_id, moved)
                d.to_user_except(event.by_id, moved, event.origin)
            case AccessEnded():
                raise TypeError("AccessEnded is awaited: use Notifier.end_access")
            case _:
                assert_never(event)

    def publish_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.publish(event)

    async def end_access(self, event: AccessEnded) -> int:
        """Closes the user's sockets (after their last frame); returns how many closed here."""
        err = event.error
        last = {"type": ServerFrame.ERROR.value, "id": None, "error": err.to_dict()}
        return await self.delivery.close_user(
            event.user_id, ws_close_code(err), last, event.issued_until
        )
