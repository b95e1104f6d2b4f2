"""The Delivery of a single process: this process's WebSocket hub and FCM."""

from datetime import datetime

from beanie import PydanticObjectId

from halochat.notify.delivery import Delivery, Frame
from halochat.notify.events import Origin
from halochat.push import Push, PushService
from halochat.ws.hub import Hub


class LocalDelivery(Delivery):
    def __init__(self, hub: Hub, push: PushService) -> None:
        self.hub = hub
        self.push = push

    def to_user(self, user_id: PydanticObjectId, frame: Frame, push: Push | None = None) -> None:
        foreground = self.hub.send_to_user(user_id, frame)
        if push is not None and foreground == 0:
            self.push.send_later(user_id, push)

    def to_user_except(
        self, user_id: PydanticObjectId, frame: Frame, except_conn: Origin | None
    ) -> None:
        self.hub.send_to_user(user_id, frame, except_conn=except_conn)

    async def close_user(
        self,
        user_id: PydanticObjectId,
        code: int,
        frame: Frame,
        issued_until: datetime | None = None,
    ) -> int:
        reason = str((frame.get("error") or {}).get("code", ""))
        return await self.hub.close_user(user_id, code, reason, frame, issued_until=issued_until)
