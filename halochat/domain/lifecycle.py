"""The timed steps of the session lifecycle (DESIGN.md, docs/lifecycle.md): 1-minute warning,
expiry, grace. The user actions live beside them: extension (halochat/domain/extension.py),
end early and closures (halochat/domain/closing.py); what entering each state arms and
announces is declared in halochat/domain/state_machine.py; the recovery of open sessions
after a restart in halochat/domain/recovery.py.

Every step is one conditional update on the session document, so a timer that fires twice,
late, or in two processes at once changes the session once; whoever wins the update enters
the new state (its events, its timers), the losers do nothing. Timers are an optimisation:
recovery and the sweeper rebuild them from the documents.
"""

from datetime import datetime
from typing import Any

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from halochat.constants import (
    EndReason,
    ExtensionStatus,
    PushType,
    ServerFrame,
    SessionState,
    TimerKind,
)
from halochat.documents import ChatSession
from halochat.documents.common import utcnow
from halochat.domain.session_events import (
    PARTIES,
    dump_extension,
    other_name,
    party_notice,
    record_answer,
    seconds,
    session_push,
)
from halochat.domain.state_machine import Trigger, can, timer_job, transition
from halochat.observability import timeline
from halochat.services import Services

S = SessionState


# Timer entry points: they only call the timed steps below. A step that raises is retried
# with backoff by halochat/jobs/timers.py, and halochat/domain/sweeper.py catches any
# deadline left overdue, so no failure is swallowed here.


@timer_job(TimerKind.WARNING)
async def warning_job(
    services: Services, session_id: PydanticObjectId, ends_at: datetime | None = None
) -> None:
    await send_warning(services, session_id, ends_at)


@timer_job(TimerKind.EXPIRY)
async def expiry_job(services: Services, session_id: PydanticObjectId) -> None:
    await expire(services, session_id)


@timer_job(TimerKind.GRACE)
async def grace_job(services: Services, session_id: PydanticObjectId) -> None:
    await complete_after_grace(services, session_id)


async def send_warning(
    services: Services, session_id: PydanticObjectId, ends_at: datetime | None = None
) -> bool:
    """ "1 minute left", exactly once per ends_at: the send is claimed by a conditional update
    of `warned_for`, and only inside the warning window (a stale timer does nothing).

    A timer passes the ends_at it was armed for, so it costs one database operation; the
    update's filter on ends_at makes a timer armed before an extension harmless."""
    if ends_at is None:
        session = await ChatSession.get(session_id)
        if session is None or session.state != S.ACTIVE or session.ends_at is None:
            return False
        ends_at = session.ends_at
    now = utcnow()
    lead = seconds(services.settings.warning_lead_seconds)
    if not (ends_at - lead <= now < ends_at):
        return False
    raw = await ChatSession.get_pymongo_collection().find_one_and_update(
        {
            "_id": session_id,
            "state": S.ACTIVE.value,
            "ends_at": ends_at,
            "warned_for": {"$ne": ends_at},
        },
        {"$set": {"warned_for": ends_at, "updated_at": now}},
        return_document=ReturnDocument.AFTER,
    )
    if raw is None:
        return False
    warned = ChatSession.model_validate(raw)
    remaining = max(0, round((ends_at - now).total_seconds()))
    data = {"remaining_seconds": remaining, "ends_at": ends_at}
    services.notifier.publish_all(
        party_notice(
            warned,
            role,
            ServerFrame.ONE_MINUTE_LEFT,
            data,
            session_push(
                warned,
                role,
                PushType.ONE_MINUTE_LEFT,
                "1 minute left",
                f"Your chat with {other_name(warned, role)} ends in {remaining} seconds",
                remaining_seconds=remaining,
                ends_at=ends_at.isoformat(),
            ),
        )
        for role in PARTIES
    )
    return True


async def expire(
    services: Services, session_id: PydanticObjectId, *, quiet: bool = False
) -> ChatSession | None:
    """ACTIVE -> EXPIRED once `ends_at` has passed (a stale timer after an extension finds a
    later ends_at and does nothing). The customer is offered the tiers to extend with.

    `quiet` (recovery of a session already past its whole grace): the grace is counted from
    ends_at and nobody is told, since the session completes right after."""
    now = utcnow()
    ended_at = now
    if quiet:
        current = await ChatSession.get(session_id)
        if current is None or current.ends_at is None:
            return None
        ended_at = current.ends_at
    return await transition(
        services,
        session_id,
        Trigger.TIME_UP,
        set_fields={
            "ended_at": ended_at,
            "grace_deadline": ended_at + seconds(services.settings.grace_seconds),
            "end_reason": EndReason.TIME_UP.value,
        },
        extra_filter={"ends_at": {"$lte": now}},
        quiet=quiet,
    )


async def complete_after_grace(
    services: Services, session_id: PydanticObjectId
) -> ChatSession | None:
    """EXPIRED / EXTENSION_PENDING / CLOSING -> COMPLETED once grace_deadline has passed,
    with whatever closures exist; an unanswered extension request lapses."""
    session = await ChatSession.get(session_id)
    if session is None or not can(Trigger.GRACE_ELAPSED, session.state):
        return None
    now = utcnow()
    extra_filter: dict[str, Any] = {"grace_deadline": {"$lte": now}}
    set_fields: dict[str, Any] = {}
    extra_update: dict[str, Any] | None = None
    ext = session.extension
    if session.state == S.EXTENSION_PENDING and ext and ext.status == ExtensionStatus.PENDING:
        # Only valid while that request is still the pending one (the same update).
        extra_filter.update({"state": S.EXTENSION_PENDING.value, "extension.id": ext.id})
        lapsed = dump_extension(
            ext.model_copy(update={"status": ExtensionStatus.LAPSED, "answered_at": now})
        )
        set_fields["extension"] = lapsed
        extra_update = {"$push": {"extensions": lapsed}}
    completed = await transition(
        services,
        session_id,
        Trigger.GRACE_ELAPSED,
        set_fields=set_fields,
        extra_filter=extra_filter,
        extra_update=extra_update,
    )
    if completed is None:
        return None
    if extra_update is not None and completed.extension is not None:
        record_answer(session_id, completed.extension, timeline.SYSTEM)  # it lapsed
    return completed
