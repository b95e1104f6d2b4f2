"""The database as the server stores it, for tests that write or read it directly."""

from datetime import datetime
from typing import Any

from bson import ObjectId

from tests.support.server import ServerProcess

TIER_15M = {
    "kind": "tier",
    "tier_id": "15m",
    "label": "15 menit",
    "minutes": 15,
    "price": 15000,
    "currency": "IDR",
}


def session_doc(created: datetime, **fields: Any) -> dict[str, Any]:
    """A COMPLETED 15-minute session document created at `created`; `fields` add or override
    (parties, times, state...)."""
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "state": "COMPLETED",
        "tier": dict(TIER_15M),
        "created_at": created,
        "updated_at": created,
        "last_seq": 0,
    }
    doc.update(fields)
    return doc


def stored_chat(server: ServerProcess, session_id: str) -> tuple[list[dict[str, Any]], Any]:
    """(messages by seq, session document) straight from the database. While the session is
    ACTIVE the document's last_seq may trail (live_sessions.py); the API view is exact."""
    msgs = list(server.db["messages"].find({"session_id": ObjectId(session_id)}).sort("seq", 1))
    return msgs, server.db["sessions"].find_one({"_id": ObjectId(session_id)})
