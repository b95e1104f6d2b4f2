"""A user's finished conversations (history) and open sessions.

History lists COMPLETED sessions only: a request that was cancelled or never matched has no
conversation to re-read. Order is newest first on (completed_at, _id), paginated by keyset
with an opaque cursor, so pages never skip or repeat items while new sessions complete.
"""

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import orjson
from beanie import PydanticObjectId
from bson.errors import InvalidId
from pymongo import DESCENDING

from halochat.constants import OPEN_STATES, ErrorCode, ExtensionStatus, Role, SessionState
from halochat.documents import ChatSession, User
from halochat.errors import ApiError
from halochat.views import session_view

HISTORY_DEFAULT_LIMIT = 20
HISTORY_MAX_LIMIT = 100
HISTORY_SORT = [("completed_at", DESCENDING), ("_id", DESCENDING)]


def encode_cursor(session: ChatSession) -> str:
    assert session.completed_at is not None
    raw = orjson.dumps({"t": session.completed_at.isoformat(), "id": str(session.id)})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, PydanticObjectId]:
    """Anything that is not a cursor this server produced -> 400 bad_request."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
        at = datetime.fromisoformat(data["t"])
        if at.tzinfo is None:
            raise ValueError("naive time")
        # A forged offset at the ends of the calendar must not overflow in the query.
        return at.astimezone(UTC), PydanticObjectId(data["id"])
    except (
        binascii.Error,
        orjson.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        OverflowError,
        InvalidId,
    ):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "invalid cursor") from None


def _party_filter(user: User) -> dict[str, Any]:
    field = "customer_id" if user.role == Role.CUSTOMER else "mitra_id"
    return {field: user.id}


def total_minutes(session: ChatSession) -> int:
    """The tier's minutes plus every accepted extension."""
    extra = sum(e.minutes for e in session.extensions if e.status == ExtensionStatus.ACCEPTED)
    return session.tier.minutes + extra


def history_item(session: ChatSession, role: Role) -> dict[str, Any]:
    return {**session_view(session, role), "total_minutes": total_minutes(session)}


async def history_page(
    user: User, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the user's COMPLETED sessions, newest first, and the next cursor (None
    when this is the last page)."""
    query: dict[str, Any] = {**_party_filter(user), "state": SessionState.COMPLETED.value}
    if cursor:
        at, last_id = decode_cursor(cursor)
        query["$or"] = [
            {"completed_at": {"$lt": at}},
            {"completed_at": at, "_id": {"$lt": last_id}},
        ]
    coll = ChatSession.get_pymongo_collection()
    # One extra document tells whether another page exists.
    raws = await coll.find(query).sort(HISTORY_SORT).limit(limit + 1).to_list()
    sessions = [ChatSession.model_validate(r) for r in raws]
    more = len(sessions) > limit
    sessions = sessions[:limit]
    role = Role(user.role)
    items = [history_item(s, role) for s in sessions]
    next_cursor = encode_cursor(sessions[-1]) if more and sessions else None
    return items, next_cursor


async def open_sessions(user: User) -> list[dict[str, Any]]:
    """The caller's sessions that are not final (PAIRING ... CLOSING), newest first.
    A customer has at most one; a Mitra may have several."""
    query = {**_party_filter(user), "state": {"$in": [s.value for s in OPEN_STATES]}}
    raws = (
        await ChatSession.get_pymongo_collection()
        .find(query)
        .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        .to_list()
    )
    role = Role(user.role)
    return [session_view(ChatSession.model_validate(r), role) for r in raws]
