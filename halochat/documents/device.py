from datetime import datetime

from beanie import Document, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, IndexModel

from halochat.documents.common import utcnow


class Device(Document):
    """One FCM registration token per (user, device)."""

    user_id: PydanticObjectId
    device_id: str
    fcm_token: str
    platform: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "devices"
        indexes = [
            IndexModel([("user_id", ASCENDING), ("device_id", ASCENDING)], unique=True),
            IndexModel([("fcm_token", ASCENDING)]),
        ]
