"""The per-app service container handed to domain functions (app.ctx.services)."""

from dataclasses import dataclass, field
from typing import Any

from pymongo import AsyncMongoClient

from halochat.config import Settings
from halochat.db.group_commit import InsertBatcher
from halochat.documents import Message
from halochat.jobs.timers import Timers
from halochat.notify.local import LocalDelivery
from halochat.notify.notifier import Notifier
from halochat.push import PushService
from halochat.rate_limits import RateLimits
from halochat.ws.admission import SendAdmission
from halochat.ws.hub import Hub


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
    # WebSocket sends under way, bounded at read time (halochat/ws/admission.py).
    send_admission: SendAdmission = field(init=False)
    # The one way events leave the domain (halochat/notify): this process's hub and FCM.
    notifier: Notifier = field(init=False)
    # Cluster mode (HALOCHAT_NATS_URL): the ClusterDelivery behind the notifier
    # (halochat/cluster/delivery.py); the WebSocket layer subscribes users' sockets on it.
    cluster: Any = None

    def __post_init__(self) -> None:
        self.rate_limits = RateLimits(self.settings)
        self.notifier = Notifier(LocalDelivery(self.hub, self.push))
        # Overload bounds (docs/operations.md "Limits and overload").
        self.message_writer.max_inflight = self.settings.store_max_inflight
        self.message_writer.max_inflight_bytes = self.settings.store_max_inflight_bytes
        self.message_writer.target_seconds = self.settings.store_wait_seconds / 2
        self.send_admission = SendAdmission(
            self.settings.send_admit_seconds,
            self.settings.store_max_inflight,
        )
