"""Sending a chat message (DESIGN.md "Messages"): ordered, durable, acknowledged only once
stored.

Ordering: the server is one process, so an in-process asyncio.Lock per session serialises
"ACTIVE and a party? -> next seq -> insert -> publish" (halochat/domain/live_sessions.py keeps
the state and the counter in memory: one database write per message, the insert, which leaves
with the other sessions' concurrent inserts as one insert_many). Seqs are therefore gap-free
and the message.new events are published in seq order; the unique indexes (session_id, seq)
and (session_id, client_msg_id) back it in the database. A hello replays under the same locks
(halochat/ws/resync.py), so a replay never interleaves with live delivery.
"""

import asyncio
from contextvars import ContextVar

from beanie import PydanticObjectId

from halochat.constants import (
    ErrorCode,
    PushType,
    SessionState,
)
from halochat.documents.common import utcnow
from halochat.domain import live_sessions
from halochat.domain.live_sessions import LiveSession, session_lock
from halochat.domain.messaging.common import (
    Outgoing,
    Sender,
    SendResult,
    invalid_input,
    overloaded,
    why_refused,
)
from halochat.domain.messaging.seq import insert_next, retried, stored_message
from halochat.domain.messaging.taken_seq import insert_taken_seq, take_seq
from halochat.errors import ApiError
from halochat.notify.events import MessageStored, Origin
from halochat.push import Push
from halochat.services import Services
from halochat.views import message_view

# When the frame or request that carries a send arrived (event-loop time); set by the
# WebSocket worker so a send's time in the inbox counts against settings.store_wait_seconds.
received_at: ContextVar[float | None] = ContextVar("received_at", default=None)

PREVIEW_CHARS = 100


def preview(body: str) -> str:
    return body if len(body) <= PREVIEW_CHARS else body[: PREVIEW_CHARS - 1] + "…"


def time_up(live: LiveSession) -> ApiError:
    """A send after ends_at while the expiry transition is still pending (its timer or the
    sweeper will land it): refused as if it had landed, without reading the database."""
    return ApiError(
        409,
        ErrorCode.INVALID_STATE,
        "cannot send messages: the session's time is up",
        {"state": SessionState.EXPIRED.value, "ends_at": live.ends_at.isoformat()},
    )


async def send_message(
    services: Services,
    who: Sender,
    session_id: PydanticObjectId,
    client_msg_id: str,
    body: str,
    origin: Origin | None = None,
) -> SendResult:
    """Stores the message under the next seq, then publishes it (WS + push). Acks must only
    be sent after this returns: the message is durable by then."""
    body = body.strip()
    limit = services.settings.message_max_chars
    if not 1 <= len(body) <= limit:
        raise invalid_input(f"body must be 1..{limit} characters after trimming", max_chars=limit)
    if not 1 <= len(client_msg_id) <= 64:
        raise invalid_input("client_msg_id must be 1..64 characters")
    # Overload: a send not stored within store_wait_seconds of its arrival is answered 503
    # overloaded (and not stored) instead of queueing without bound.
    loop = asyncio.get_running_loop()
    deadline = (received_at.get() or loop.time()) + services.settings.store_wait_seconds
    out = Outgoing(who, session_id, client_msg_id, body, origin, deadline)
    # Shielded: a dropped socket must not cancel a send halfway (seq taken, message unsure).
    return await asyncio.shield(_store_and_publish(services, out))


async def _store_and_publish(services: Services, out: Outgoing) -> SendResult:
    lock = session_lock(out.session_id)
    remaining = out.deadline - asyncio.get_running_loop().time()
    try:
        if remaining <= 0:
            raise TimeoutError
        await asyncio.wait_for(lock.acquire(), remaining)
    except TimeoutError as exc:
        raise overloaded() from exc
    if asyncio.get_running_loop().time() >= out.deadline:  # got the lock too late: no work
        lock.release()
        raise overloaded()
    try:
        return await _store_and_publish_locked(services, out)
    finally:
        lock.release()


async def _store_and_publish_locked(services: Services, out: Outgoing) -> SendResult:
    who, session_id = out.who, out.session_id
    if services.settings.nats_url:  # cluster mode: the seq from the database (taken_seq.py)
        if asyncio.get_running_loop().time() >= out.deadline:  # shed before a seq is taken
            raise overloaded()
        taken = await take_seq(who, session_id, out.client_msg_id)
        if isinstance(taken, SendResult):
            return taken
        live: LiveSession | None = taken
    else:
        live = await live_sessions.load(session_id)
    if live is None or live.party_id(who.role) != who.id:
        # A retry of a message stored before the session left ACTIVE still gets its ack.
        if live is None and (stored := await stored_message(session_id, out.client_msg_id)):
            return await retried(who, session_id, stored)
        raise await why_refused(who, session_id, "send messages")
    # (Cluster mode: the seq was taken before ends_at, by the database's filter.)
    if not services.settings.nats_url and live.time_up(utcnow()):
        raise time_up(live)
    if services.settings.nats_url:  # cluster mode: live.last_seq is the seq taken
        message = await insert_taken_seq(services, live, out)
    else:
        message = await insert_next(services, live, out)
    if isinstance(message, SendResult):
        return message
    sender_name = live.party_name(who.role)
    push = Push(
        type=PushType.CHAT_MESSAGE,
        session_id=str(session_id),
        title=sender_name,
        body=preview(out.body),
        data={
            "sender_id": str(who.id),
            "sender_name": sender_name,
            "sender_role": who.role.value,
            # Same deep-link keys as every other push (docs/push.md "Common fields").
            "other_id": str(who.id),
            "other_name": sender_name,
            "other_role": who.role.value,
            "seq": message.seq,
            "message_id": str(message.id),
        },
    )
    data = {"session_id": str(session_id), "message": message_view(message)}
    # Under the session lock: every device gets a session's messages in seq order.
    services.notifier.publish(
        MessageStored(
            session_id=session_id,
            seq=message.seq,
            data=data,
            sender_id=who.id,
            recipient_id=live.party_id(who.role.counterpart),
            push=push,
            origin=out.origin,
        )
    )
    return SendResult(message, replayed=False)
