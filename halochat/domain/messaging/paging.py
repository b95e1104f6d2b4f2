"""Reading messages back: the history pages of HTTP, and the reads of the reconnect protocol
(halochat/ws/resync.py)."""

from typing import Any

from beanie import PydanticObjectId
from pymongo import ASCENDING, DESCENDING

from halochat.constants import (
    OPEN_STATES,
)
from halochat.documents import ChatSession, Message
from halochat.domain.messaging.common import (
    Sender,
    party_filter,
    party_session,
)


async def history(
    who: Sender,
    session_id: PydanticObjectId,
    *,
    after_seq: int | None,
    before_seq: int | None,
    limit: int,
) -> tuple[ChatSession, list[Message], bool]:
    """A chronological page. With after_seq: the first `limit` messages after it (has_more:
    newer ones exist); otherwise the last `limit` before before_seq (or the newest; has_more:
    older ones exist)."""
    session = await party_session(who, session_id)
    query: dict[str, Any] = {"session_id": session_id}
    seq_range: dict[str, int] = {}
    if after_seq is not None:
        seq_range["$gt"] = after_seq
    if before_seq is not None:
        seq_range["$lt"] = before_seq
    if seq_range:
        query["seq"] = seq_range
    forward = after_seq is not None
    cursor = (
        Message.get_pymongo_collection()
        .find(query)
        .sort("seq", ASCENDING if forward else DESCENDING)
        .limit(limit + 1)
    )
    docs = await cursor.to_list(None)
    has_more = len(docs) > limit
    docs = docs[:limit]
    if not forward:
        docs.reverse()
    return session, [Message.model_validate(d) for d in docs], has_more


REPLAY_BATCH = 500

IDS_PER_QUERY = 200  # the embedded store refuses an $in of 500 ids ("expression tree")


async def find_party_sessions(
    who: Sender | None,
    ids: list[PydanticObjectId],
    projection: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Sessions among `ids` (of which `who` is a party, when given): one query per
    IDS_PER_QUERY ids."""
    query = {} if who is None else party_filter(who)
    coll = ChatSession.get_pymongo_collection()
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start : start + IDS_PER_QUERY]
        found += await coll.find({"_id": {"$in": chunk}, **query}, projection).to_list(None)
    return found


async def open_sessions_of(who: Sender) -> list[ChatSession]:
    return await ChatSession.find(
        {**party_filter(who), "state": {"$in": [s.value for s in OPEN_STATES]}}
    ).to_list()


async def messages_between(
    session_id: PydanticObjectId, after: int, upto: int, limit: int = REPLAY_BATCH
) -> list[dict[str, Any]]:
    """The first `limit` messages with after < seq <= upto, in seq order (stored dicts)."""
    cursor = (
        Message.get_pymongo_collection()
        .find({"session_id": session_id, "seq": {"$gt": after, "$lte": upto}})
        .sort("seq", ASCENDING)
        .limit(limit)
    )
    return await cursor.to_list(None)
