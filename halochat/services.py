"""The per-app service container handed to domain functions (app.ctx.services)."""

from dataclasses import dataclass, field
from typing import Any

from beanie import PydanticObjectId
from pymongo import AsyncMongoClient

from halochat.config import Settings
from halochat.constants import ServerFrame
from halochat.db.group_commit import InsertBatcher
from halochat.documents import Message
from halochat.jobs.timers import Timers
from halochat.push import Push, PushService
from halochat.rate_limits import RateLimits
from halochat.ws.hub import Hub


def frame(type_: ServerFrame, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_.value, "data": data}


@dataclass
class Services:
    settings: Settings
    client: AsyncMongoClient
    hub: Hub
    push: PushService
    timers: Timers
    # Chat messages are stored through one group-committing writer (messaging.py).
    message_writer: InsertBatcher = field(
        default_factory=lambda: InsertBatcher(Message.get_pymongo_collection)
    )
    rate_limits: RateLimits = field(init=False)
    # Cluster mode (HALOCHAT_NATS_URL): halochat.cluster.delivery.ClusterDelivery, through
    # which every event reaches the user's devices on any process. None: this process only.
    delivery: Any = None

    def __post_init__(self) -> None:
        self.rate_limits = RateLimits(self.settings)
        # Overload bounds (docs/operations.md "Limits and overload").
        self.message_writer.max_inflight = self.settings.store_max_inflight
        self.message_writer.max_inflight_bytes = self.settings.store_max_inflight_bytes

    def notify(
        self,
        user_id: PydanticObjectId | None,
        type_: ServerFrame,
        data: dict[str, Any],
        push: Push | None = None,
    ) -> None:
        """Sends an event to every live device of the user; when none is in the foreground
        (no socket, or the app reported background), sends `push` over FCM instead."""
        if user_id is None:
            return
        if self.delivery is not None:  # cluster mode: devices and the push decision anywhere
            self.delivery.to_user(user_id, frame(type_, data), push)
            return
        foreground = self.hub.send_to_user(user_id, frame(type_, data))
        if push is not None and foreground == 0:
            self.push.send_later(user_id, push)

    def to_own_devices(
        self, user_id: PydanticObjectId, type_: ServerFrame, data: dict[str, Any], origin: Any
    ) -> None:
        """An event to the user's other devices (all but `origin`, the socket that acted)."""
        if self.delivery is not None:
            self.delivery.to_user(user_id, frame(type_, data), exclude=origin)
            return
        for conn in self.hub.connections(user_id):
            if conn is not origin:
                conn.send(frame(type_, data))
