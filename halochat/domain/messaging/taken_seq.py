"""Cluster mode's message counter: the seq taken from the session document.

Several processes may take seqs for one session (the customer on one, the Mitra on
another), so the counter is the stored `last_seq` itself: one conditional $inc that also
checks ACTIVE, the sender and ends_at (docs/scaling.md, "One writer per session"). The
database decides: a transition made on any process refuses the very next send everywhere.
"""

import asyncio
import contextlib

from beanie import PydanticObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from halochat.constants import ErrorCode, SessionState
from halochat.db.group_commit import StoreOverloaded
from halochat.documents import ChatSession, Message
from halochat.documents.common import utcnow
from halochat.domain.access import invalid_state, load_session, session_not_found
from halochat.domain.live_sessions import LiveSession
from halochat.domain.messaging.common import (
    Outgoing,
    Sender,
    SendResult,
    overloaded,
    party_filter,
)
from halochat.domain.messaging.seq import (
    DOC_OVERHEAD_BYTES,
    now_ms,
    raise_seq,
    retried,
    stored_message,
)
from halochat.errors import ApiError
from halochat.observability import metrics
from halochat.services import Services


async def insert_taken_seq(
    services: Services, live: LiveSession, out: Outgoing
) -> Message | SendResult:
    """Stores the message under the seq taken (live.last_seq); a counter found behind the
    stored messages is raised and one more seq taken."""
    try:
        return await _insert_under(services, live, out)
    except SeqBehind:  # raised now: take the next seq once more
        taken = await take_seq(out.who, live.id, out.client_msg_id)
        if isinstance(taken, SendResult):
            return taken
        live.last_seq = taken.last_seq
        try:
            return await _insert_under(services, live, out)
        except SeqBehind as exc:
            raise ApiError(
                503, ErrorCode.UNAVAILABLE, "could not store the message, retry it"
            ) from exc


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


async def give_back(session_id: PydanticObjectId, seq: int) -> None:
    """The message under a taken seq was not stored: return the seq if no later one was
    taken meanwhile (else the hole stays; readers skip it, cluster/delivery.py)."""
    with contextlib.suppress(Exception):
        await ChatSession.get_pymongo_collection().update_one(
            {"_id": session_id, "last_seq": seq}, {"$inc": {"last_seq": -1}}
        )


async def _insert_under(
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
        await give_back(live.id, live.last_seq)
        raise overloaded() from exc
    except DuplicateKeyError:
        if stored := await stored_message(live.id, client_msg_id):
            await give_back(live.id, live.last_seq)
            return await retried(who, live.id, stored)
        # The seq was taken by a stored message: the counter is behind the messages (left so
        # by a single process before this cluster started). Raise it and take another.
        await raise_seq(live.id)
        raise SeqBehind from None
    except BaseException:
        await give_back(live.id, live.last_seq)
        raise
    metrics.MESSAGES_STORED.inc()
    return Message.model_validate(doc)
