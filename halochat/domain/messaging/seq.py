"""The session's message counter: storing a message under the next seq (gap-free; a retried
client_msg_id gets the stored message), and repairing the stored last_seq after a crash."""

import asyncio
import contextlib
from datetime import datetime

from beanie import PydanticObjectId
from pymongo import DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from halochat.constants import (
    ErrorCode,
    SessionState,
)
from halochat.db.group_commit import StoreOverloaded
from halochat.documents import ChatSession, Message
from halochat.documents.common import utcnow
from halochat.domain import live_sessions
from halochat.domain.access import invalid_state, load_session, session_not_found
from halochat.domain.live_sessions import LiveSession, session_lock
from halochat.domain.messaging.common import (
    Outgoing,
    Sender,
    SendResult,
    overloaded,
    party_filter,
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
    if services.settings.nats_url:  # cluster mode: live.last_seq is the seq taken
        try:
            return await _insert_taken(services, live, out)
        except SeqBehind:  # raised now: take the next seq once more
            taken = await take_seq(who, live.id, client_msg_id)
            if isinstance(taken, SendResult):
                return taken
            live.last_seq = taken.last_seq
            try:
                return await _insert_taken(services, live, out)
            except SeqBehind as exc:
                raise ApiError(
                    503, ErrorCode.UNAVAILABLE, "could not store the message, retry it"
                ) from exc
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


# --- cluster mode: the seq from the session document ---------------------------------------
#
# Several processes may take seqs for one session (the customer on one, the Mitra on
# another), so the counter is the stored `last_seq` itself: one conditional $inc that also
# checks ACTIVE, the sender and ends_at (docs/scaling.md, "One writer per session"). The
# database decides: a transition made on any process refuses the very next send everywhere.

TAKEN_SEQ_WAIT_SECONDS = 30.0  # how long a send whose seq is taken may wait for its insert


class SeqBehind(Exception):
    """Cluster mode: the seq taken is already a stored message's (the counter was behind)."""


async def take_seq(
    who: Sender, session_id: PydanticObjectId, client_msg_id: str
) -> LiveSession | SendResult:
    """The next seq of an ACTIVE session the sender is a party of, before its ends_at, as
    a LiveSession holding it (`last_seq` = the seq taken); else the refusal, raised."""
    now = utcnow()
    raw = await ChatSession.get_pymongo_collection().find_one_and_update(
        {
            "_id": session_id,
            "state": SessionState.ACTIVE.value,
            **party_filter(who),
            "ends_at": {"$gt": now},
        },
        {"$inc": {"last_seq": 1}},
        projection=dict.fromkeys(
            ("last_seq", "customer_id", "mitra_id", "customer_name", "mitra_name", "ends_at"), 1
        ),
        return_document=ReturnDocument.AFTER,
    )
    if raw is not None:
        return LiveSession(
            id=session_id,
            customer_id=raw["customer_id"],
            mitra_id=raw["mitra_id"],
            customer_name=raw.get("customer_name") or "",
            mitra_name=raw.get("mitra_name") or "",
            last_seq=raw["last_seq"],
            ends_at=raw["ends_at"],
        )
    # A retry of a message stored before the session left ACTIVE still gets its ack.
    if stored := await stored_message(session_id, client_msg_id):
        return await retried(who, session_id, stored)
    session = await load_session(session_id)
    if session.role_of(who.id) is None:
        raise session_not_found()
    if session.state == SessionState.ACTIVE and session.ends_at is not None:
        raise ApiError(
            409,
            ErrorCode.INVALID_STATE,
            "cannot send messages: the session's time is up",
            {"state": SessionState.EXPIRED.value, "ends_at": session.ends_at.isoformat()},
        )
    raise invalid_state(session, "send messages")


async def _give_back(session_id: PydanticObjectId, seq: int) -> None:
    """The message under a taken seq was not stored: return the seq if no later one was
    taken meanwhile (else the hole stays; readers skip it, cluster/delivery.py)."""
    with contextlib.suppress(Exception):
        await ChatSession.get_pymongo_collection().update_one(
            {"_id": session_id, "last_seq": seq}, {"$inc": {"last_seq": -1}}
        )


async def _insert_taken(
    services: Services, live: LiveSession, out: Outgoing
) -> Message | SendResult:
    who, client_msg_id, body = out.who, out.client_msg_id, out.body
    doc = {
        "_id": PydanticObjectId(),
        "session_id": live.id,
        "seq": live.last_seq,
        "sender_id": who.id,
        "sender_role": who.role.value,
        "client_msg_id": client_msg_id,
        "body": body,
        "created_at": now_ms(),
    }
    loop = asyncio.get_running_loop()
    try:
        await services.message_writer.insert(
            # A seq once taken is stored, however late: shedding it now would cost a
            # give-back write and could leave a hole (the deadline was checked before).
            doc,
            size=len(body.encode()) + DOC_OVERHEAD_BYTES,
            deadline=max(out.deadline, loop.time() + TAKEN_SEQ_WAIT_SECONDS),
        )
    except StoreOverloaded as exc:
        await _give_back(live.id, live.last_seq)
        raise overloaded() from exc
    except DuplicateKeyError:
        if stored := await stored_message(live.id, client_msg_id):
            await _give_back(live.id, live.last_seq)
            return await retried(who, live.id, stored)
        # The seq was taken by a stored message: the counter is behind the messages (left so
        # by a single process before this cluster started). Raise it and take another.
        await raise_seq(live.id)
        raise SeqBehind from None
    except BaseException:
        await _give_back(live.id, live.last_seq)
        raise
    metrics.MESSAGES_STORED.inc()
    return Message.model_validate(doc)
