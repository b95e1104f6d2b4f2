"""The session's message counter: storing a message under the next seq (gap-free; a retried
client_msg_id gets the stored message), and repairing the stored last_seq after a crash.
Cluster mode takes the seq from the session document instead (taken_seq.py)."""

from datetime import datetime

from beanie import PydanticObjectId
from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from halochat.constants import (
    ErrorCode,
)
from halochat.db.group_commit import StoreOverloaded
from halochat.documents import ChatSession, Message
from halochat.documents.common import utcnow
from halochat.domain import live_sessions
from halochat.domain.access import load_session, session_not_found
from halochat.domain.live_sessions import LiveSession, session_lock
from halochat.domain.messaging.common import (
    Outgoing,
    Sender,
    SendResult,
    overloaded,
)
from halochat.errors import ApiError
from halochat.observability import metrics
from halochat.services import Services

DOC_OVERHEAD_BYTES = 200  # a stored message beside its body (ids, seq, dates)


def now_ms() -> datetime:
    # MongoDB keeps milliseconds: the ack must show what history will show.
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def stored_last_seq(session_id: PydanticObjectId) -> int:
    last = await Message.get_pymongo_collection().find_one(
        {"session_id": session_id}, projection={"seq": 1}, sort=[("seq", DESCENDING)]
    )
    return last["seq"] if last else 0


async def repair_seq(session_id: PydanticObjectId) -> int:
    """While ACTIVE, last_seq is only stored when the session leaves ACTIVE; after a crash it
    is behind the stored messages (or, from older versions, ahead). Setting it to the last
    stored seq (under the session lock) keeps seqs gap-free and history complete."""
    stored = await stored_last_seq(session_id)
    await ChatSession.get_pymongo_collection().update_one(
        {"_id": session_id, "last_seq": {"$ne": stored}}, {"$set": {"last_seq": stored}}
    )
    return stored


async def raise_seq(session_id: PydanticObjectId) -> int:
    """Cluster mode: last_seq at least the last stored seq ($max: never below a seq another
    process has just taken)."""
    stored = await stored_last_seq(session_id)
    await ChatSession.get_pymongo_collection().update_one(
        {"_id": session_id, "last_seq": {"$lt": stored}}, {"$max": {"last_seq": stored}}
    )
    return stored


async def recover_messaging(open_sessions: list[ChatSession]) -> None:
    """Start-up, before serving: make last_seq of the open sessions match their messages
    (in the database and in the given documents). In cluster mode the stored last_seq is
    every process's counter and may be ahead of the stored messages (a send between its seq
    and its insert, on another process): it is only ever raised there (a database last run
    by a single process may have left it behind), never lowered."""
    if not live_sessions.enabled:
        for session in open_sessions:
            assert session.id is not None
            session.last_seq = max(session.last_seq, await raise_seq(session.id))
        return
    for session in open_sessions:
        assert session.id is not None
        async with session_lock(session.id):
            session.last_seq = await repair_seq(session.id)


async def insert_next(services: Services, live: LiveSession, out: Outgoing) -> Message | SendResult:
    """Stores the message under live.last_seq + 1 (called under the session lock). The seq
    is only taken once the insert succeeded, so a failed insert leaves no gap."""
    who, client_msg_id, body = out.who, out.client_msg_id, out.body
    for _ in range(2):
        doc = {
            "_id": PydanticObjectId(),
            "session_id": live.id,
            "seq": live.last_seq + 1,
            "sender_id": who.id,
            "sender_role": who.role.value,
            "client_msg_id": client_msg_id,
            "body": body,
            "created_at": now_ms(),
        }
        try:
            await services.message_writer.insert(
                doc, size=len(body.encode()) + DOC_OVERHEAD_BYTES, deadline=out.deadline
            )
        except StoreOverloaded as exc:
            raise overloaded() from exc
        except DuplicateKeyError:
            if stored := await stored_message(live.id, client_msg_id):
                return await retried(who, live.id, stored)
            # The seq was taken: the counter is behind the stored messages (an insert whose
            # outcome was unknown, say). Catch up and try once more.
            live.last_seq = max(live.last_seq, await stored_last_seq(live.id))
            continue
        live.last_seq = doc["seq"]
        metrics.MESSAGES_STORED.inc()
        return Message.model_validate(doc)
    raise ApiError(503, ErrorCode.UNAVAILABLE, "could not store the message, retry it")


async def stored_message(session_id: PydanticObjectId, client_msg_id: str) -> Message | None:
    raw = await Message.get_pymongo_collection().find_one(
        {"session_id": session_id, "client_msg_id": client_msg_id}
    )
    return None if raw is None else Message.model_validate(raw)


async def retried(who: Sender, session_id: PydanticObjectId, stored: Message) -> SendResult:
    if stored.sender_id == who.id:
        return SendResult(stored, replayed=True)
    session = await load_session(session_id)
    if session.role_of(who.id) is None:
        raise session_not_found()
    raise ApiError(
        409, ErrorCode.DUPLICATE, "client_msg_id already used in this session by the other party"
    )
