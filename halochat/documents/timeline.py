from datetime import datetime
from typing import Any

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, Field
from pymongo import ASCENDING, IndexModel

from halochat.constants import ActorRole, TimelineKind


class EventActor(BaseModel):
    role: ActorRole
    id: str | None = None  # the user's id; None for the system


class TimelineEvent(Document):
    """One step of a session's life for support (docs/support.md "Session timeline").

    Written only by halochat.observability.timeline; `_id` is made when the event happens,
    so (at, _id) orders the events of one process even within one millisecond."""

    session_id: PydanticObjectId
    at: datetime
    kind: TimelineKind
    actor: EventActor
    data: dict[str, Any] = Field(default_factory=dict)

    class Settings:
        name = "session_timeline"
        indexes = [IndexModel([("session_id", ASCENDING), ("at", ASCENDING), ("_id", ASCENDING)])]
