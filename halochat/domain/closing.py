"""Ending a session: end early (ACTIVE -> CLOSING) and the closing messages (CLOSING ->
COMPLETED once both parties wrote theirs). What entering CLOSING / COMPLETED arms and
announces is declared in halochat/domain/state_machine.py.
"""

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from halochat.constants import (
    EndReason,
    ErrorCode,
    Role,
    ServerFrame,
    SessionState,
    TimelineKind,
)
from halochat.documents import ChatSession, User
from halochat.documents.common import utcnow
from halochat.domain.access import invalid_state, participant_session
from halochat.domain.session_events import current_session, grace_fields, party_notice
from halochat.domain.state_machine import Trigger, guard, transition
from halochat.errors import ApiError
from halochat.observability import timeline
from halochat.services import Services


async def end_early(services: Services, user: User, session_id: PydanticObjectId) -> ChatSession:
    """Either party ends an ACTIVE session: ACTIVE -> CLOSING."""
    session, role = await participant_session(user, session_id, Role.CUSTOMER, Role.MITRA)
    guard(session, Trigger.END_EARLY, "end the session")
    now = utcnow()
    reason = EndReason.ENDED_BY_CUSTOMER if role == Role.CUSTOMER else EndReason.ENDED_BY_MITRA
    closing = await transition(
        services,
        session_id,
        Trigger.END_EARLY,
        set_fields={"ended_at": now, "end_reason": reason.value, **grace_fields(services, now)},
        actor=timeline.actor_of(user),
    )
    if closing is None:
        raise invalid_state(await current_session(session_id), "end the session")
    return closing


def _check_closure_text(services: Services, text: str) -> str:
    trimmed = text.strip()
    limit = services.settings.closure_max_chars
    if not 1 <= len(trimmed) <= limit:
        raise ApiError(
            422,
            ErrorCode.VALIDATION_ERROR,
            f"text must be 1 to {limit} characters (after trimming)",
            {"fields": [{"field": "text", "message": f"1..{limit} characters after trimming"}]},
        )
    return trimmed


async def submit_closure(
    services: Services, user: User, session_id: PydanticObjectId, text: str
) -> ChatSession:
    """One closing message per party, in CLOSING only; both written -> COMPLETED."""
    session, role = await participant_session(user, session_id, Role.CUSTOMER, Role.MITRA)
    trimmed = _check_closure_text(services, text)
    guard(session, Trigger.CLOSURES_DONE, "write a closing message")
    now = utcnow()
    field = f"closures.{role.value}"
    # `field: None` matches a missing or null closure: the first write wins, once.
    raw = await ChatSession.get_pymongo_collection().find_one_and_update(
        {"_id": session_id, "state": SessionState.CLOSING.value, field: None},
        {"$set": {field: {"text": trimmed, "at": now}, "updated_at": now}},
        return_document=ReturnDocument.AFTER,
    )
    if raw is None:
        current = await current_session(session_id)
        guard(current, Trigger.CLOSURES_DONE, "write a closing message")
        raise ApiError(409, ErrorCode.ALREADY_SUBMITTED, "you already wrote your closing message")
    written = ChatSession.model_validate(raw)
    closure = written.closures.of(role)
    assert closure is not None
    timeline.record(
        session_id,
        TimelineKind.CLOSURE_SUBMITTED,
        timeline.actor_of(user),
        {"role": role.value, "text": closure.text},
    )
    data = {"role": role.value, "closure": closure.model_dump(mode="json")}
    notice = party_notice(written, role.counterpart, ServerFrame.CLOSURE_SUBMITTED, data)
    services.notifier.publish(notice)
    if written.closures.customer is None or written.closures.mitra is None:
        return written
    completed = await transition(
        services,
        session_id,
        Trigger.CLOSURES_DONE,
        extra_filter={"closures.customer": {"$ne": None}, "closures.mitra": {"$ne": None}},
        actor=timeline.actor_of(user),
    )
    if completed is None:  # the grace job completed it a moment earlier
        return await current_session(session_id)
    return completed
