"""hello: the reconnect protocol (docs/protocol.md "Reconnect"): ack, `sync`, then each listed
session's missed messages in seq order.

The listed sessions' locks (halochat/domain/live_sessions.py) are held throughout, so no live
message for them can slip in between or be sent twice: a device's live range of a session
starts at Connection.live_from_seq (noted as message frames reach it, halochat/ws/hub.py) and
the replay stops below it.
"""

from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from beanie import PydanticObjectId

from halochat.constants import ServerFrame
from halochat.documents import ChatSession, Message
from halochat.domain.access import session_not_found
from halochat.domain.live_sessions import current_last_seq, session_lock
from halochat.domain.messaging import (
    Sender,
    find_party_sessions,
    invalid_input,
    messages_between,
    open_sessions_of,
)
from halochat.errors import ApiError
from halochat.notify.notifier import frame
from halochat.views import message_view, session_view
from halochat.ws.hub import Connection

MAX_HELLO_SESSIONS = 500


@dataclass
class HelloPlan:
    """A parsed hello: the sessions to replay (id -> last_seq) and per-id errors."""

    wanted: dict[PydanticObjectId, int]
    errors: list[dict[str, Any]]


def _session_error(raw_id: str, err: ApiError) -> dict[str, Any]:
    return {"session_id": raw_id, **err.to_dict()}


def plan_hello(sessions: dict[str, int]) -> HelloPlan:
    if len(sessions) > MAX_HELLO_SESSIONS:
        raise invalid_input(f"at most {MAX_HELLO_SESSIONS} sessions per hello")
    wanted: dict[PydanticObjectId, int] = {}
    errors: list[dict[str, Any]] = []
    for raw_id, last_seq in sessions.items():
        try:
            wanted[PydanticObjectId(raw_id)] = last_seq
        except Exception:
            errors.append(_session_error(raw_id, session_not_found()))
    return HelloPlan(wanted, errors)


async def resync(
    conn: Connection,
    plan: HelloPlan,
    send_ack: Callable[[], None],
    sequencer: Any = None,
) -> None:
    """hello: ack, `sync` (open + listed sessions, watermarks, errors), then each listed
    session's missed messages in seq order, under the listed sessions' locks. In cluster
    mode the locks are this process's only, so `sequencer` (halochat/cluster/delivery.py)
    holds the listed sessions' live messages for this socket until their replay is done."""
    who = Sender(conn.user_id, conn.role)
    # Which listed sessions are the caller's, in one query BEFORE taking any lock: listing
    # someone else's session ids must not stall their chat (it only yields errors).
    own_ids = {doc["_id"] for doc in await find_party_sessions(who, list(plan.wanted), {"_id": 1})}
    errors = list(plan.errors)
    for session_id in plan.wanted:
        if session_id not in own_ids:
            errors.append(_session_error(str(session_id), session_not_found()))
    async with AsyncExitStack() as stack:
        for session_id in sorted(own_ids):  # one global order: no deadlock
            await stack.enter_async_context(session_lock(session_id))
            if sequencer is not None:
                sequencer.pause(conn, session_id)
        send_ack()
        listed = [
            ChatSession.model_validate(doc)
            for doc in await find_party_sessions(None, list(own_ids))
        ]
        found = {s.id: s for s in listed if s.role_of(who.id) is not None}
        views: dict[PydanticObjectId, ChatSession] = {s.id: s for s in await open_sessions_of(who)}
        views.update(found)
        conn.send(
            frame(
                ServerFrame.SYNC,
                {
                    "sessions": [session_view(s, who.role) for s in views.values()],
                    "errors": errors,
                },
            )
        )
        for session_id, session in found.items():
            sent = await _replay(conn, session, plan.wanted[session_id])
            if sequencer is not None:
                sequencer.replayed(conn, session_id, sent)
        if sequencer is not None:
            for session_id in own_ids - found.keys():
                sequencer.replayed(conn, session_id, 0)


async def _replay(conn: Connection, session: ChatSession, last_seq: int) -> int:
    """Replays the messages after last_seq; returns the last seq the device now has."""
    # Messages this device already got live (since it connected) are not repeated.
    last = current_last_seq(session)
    upto = min(conn.live_from_seq.get(session.id, last + 1) - 1, last)
    after = last_seq
    while after < upto:
        docs = await messages_between(session.id, after, upto)
        if not docs:
            break
        for doc in docs:
            message = Message.model_validate(doc)
            data = {"session_id": str(session.id), "message": message_view(message)}
            if not await conn.send_wait(frame(ServerFrame.MESSAGE, data)):
                return after
            after = doc["seq"]
    return after
