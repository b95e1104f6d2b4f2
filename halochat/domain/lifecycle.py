"""The second half of the session lifecycle (DESIGN.md, docs/lifecycle.md): timers, 1-minute
warning, expiry, extension, end early, closures, grace, and their recovery after a restart.

Every step is one conditional update on the session document, so a timer that fires twice,
late, or in two processes at once changes the session once; whoever wins the update sends the
events and arms the next timers, the losers do nothing. Timers are an optimisation: the
recovery pass rebuilds them from the documents.
"""

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from halochat.constants import (
    GRACE_STATES,
    EndReason,
    ErrorCode,
    ExtensionStatus,
    PushType,
    Role,
    ServerFrame,
    SessionState,
    TransactionKind,
    TransactionStatus,
)
from halochat.documents import ChatSession, ExtensionRequest, Transaction, User
from halochat.documents.common import utcnow
from halochat.domain import pairing
from halochat.domain.access import invalid_state, participant_session, session_not_found
from halochat.domain.app_config import require_config
from halochat.domain.state_machine import Trigger, transition
from halochat.errors import ApiError
from halochat.jobs.timers import TimerKind
from halochat.push import Push
from halochat.services import Services
from halochat.views import session_view

log = logging.getLogger(__name__)

S = SessionState
PARTIES = (Role.CUSTOMER, Role.MITRA)
# States this module reconciles at start-up (PAIRING is pairing's).
LIFECYCLE_STATES = (S.ACTIVE, *sorted(GRACE_STATES))


# --- events ------------------------------------------------------------------------------


def _other_role(role: Role) -> Role:
    return Role.MITRA if role == Role.CUSTOMER else Role.CUSTOMER


def _party_id(session: ChatSession, role: Role) -> PydanticObjectId | None:
    return session.customer_id if role == Role.CUSTOMER else session.mitra_id


def _push(
    session: ChatSession, role: Role, type_: PushType, title: str, body: str, **data: object
) -> Push:
    """A push for `role`, deep-linking to this session with the other party's id/name/role."""
    other_id, other_name = session.other_party(role)
    return Push(
        type=type_,
        session_id=str(session.id),
        title=title,
        body=body,
        data={
            "other_id": other_id,
            "other_name": other_name,
            "other_role": _other_role(role).value,
            "state": session.state.value,
            **data,
        },
    )


def _tell(
    services: Services,
    session: ChatSession,
    role: Role,
    type_: ServerFrame,
    data: dict[str, Any],
    push: Push | None = None,
) -> None:
    """`type_` to one party with the session as that party sees it."""
    payload = {"session_id": str(session.id), **data, "session": session_view(session, role)}
    services.notify(_party_id(session, role), type_, payload, push=push)


def _other_name(session: ChatSession, role: Role) -> str:
    return session.other_party(role)[1] or ""


def _tell_closing(services: Services, session: ChatSession, ended_by: Role | None) -> None:
    for role in PARTIES:
        _tell(
            services,
            session,
            role,
            ServerFrame.SESSION_CLOSING,
            {
                "reason": session.end_reason,
                "ended_by": ended_by.value if ended_by else None,
                "grace_deadline": session.grace_deadline,
            },
            _push(
                session,
                role,
                PushType.SESSION_ENDED,
                "Chat ended",
                f"Leave a closing message for {_other_name(session, role)}",
                reason=session.end_reason,
            ),
        )


def _tell_completed(services: Services, session: ChatSession, trigger: Trigger) -> None:
    for role in PARTIES:
        _tell(
            services,
            session,
            role,
            ServerFrame.SESSION_COMPLETED,
            {"completed_by": trigger.value},
            _push(
                session,
                role,
                PushType.SESSION_ENDED,
                "Chat completed",
                f"Your chat with {_other_name(session, role)} is complete",
                reason=session.end_reason,
                completed_by=trigger.value,
            ),
        )


def _dump(ext: ExtensionRequest) -> dict[str, Any]:
    return ext.model_dump(mode="python", exclude_none=True)


def _extension_view(ext: ExtensionRequest) -> dict[str, Any]:
    return ext.model_dump(mode="json")


# --- timers ------------------------------------------------------------------------------


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def arm_active_timers(services: Services, session: ChatSession) -> None:
    """The warning (unless past or already sent for this ends_at) and the expiry."""
    assert session.ends_at is not None
    timers = services.timers
    warn_at = session.ends_at - _seconds(services.settings.warning_lead_seconds)
    if warn_at > utcnow() and session.warned_for != session.ends_at:
        timers.at(session.id, TimerKind.WARNING, warn_at, warning_job, services, session.id)
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


# Timer entry points: they only call the domain steps below (and log, since APScheduler
# would otherwise swallow a failure into its own log line).


async def warning_job(services: Services, session_id: PydanticObjectId) -> None:
    try:
        await send_warning(services, session_id)
    except Exception:
        log.exception("warning job failed for session %s", session_id)


async def expiry_job(services: Services, session_id: PydanticObjectId) -> None:
    try:
        await expire(services, session_id)
    except Exception:
        log.exception("expiry job failed for session %s", session_id)


async def grace_job(services: Services, session_id: PydanticObjectId) -> None:
    try:
        await complete_after_grace(services, session_id)
    except Exception:
        log.exception("grace job failed for session %s", session_id)


# --- timed steps -------------------------------------------------------------------------


async def send_warning(services: Services, session_id: PydanticObjectId) -> bool:
    """ "1 minute left", exactly once per ends_at: the send is claimed by a conditional update
    of `warned_for`, and only inside the warning window (a stale timer does nothing)."""
    session = await ChatSession.get(session_id)
    if session is None or session.state != S.ACTIVE or session.ends_at is None:
        return False
    now = utcnow()
    ends_at = session.ends_at
    lead = _seconds(services.settings.warning_lead_seconds)
    if not (ends_at - lead <= now < ends_at) or session.warned_for == ends_at:
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
        _tell(
            services,
            warned,
            role,
            ServerFrame.ONE_MINUTE_LEFT,
            {"remaining_seconds": remaining, "ends_at": ends_at},
            _push(
                warned,
                role,
                PushType.ONE_MINUTE_LEFT,
                "1 minute left",
                f"Your chat with {_other_name(warned, role)} ends in {remaining} seconds",
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
            "grace_deadline": ended_at + _seconds(services.settings.grace_seconds),
            "end_reason": EndReason.TIME_UP.value,
        },
        extra_filter={"ends_at": {"$lte": now}},
    )
    if expired is None:
        return None
    arm_grace_timer(services, expired)
    if quiet:
        return expired
    config = await require_config(services.settings)
    tiers = pairing.tier_view(config)
    for role in PARTIES:
        data: dict[str, Any] = {"grace_deadline": expired.grace_deadline}
        if role == Role.CUSTOMER:
            data["tiers"] = tiers
            title, body = "Time's up", f"Extend your chat with {expired.mitra_name}?"
        else:
            title, body = "Time's up", f"Your chat with {expired.customer_name} has ended"
        _tell(
            services,
            expired,
            role,
            ServerFrame.SESSION_EXPIRED,
            data,
            _push(expired, role, PushType.SESSION_EXPIRED, title, body),
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
        lapsed = _dump(
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
    services.timers.cancel(session_id)
    _tell_completed(services, completed, Trigger.GRACE_ELAPSED)
    return completed


# --- user actions ------------------------------------------------------------------------


def _grace_fields(services: Services, now: datetime) -> dict[str, Any]:
    """Every grace state gets its own full grace period from the moment it is entered."""
    return {"grace_deadline": now + _seconds(services.settings.grace_seconds)}


async def _current(session_id: PydanticObjectId) -> ChatSession:
    current = await ChatSession.get(session_id)
    if current is None:
        raise session_not_found()
    return current


async def request_extension(
    services: Services, customer: User, session_id: PydanticObjectId, tier_id: str
) -> ChatSession:
    """EXPIRED -> EXTENSION_PENDING with the chosen tier; the Mitra is asked to confirm."""
    session, _ = await participant_session(customer, session_id, Role.CUSTOMER)
    if session.state != S.EXPIRED:
        raise invalid_state(session, "request an extension")
    config = await require_config(services.settings)
    tier = config.tier(tier_id)
    if tier is None:
        raise ApiError(404, ErrorCode.TIER_NOT_FOUND, f"no tier {tier_id!r}")
    ext = ExtensionRequest(
        id=uuid.uuid4().hex,
        tier_id=tier.id,
        label=tier.label,
        minutes=tier.minutes,
        price=tier.price,
        currency=tier.currency,
    )
    pending = await transition(
        session_id,
        Trigger.REQUEST_EXTENSION,
        set_fields={"extension": _dump(ext), **_grace_fields(services, utcnow())},
    )
    if pending is None:
        raise invalid_state(await _current(session_id), "request an extension")
    arm_grace_timer(services, pending)
    _tell(
        services,
        pending,
        Role.MITRA,
        ServerFrame.EXTENSION_REQUESTED,
        {
            "extension": _extension_view(ext),
            "customer": {"id": str(pending.customer_id), "name": pending.customer_name},
            "grace_deadline": pending.grace_deadline,
        },
        _push(
            pending,
            Role.MITRA,
            PushType.EXTENSION_REQUEST,
            "Extension request",
            f"{pending.customer_name} wants {ext.minutes} more minutes",
            customer_id=str(pending.customer_id),
            customer_name=pending.customer_name,
            extension_id=ext.id,
            minutes=ext.minutes,
            price=ext.price,
            label=ext.label,
        ),
    )
    return pending


def already_resolved(session: ChatSession) -> ApiError:
    ext = session.extension
    return ApiError(
        409,
        ErrorCode.ALREADY_RESOLVED,
        "this extension request was already answered or is no longer pending",
        {
            "state": session.state.value,
            "extension": _extension_view(ext) if ext else None,
        },
    )


def _known_extension(session: ChatSession, extension_id: str) -> bool:
    ids = {e.id for e in session.extensions}
    if session.extension is not None:
        ids.add(session.extension.id)
    return extension_id in ids


def _answer_conflict(session: ChatSession, extension_id: str) -> ApiError:
    """Why an answer could not apply: the request was resolved (or replaced), or there is no
    request to answer at all."""
    if session.state == S.EXTENSION_PENDING or _known_extension(session, extension_id):
        return already_resolved(session)
    return invalid_state(session, "answer an extension")


async def answer_extension(
    services: Services,
    mitra: User,
    session_id: PydanticObjectId,
    extension_id: str,
    accept: bool,
) -> tuple[ChatSession, Transaction | None]:
    session, _ = await participant_session(mitra, session_id, Role.MITRA)
    ext = session.extension
    if (
        session.state != S.EXTENSION_PENDING
        or ext is None
        or ext.id != extension_id
        or ext.status != ExtensionStatus.PENDING
    ):
        raise _answer_conflict(session, extension_id)
    if accept:
        return await _accept_extension(services, session, ext)
    return await _reject_extension(services, session, ext), None


async def _accept_extension(
    services: Services, session: ChatSession, ext: ExtensionRequest
) -> tuple[ChatSession, Transaction]:
    """EXTENSION_PENDING -> ACTIVE with ends_at = now + minutes, and a transaction in
    pending_payment. The transaction is stored first so the session can point at it in the
    same update; if the update loses (a second answer, the grace job) it is deleted again."""
    now = utcnow()
    txn = Transaction(
        customer_id=session.customer_id,
        session_id=session.id,
        kind=TransactionKind.EXTENSION,
        tier_id=ext.tier_id,
        minutes=ext.minutes,
        price=ext.price,
        currency=ext.currency,
        status=TransactionStatus.PENDING_PAYMENT,
    )
    await txn.insert()
    answered = _dump(
        ext.model_copy(
            update={
                "status": ExtensionStatus.ACCEPTED,
                "answered_at": now,
                "transaction_id": txn.id,
            }
        )
    )
    resumed = await transition(
        session.id,
        Trigger.EXTENSION_ACCEPTED,
        set_fields={
            "extension": answered,
            "ends_at": now + _seconds(ext.minutes * services.settings.minute_seconds),
        },
        unset_fields=("grace_deadline", "ended_at", "end_reason"),
        extra_filter={"extension.id": ext.id, "extension.status": ExtensionStatus.PENDING.value},
        extra_update={"$push": {"extensions": answered, "transaction_ids": txn.id}},
    )
    if resumed is None:
        await txn.delete()
        raise _answer_conflict(await _current(session.id), ext.id)
    assert resumed.extension is not None
    view = _extension_view(resumed.extension)
    for role in PARTIES:
        data: dict[str, Any] = {"extension": view, "accepted": True}
        if role == Role.CUSTOMER:
            data["transaction"] = pairing.transaction_view(txn)
        _tell(
            services,
            resumed,
            role,
            ServerFrame.EXTENSION_ANSWERED,
            data,
            _push(
                resumed,
                role,
                PushType.EXTENSION_ANSWER,
                "Extension accepted",
                f"{resumed.mitra_name} accepted: {ext.minutes} more minutes",
                extension_id=ext.id,
                accepted="true",
            )
            if role == Role.CUSTOMER
            else None,
        )
    for role in PARTIES:
        _tell(services, resumed, role, ServerFrame.SESSION_RESUMED, {"ends_at": resumed.ends_at})
    await on_session_active(services, resumed)
    return resumed, txn


async def _reject_extension(
    services: Services, session: ChatSession, ext: ExtensionRequest
) -> ChatSession:
    """EXTENSION_PENDING -> CLOSING; a fresh grace period for the closing messages."""
    now = utcnow()
    answered = _dump(
        ext.model_copy(update={"status": ExtensionStatus.REJECTED, "answered_at": now})
    )
    closing = await transition(
        session.id,
        Trigger.EXTENSION_REJECTED,
        set_fields={
            "extension": answered,
            "end_reason": EndReason.EXTENSION_REJECTED.value,
            **_grace_fields(services, now),
        },
        extra_filter={"extension.id": ext.id, "extension.status": ExtensionStatus.PENDING.value},
        extra_update={"$push": {"extensions": answered}},
    )
    if closing is None:
        raise _answer_conflict(await _current(session.id), ext.id)
    arm_grace_timer(services, closing)
    assert closing.extension is not None
    view = _extension_view(closing.extension)
    for role in PARTIES:
        _tell(
            services,
            closing,
            role,
            ServerFrame.EXTENSION_ANSWERED,
            {"extension": view, "accepted": False},
            _push(
                closing,
                role,
                PushType.EXTENSION_ANSWER,
                "Extension declined",
                f"{closing.mitra_name} could not extend the chat",
                extension_id=ext.id,
                accepted="false",
            )
            if role == Role.CUSTOMER
            else None,
        )
    _tell_closing(services, closing, Role.MITRA)
    return closing


async def decline_extension(
    services: Services, customer: User, session_id: PydanticObjectId
) -> ChatSession:
    """The customer does not extend: EXPIRED -> CLOSING (fresh grace for the closures)."""
    session, _ = await participant_session(customer, session_id, Role.CUSTOMER)
    if session.state != S.EXPIRED:
        raise invalid_state(session, "decline the extension")
    closing = await transition(
        session_id,
        Trigger.DECLINE_EXTENSION,
        set_fields={
            "end_reason": EndReason.EXTENSION_DECLINED.value,
            **_grace_fields(services, utcnow()),
        },
    )
    if closing is None:
        raise invalid_state(await _current(session_id), "decline the extension")
    arm_grace_timer(services, closing)
    _tell_closing(services, closing, Role.CUSTOMER)
    return closing


async def end_early(services: Services, user: User, session_id: PydanticObjectId) -> ChatSession:
    """Either party ends an ACTIVE session: ACTIVE -> CLOSING."""
    session, role = await participant_session(user, session_id, Role.CUSTOMER, Role.MITRA)
    if session.state != S.ACTIVE:
        raise invalid_state(session, "end the session")
    now = utcnow()
    reason = EndReason.ENDED_BY_CUSTOMER if role == Role.CUSTOMER else EndReason.ENDED_BY_MITRA
    closing = await transition(
        session_id,
        Trigger.END_EARLY,
        set_fields={"ended_at": now, "end_reason": reason.value, **_grace_fields(services, now)},
    )
    if closing is None:
        raise invalid_state(await _current(session_id), "end the session")
    arm_grace_timer(services, closing)
    _tell_closing(services, closing, role)
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
    if session.state != S.CLOSING:
        raise invalid_state(session, "write a closing message")
    now = utcnow()
    field = f"closures.{role.value}"
    # `field: None` matches a missing or null closure: the first write wins, once.
    raw = await ChatSession.get_pymongo_collection().find_one_and_update(
        {"_id": session_id, "state": S.CLOSING.value, field: None},
        {"$set": {field: {"text": trimmed, "at": now}, "updated_at": now}},
        return_document=ReturnDocument.AFTER,
    )
    if raw is None:
        current = await _current(session_id)
        if current.state != S.CLOSING:
            raise invalid_state(current, "write a closing message")
        raise ApiError(409, ErrorCode.ALREADY_SUBMITTED, "you already wrote your closing message")
    written = ChatSession.model_validate(raw)
    closure = written.closures.of(role)
    assert closure is not None
    _tell(
        services,
        written,
        _other_role(role),
        ServerFrame.CLOSURE_SUBMITTED,
        {"role": role.value, "closure": closure.model_dump(mode="json")},
    )
    if written.closures.customer is None or written.closures.mitra is None:
        return written
    completed = await transition(
        session_id,
        Trigger.CLOSURES_DONE,
        extra_filter={"closures.customer": {"$ne": None}, "closures.mitra": {"$ne": None}},
    )
    if completed is None:  # the grace job completed it a moment earlier
        return await _current(session_id)
    services.timers.cancel(session_id)
    _tell_completed(services, completed, Trigger.CLOSURES_DONE)
    return completed


# --- restart recovery --------------------------------------------------------------------


async def reconcile(services: Services, session: ChatSession) -> None:
    """Brings one open session in line with the clock, through the same steps as the timers
    (so a timer firing at the same moment, here or in another process, is harmless)."""
    now = utcnow()
    grace = _seconds(services.settings.grace_seconds)
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


async def recover_lifecycle(services: Services) -> None:
    """Start-up: reconcile ACTIVE / EXPIRED / EXTENSION_PENDING / CLOSING sessions with the
    clock and re-arm their timers."""
    sessions = await ChatSession.find(
        {"state": {"$in": [s.value for s in LIFECYCLE_STATES]}}
    ).to_list()
    for session in sessions:
        try:
            await reconcile(services, session)
        except Exception:  # one odd document must not keep the server from starting
            log.exception("could not recover session %s", session.id)
    if sessions:
        log.info("recovered %d open session(s)", len(sessions))
