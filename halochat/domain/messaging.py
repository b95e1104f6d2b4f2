"""Chat messages (DESIGN.md "Messages"): ordered durable sends, receipts, typing, resync.

Ordering: the server is one process, so an in-process asyncio.Lock per session serialises
"ACTIVE and a party? -> next seq -> insert -> deliver" (halochat/domain/live_sessions.py keeps
the state and the counter in memory: one database write per message, the insert, which leaves
with the other sessions' concurrent inserts as one insert_many). Seqs are therefore gap-free
and every device receives a session's message.new frames in seq order; the unique indexes
(session_id, seq) and (session_id, client_msg_id) back it in the database. A hello replays
under the same locks, so a replay never interleaves with live delivery.
"""

import asyncio
import contextlib
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from beanie import PydanticObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from halochat.constants import (
    OPEN_STATES,
    ErrorCode,
    PushType,
    ReceiptKind,
    Role,
    ServerFrame,
    SessionState,
    TypingState,
)
from halochat.db.group_commit import StoreOverloaded
from halochat.documents import ChatSession, Message, User
from halochat.documents.common import utcnow
from halochat.domain import live_sessions
from halochat.domain.access import invalid_state, load_session, session_not_found
from halochat.domain.live_sessions import LiveSession, current_last_seq, session_lock
from halochat.errors import ApiError
from halochat.notify.events import MessageStored, Origin, ReceiptMoved, UserNotice
from halochat.observability import metrics
from halochat.push import Push
from halochat.services import Services
from halochat.views import message_view

# When the frame or request that carries a send arrived (event-loop time); set by the
# WebSocket worker so a send's time in the inbox counts against settings.store_wait_seconds.
received_at: ContextVar[float | None] = ContextVar("received_at", default=None)

PREVIEW_CHARS = 100
DOC_OVERHEAD_BYTES = 200  # a stored message beside its body (ids, seq, dates)

# (user, session) -> monotonic time of the last forwarded typing event.
_typing_last: dict[tuple[PydanticObjectId, PydanticObjectId], float] = {}


async def _stored_last_seq(session_id: PydanticObjectId) -> int:
    last = await Message.get_pymongo_collection().find_one(
        {"session_id": session_id}, projection={"seq": 1}, sort=[("seq", DESCENDING)]
    )
    return last["seq"] if last else 0


async def _repair_seq(session_id: PydanticObjectId) -> int:
    """While ACTIVE, last_seq is only stored when the session leaves ACTIVE; after a crash it
    is behind the stored messages (or, from older versions, ahead). Setting it to the last
    stored seq (under the session lock) keeps seqs gap-free and history complete."""
    stored = await _stored_last_seq(session_id)
    await ChatSession.get_pymongo_collection().update_one(
        {"_id": session_id, "last_seq": {"$ne": stored}}, {"$set": {"last_seq": stored}}
    )
    return stored


async def _raise_seq(session_id: PydanticObjectId) -> int:
    """Cluster mode: last_seq at least the last stored seq ($max: never below a seq another
    process has just taken)."""
    stored = await _stored_last_seq(session_id)
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
            session.last_seq = max(session.last_seq, await _raise_seq(session.id))
        return
    for session in open_sessions:
        assert session.id is not None
        async with session_lock(session.id):
            session.last_seq = await _repair_seq(session.id)


@dataclass(frozen=True)
class Sender:
    """Who acts: from the HTTP user or the WebSocket connection (role from the stored user)."""

    id: PydanticObjectId
    role: Role

    @classmethod
    def of_user(cls, user: User) -> "Sender":
        return cls(user.id, user.role)


@dataclass(frozen=True)
class SendResult:
    message: Message
    replayed: bool  # True: a retried client_msg_id, the stored message is returned


def overloaded() -> ApiError:
    """503, retryable: the send was not stored (retry it with the same client_msg_id)."""
    metrics.RATE_LIMITED.labels(metrics.LIMIT_STORE_OVERLOADED).inc()
    return ApiError(
        503,
        ErrorCode.OVERLOADED,
        "server busy: the message was not stored; retry it with the same client_msg_id",
        {"retry_after": 1},
    )


def invalid_input(message: str, **details: Any) -> ApiError:
    return ApiError(422, ErrorCode.VALIDATION_ERROR, message, details or None)


def _party_filter(who: Sender) -> dict[str, Any]:
    field = "customer_id" if who.role == Role.CUSTOMER else "mitra_id"
    return {field: who.id}


def _now_ms() -> datetime:
    # MongoDB keeps milliseconds: the ack must show what history will show.
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


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


async def _why_refused(who: Sender, session_id: PydanticObjectId, action: str) -> ApiError:
    """After a conditional update matched nothing: 404 for non-parties, else 409 + state."""
    session = await load_session(session_id)
    if session.role_of(who.id) is None:
        return session_not_found()
    return invalid_state(session, action)


async def send_message(
    services: Services,
    who: Sender,
    session_id: PydanticObjectId,
    client_msg_id: str,
    body: str,
    origin: Origin | None = None,
) -> SendResult:
    """Stores the message under the next seq, then delivers it (WS + push). Acks must only
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
    # Shielded: a dropped socket must not cancel a send halfway (seq taken, message unsure).
    return await asyncio.shield(
        _store_and_deliver(services, who, session_id, client_msg_id, body, origin, deadline)
    )


async def _store_and_deliver(
    services: Services,
    who: Sender,
    session_id: PydanticObjectId,
    client_msg_id: str,
    body: str,
    origin: Origin | None,
    deadline: float,
) -> SendResult:
    lock = session_lock(session_id)
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        if remaining <= 0:
            raise TimeoutError
        await asyncio.wait_for(lock.acquire(), remaining)
    except TimeoutError as exc:
        raise overloaded() from exc
    try:
        return await _store_and_deliver_locked(
            services, who, session_id, client_msg_id, body, origin, deadline
        )
    finally:
        lock.release()


async def _store_and_deliver_locked(
    services: Services,
    who: Sender,
    session_id: PydanticObjectId,
    client_msg_id: str,
    body: str,
    origin: Origin | None,
    deadline: float,
) -> SendResult:
    if services.settings.nats_url:  # cluster mode
        if asyncio.get_running_loop().time() >= deadline:  # shed before a seq is taken
            raise overloaded()
        live = await _take_seq(services, who, session_id, client_msg_id)
        if isinstance(live, SendResult):
            return live
    else:
        live = await live_sessions.load(session_id)
    if live is None or live.party_id(who.role) != who.id:
        # A retry of a message stored before the session left ACTIVE still gets its ack.
        if live is None and (stored := await _stored(session_id, client_msg_id)):
            return await _retried(who, session_id, stored)
        raise await _why_refused(who, session_id, "send messages")
    # (Cluster mode: the seq was taken before ends_at, by the database's filter.)
    if not services.settings.nats_url and live.time_up(utcnow()):
        raise time_up(live)
    message = await _insert_next(services, live, who, client_msg_id, body, deadline)
    if isinstance(message, SendResult):
        return message
    sender_name = live.party_name(who.role)
    push = Push(
        type=PushType.CHAT_MESSAGE,
        session_id=str(session_id),
        title=sender_name,
        body=preview(body),
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
            origin=origin,
        )
    )
    return SendResult(message, replayed=False)


async def _insert_next(
    services: Services,
    live: LiveSession,
    who: Sender,
    client_msg_id: str,
    body: str,
    deadline: float,
) -> Message | SendResult:
    """Stores the message under live.last_seq + 1 (called under the session lock). The seq
    is only taken once the insert succeeded, so a failed insert leaves no gap."""
    if services.settings.nats_url:  # cluster mode
        try:
            return await _insert_taken(services, live, who, client_msg_id, body, deadline)
        except SeqBehind:  # raised now: take the next seq once more
            taken = await _take_seq(services, who, live.id, client_msg_id)
            if isinstance(taken, SendResult):
                return taken
            live.last_seq = taken.last_seq
            try:
                return await _insert_taken(services, live, who, client_msg_id, body, deadline)
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
            "created_at": _now_ms(),
        }
        try:
            await services.message_writer.insert(
                doc, size=len(body.encode()) + DOC_OVERHEAD_BYTES, deadline=deadline
            )
        except StoreOverloaded as exc:
            raise overloaded() from exc
        except DuplicateKeyError:
            if stored := await _stored(live.id, client_msg_id):
                return await _retried(who, live.id, stored)
            # The seq was taken: the counter is behind the stored messages (an insert whose
            # outcome was unknown, say). Catch up and try once more.
            live.last_seq = max(live.last_seq, await _stored_last_seq(live.id))
            continue
        live.last_seq = doc["seq"]
        metrics.MESSAGES_STORED.inc()
        return Message.model_validate(doc)
    raise ApiError(503, ErrorCode.UNAVAILABLE, "could not store the message, retry it")


# --- cluster mode: the seq from the session document ---------------------------------------
#
# Several processes may take seqs for one session (the customer on one, the Mitra on
# another), so the counter is the stored `last_seq` itself: one conditional $inc that also
# checks ACTIVE, the sender and ends_at (docs/scaling.md, "One writer per session"). The
# database decides: a transition made on any process refuses the very next send everywhere.


async def _take_seq(
    services: Services, who: Sender, session_id: PydanticObjectId, client_msg_id: str
) -> LiveSession | SendResult:
    """The next seq of an ACTIVE session the sender is a party of, before its ends_at, as
    a LiveSession holding it (`last_seq` = the seq taken); else the refusal, raised."""
    now = utcnow()
    raw = await ChatSession.get_pymongo_collection().find_one_and_update(
        {
            "_id": session_id,
            "state": SessionState.ACTIVE.value,
            **_party_filter(who),
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
    if stored := await _stored(session_id, client_msg_id):
        return await _retried(who, session_id, stored)
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


class SeqBehind(Exception):
    """Cluster mode: the seq taken is already a stored message's (the counter was behind)."""


async def _give_back(session_id: PydanticObjectId, seq: int) -> None:
    """The message under a taken seq was not stored: return the seq if no later one was
    taken meanwhile (else the hole stays; readers skip it, cluster/delivery.py)."""
    with contextlib.suppress(Exception):
        await ChatSession.get_pymongo_collection().update_one(
            {"_id": session_id, "last_seq": seq}, {"$inc": {"last_seq": -1}}
        )


async def _insert_taken(
    services: Services,
    live: LiveSession,
    who: Sender,
    client_msg_id: str,
    body: str,
    deadline: float,
) -> Message | SendResult:
    doc = {
        "_id": PydanticObjectId(),
        "session_id": live.id,
        "seq": live.last_seq,
        "sender_id": who.id,
        "sender_role": who.role.value,
        "client_msg_id": client_msg_id,
        "body": body,
        "created_at": _now_ms(),
    }
    try:
        await services.message_writer.insert(
            # A seq once taken is stored, however late: shedding it now would cost a
            # give-back write and could leave a hole (the deadline was checked before).
            doc,
            size=len(body.encode()) + DOC_OVERHEAD_BYTES,
            deadline=max(deadline, asyncio.get_running_loop().time() + TAKEN_SEQ_WAIT_SECONDS),
        )
    except StoreOverloaded as exc:
        await _give_back(live.id, live.last_seq)
        raise overloaded() from exc
    except DuplicateKeyError:
        if stored := await _stored(live.id, client_msg_id):
            await _give_back(live.id, live.last_seq)
            return await _retried(who, live.id, stored)
        # The seq was taken by a stored message: the counter is behind the messages (left so
        # by a single process before this cluster started). Raise it and take another.
        await _raise_seq(live.id)
        raise SeqBehind from None
    except BaseException:
        await _give_back(live.id, live.last_seq)
        raise
    metrics.MESSAGES_STORED.inc()
    return Message.model_validate(doc)


async def _stored(session_id: PydanticObjectId, client_msg_id: str) -> Message | None:
    raw = await Message.get_pymongo_collection().find_one(
        {"session_id": session_id, "client_msg_id": client_msg_id}
    )
    return None if raw is None else Message.model_validate(raw)


async def _retried(who: Sender, session_id: PydanticObjectId, stored: Message) -> SendResult:
    if stored.sender_id == who.id:
        return SendResult(stored, replayed=True)
    session = await load_session(session_id)
    if session.role_of(who.id) is None:
        raise session_not_found()
    raise ApiError(
        409, ErrorCode.DUPLICATE, "client_msg_id already used in this session by the other party"
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
    session = await _party_session(who, session_id)
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


async def _party_session(who: Sender, session_id: PydanticObjectId) -> ChatSession:
    session = await load_session(session_id)
    if session.role_of(who.id) is None:
        raise session_not_found()
    return session


async def receipt(
    services: Services,
    who: Sender,
    session_id: PydanticObjectId,
    kind: ReceiptKind,
    seq: int,
    origin: Origin | None = None,
) -> dict[str, Any]:
    """Moves the caller's delivered/read watermark forward ($max; read implies delivered)
    and tells the other party (and the caller's other devices) when it moved."""
    if seq < 1:
        raise invalid_input("seq must be >= 1")
    base = f"watermarks.{who.role.value}"
    marks = {f"{base}.delivered": seq}
    if kind == ReceiptKind.READ:
        marks[f"{base}.read"] = seq
    # A live session's counter is ahead of its stored last_seq (live_sessions.py).
    live = live_sessions.get(session_id)
    seq_known = {} if live is not None and seq <= live.last_seq else {"last_seq": {"$gte": seq}}
    before = await ChatSession.get_pymongo_collection().find_one_and_update(
        {
            "_id": session_id,
            "state": {"$ne": SessionState.PAIRING.value},
            **seq_known,
            **_party_filter(who),
        },
        {"$max": marks},
        projection={"watermarks": 1, "customer_id": 1, "mitra_id": 1},
        return_document=ReturnDocument.BEFORE,
    )
    if before is None:
        session = await _party_session(who, session_id)
        if session.state == SessionState.PAIRING:
            raise invalid_state(session, "send receipts")
        raise invalid_input(
            "seq is beyond the session's last message", last_seq=current_last_seq(session)
        )
    old = (before.get("watermarks") or {}).get(who.role.value) or {}
    old_delivered, old_read = old.get("delivered", 0), old.get("read", 0)
    delivered = max(old_delivered, seq)
    read = max(old_read, seq) if kind == ReceiptKind.READ else old_read
    data = {
        "session_id": str(session_id),
        "by_role": who.role.value,
        "delivered": delivered,
        "read": read,
    }
    if delivered > old_delivered:
        metrics.MESSAGES_DELIVERED.inc(delivered - old_delivered)
    if (delivered, read) != (old_delivered, old_read):
        other_id = before.get(f"{who.role.counterpart.value}_id")
        services.notifier.publish(ReceiptMoved(who.id, other_id, data, origin))
    return data


async def typing(
    services: Services, who: Sender, session_id: PydanticObjectId, state: TypingState
) -> bool:
    """Forwards a typing event to the other party (never stored); at most one per
    typing_min_interval_seconds per user and session. Returns whether it was forwarded."""
    session = await _party_session(who, session_id)
    if session.state != SessionState.ACTIVE:
        raise invalid_state(session, "type")
    key = (who.id, session_id)
    now = time.monotonic()
    interval = services.settings.typing_min_interval_seconds
    last = _typing_last.get(key)
    if last is not None and now - last < interval:
        return False
    _typing_last[key] = now
    if len(_typing_last) > 10_000:  # forget stale entries now and then
        for k in [k for k, t in _typing_last.items() if now - t >= interval]:
            del _typing_last[k]
    other_id, _ = session.other_party(who.role)
    services.notifier.publish(
        UserNotice(
            other_id,
            ServerFrame.TYPING,
            {
                "session_id": str(session_id),
                "user_id": str(who.id),
                "role": who.role.value,
                "state": state.value,
            },
        )
    )
    return True


# --- reads for the reconnect protocol (halochat/ws/resync.py) -------------------------------

REPLAY_BATCH = 500
TAKEN_SEQ_WAIT_SECONDS = 30.0  # cluster mode: how long a send whose seq is taken may wait
IDS_PER_QUERY = 200  # the embedded store refuses an $in of 500 ids ("expression tree")


async def find_party_sessions(
    who: Sender | None,
    ids: list[PydanticObjectId],
    projection: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Sessions among `ids` (of which `who` is a party, when given): one query per
    IDS_PER_QUERY ids."""
    query = {} if who is None else _party_filter(who)
    coll = ChatSession.get_pymongo_collection()
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start : start + IDS_PER_QUERY]
        found += await coll.find({"_id": {"$in": chunk}, **query}, projection).to_list(None)
    return found


async def open_sessions_of(who: Sender) -> list[ChatSession]:
    return await ChatSession.find(
        {**_party_filter(who), "state": {"$in": [s.value for s in OPEN_STATES]}}
    ).to_list()


async def messages_between(
    session_id: PydanticObjectId, after: int, upto: int
) -> list[dict[str, Any]]:
    """The next REPLAY_BATCH messages with after < seq <= upto, in seq order."""
    cursor = (
        Message.get_pymongo_collection()
        .find({"session_id": session_id, "seq": {"$gt": after, "$lte": upto}})
        .sort("seq", ASCENDING)
        .limit(REPLAY_BATCH)
    )
    return await cursor.to_list(None)
