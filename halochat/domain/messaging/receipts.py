"""Receipts (DESIGN.md "Messages"): per-party delivered/read watermarks, moved forward only."""

from typing import Any

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from halochat.constants import (
    ReceiptKind,
    SessionState,
)
from halochat.documents import ChatSession
from halochat.domain import live_sessions
from halochat.domain.access import invalid_state
from halochat.domain.live_sessions import current_last_seq
from halochat.domain.messaging.common import (
    Sender,
    invalid_input,
    party_filter,
    party_session,
)
from halochat.notify.events import Origin, ReceiptMoved
from halochat.observability import metrics
from halochat.services import Services


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
            **party_filter(who),
        },
        {"$max": marks},
        projection={"watermarks": 1, "customer_id": 1, "mitra_id": 1},
        return_document=ReturnDocument.BEFORE,
    )
    if before is None:
        session = await party_session(who, session_id)
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
