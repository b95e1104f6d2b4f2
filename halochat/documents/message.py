from datetime import datetime

from beanie import Document, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, IndexModel

from halochat.constants import Role
from halochat.documents.common import utcnow


class Message(Document):
    session_id: PydanticObjectId
    seq: int  # per-session, assigned by the server: chronological order is seq order
    sender_id: PydanticObjectId
    sender_role: Role
    client_msg_id: str
    body: str
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "messages"
        indexes = [
            IndexModel([("session_id", ASCENDING), ("seq", ASCENDING)], unique=True),
            IndexModel([("session_id", ASCENDING), ("client_msg_id", ASCENDING)], unique=True),
        ]
