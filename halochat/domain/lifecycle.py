"""The timed half of the session lifecycle (DESIGN.md, docs/lifecycle.md): timers, 1-minute
warning, expiry, grace, and their recovery after a restart. The user actions live beside it:
extension (halochat/domain/extension.py), end early and closures (halochat/domain/closing.py);
their shared events in halochat/domain/session_events.py.

Every step is one conditional update on the session document, so a timer that fires twice,
late, or in two processes at once changes the session once; whoever wins the update sends the
events and arms the next timers, the losers do nothing. Timers are an optimisation: the
recovery pass rebuilds them from the documents.
"""

import logging
from datetime import datetime
from typing import Any

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from halochat.constants import (
    GRACE_STATES,
    EndReason,
    ExtensionStatus,
    PushType,
    Role,
    ServerFrame,
    SessionState,
    TimerKind,
)
from halochat.documents import ChatSession
from halochat.documents.common import utcnow
from halochat.domain import live_sessions, pairing
from halochat.domain.app_config import recent_config
from halochat.domain.session_events import (
    PARTIES,
    dump_extension,
    other_name,
    record_answer,
    seconds,
    session_push,
    tell,
    tell_completed,
)
from halochat.domain.state_machine import Trigger, transition
from halochat.observability import timeline
from halochat.services import Services

log = logging.getLogger(__name__)


S = SessionState


# States this module reconciles at start-up (PAIRING is pairing's).
LIFECYCLE_STATES = (S.ACTIVE, *sorted(GRACE_STATES))


def arm_active_timers(services: Services, session: ChatSession) -> None:
    """The warning (unless past or already sent for this ends_at) and the expiry."""
    assert session.ends_at is not None
    timers = services.timers
    warn_at = session.ends_at - seconds(services.settings.warning_lead_seconds)
    if warn_at > utcnow() and session.warned_for != session.ends_at:
        timers.at(
            session.id,
            TimerKind.WARNING,
            warn_at,
            warning_job,
            services,
            session.id,
            session.ends_at,
        )
    else:
        timers.cancel(session.id, TimerKind.WARNING)
    timers.at(session.id, TimerKind.EXPIRY, session.ends_at, expiry_job, services, session.id)


def arm_grace_timer(services: Services, session: ChatSession) -> None:
    """After entering EXPIRED / EXTENSION_PENDING / CLOSING: only the grace deadline is left."""
    assert session.grace_deadline is not None
    services.timers.cancel(session.id, TimerKind.WARNING, TimerKind.EXPIRY)
    services.timers.at(
        session.id, TimerKind.GRACE, session.grace_deadline, grace_job, services, session.id
    )


async def on_session_active(services: Services, session: ChatSession) -> None:
    """Called whenever a session (re)enters ACTIVE (accept, extension accepted): arms the
    1-minute warning and the expiry timers for `session.ends_at`."""
    services.timers.cancel(session.id, TimerKind.GRACE)
    arm_active_timers(services, session)


# Timer entry points: they only call the timed steps below. A step that raises is retried
# with backoff by halochat/jobs/timers.py, and halochat/domain/sweeper.py catches any
# deadline left overdue, so no failure is swallowed here.


async def warning_job(
    services: Services, session_id: PydanticObjectId, ends_at: datetime | None = None
) -> None:
    await send_warning(services, session_id, ends_at)


async def expiry_job(services: Services, session_id: PydanticObjectId) -> None:
    await expire(services, session_id)


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
    for role in PARTIES:
        tell(
            services,
            warned,
            role,
            ServerFrame.ONE_MINUTE_LEFT,
            {"remaining_seconds": remaining, "ends_at": ends_at},
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
    expired = await transition(
        session_id,
        Trigger.TIME_UP,
        set_fields={
            "ended_at": ended_at,
            "grace_deadline": ended_at + seconds(services.settings.grace_seconds),
            "end_reason": EndReason.TIME_UP.value,
        },
        extra_filter={"ends_at": {"$lte": now}},
    )
    if expired is None:
        return None
    arm_grace_timer(services, expired)
    if quiet:
        return expired
    config = await recent_config(services.settings)  # only shown: a second old is fine
    tiers = pairing.tier_view(config)
    for role in PARTIES:
        data: dict[str, Any] = {"grace_deadline": expired.grace_deadline}
        if role == Role.CUSTOMER:
            data["tiers"] = tiers
            title, body = "Time's up", f"Extend your chat with {expired.mitra_name}?"
        else:
            title, body = "Time's up", f"Your chat with {expired.customer_name} has ended"
        tell(
            services,
            expired,
            role,
            ServerFrame.SESSION_EXPIRED,
            data,
            session_push(expired, role, PushType.SESSION_EXPIRED, title, body),
        )
    return expired


async def complete_after_grace(
    services: Services, session_id: PydanticObjectId
) -> ChatSession | None:
    """EXPIRED / EXTENSION_PENDING / CLOSING -> COMPLETED once grace_deadline has passed,
    with whatever closures exist; an unanswered extension request lapses."""
    session = await ChatSession.get(session_id)
    if session is None or session.state not in GRACE_STATES:
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
    services.timers.cancel(session_id)
    tell_completed(services, completed, Trigger.GRACE_ELAPSED)
    return completed


async def reconcile(services: Services, session: ChatSession) -> None:
    """Brings one open session in line with the clock, through the same steps as the timers
    (so a timer firing at the same moment, here or in another process, is harmless)."""
    now = utcnow()
    grace = seconds(services.settings.grace_seconds)
    if session.state == S.ACTIVE:
        if session.ends_at is None:
            log.error("ACTIVE session %s has no ends_at; left alone", session.id)
            return
        if session.ends_at + grace <= now:
            # Stopped longer than the whole grace: expire and complete at once.
            if await expire(services, session.id, quiet=True) is not None:
                await complete_after_grace(services, session.id)
        elif session.ends_at <= now:
            await expire(services, session.id)
        else:
            arm_active_timers(services, session)
            live_sessions.remember(session)  # last_seq was repaired before: no read on send
        return
    deadline = session.grace_deadline
    if deadline is None:  # not written by this code; bound it anyway
        deadline = (session.ended_at or session.updated_at) + grace
        await ChatSession.get_pymongo_collection().update_one(
            {"_id": session.id, "state": session.state.value, "grace_deadline": None},
            {"$set": {"grace_deadline": deadline}},
        )
    if deadline <= now:
        await complete_after_grace(services, session.id)
    else:
        arm_grace_timer(services, session.model_copy(update={"grace_deadline": deadline}))


async def open_lifecycle_sessions() -> list[ChatSession]:
    """The sessions recovery reconciles: ACTIVE / EXPIRED / EXTENSION_PENDING / CLOSING."""
    return await ChatSession.find({"state": {"$in": [s.value for s in LIFECYCLE_STATES]}}).to_list()


async def recover_lifecycle(services: Services, sessions: list[ChatSession] | None = None) -> None:
    """Start-up: reconcile ACTIVE / EXPIRED / EXTENSION_PENDING / CLOSING sessions (read
    here unless given) with the clock and re-arm their timers."""
    if sessions is None:
        sessions = await open_lifecycle_sessions()
    for session in sessions:
        try:
            await reconcile(services, session)
        except Exception:  # one odd document must not keep the server from starting
            log.exception("could not recover session %s", session.id)
    if sessions:
        log.info("recovered %d open session(s)", len(sessions))
