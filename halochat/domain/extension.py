"""Extension of an expired session (DESIGN.md): the customer asks with a tier, the Mitra
accepts (a pending-payment transaction, ACTIVE again) or rejects (CLOSING); the customer may
also decline (CLOSING). Every step is one conditional update (halochat/domain/state_machine.py).
"""

import uuid
from typing import Any

from beanie import PydanticObjectId

from halochat.constants import (
    EndReason,
    ErrorCode,
    ExtensionStatus,
    PushType,
    Role,
    ServerFrame,
    TimelineKind,
    TransactionKind,
    TransactionStatus,
)
from halochat.documents import ChatSession, ExtensionRequest, Transaction, User
from halochat.documents.common import utcnow
from halochat.domain import pairing
from halochat.domain.access import invalid_state, participant_session
from halochat.domain.app_config import require_config
from halochat.domain.lifecycle import S, arm_grace_timer, on_session_active
from halochat.domain.session_events import (
    PARTIES,
    current_session,
    dump_extension,
    extension_view,
    grace_fields,
    record_answer,
    seconds,
    session_push,
    tell,
    tell_closing,
)
from halochat.domain.state_machine import Trigger, transition
from halochat.errors import ApiError
from halochat.observability import timeline
from halochat.services import Services


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
        set_fields={"extension": dump_extension(ext), **grace_fields(services, utcnow())},
        actor=timeline.actor_of(customer),
    )
    if pending is None:
        raise invalid_state(await current_session(session_id), "request an extension")
    timeline.record(
        session_id,
        TimelineKind.EXTENSION_REQUESTED,
        timeline.actor_of(customer),
        {
            "extension_id": ext.id,
            "tier_id": ext.tier_id,
            "minutes": ext.minutes,
            "price": ext.price,
            "currency": ext.currency,
        },
    )
    arm_grace_timer(services, pending)
    tell(
        services,
        pending,
        Role.MITRA,
        ServerFrame.EXTENSION_REQUESTED,
        {
            "extension": extension_view(ext),
            "customer": {"id": str(pending.customer_id), "name": pending.customer_name},
            "grace_deadline": pending.grace_deadline,
        },
        session_push(
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
            "extension": extension_view(ext) if ext else None,
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
        return await _accept_extension(services, mitra, session, ext)
    return await _reject_extension(services, mitra, session, ext), None



async def _accept_extension(
    services: Services, mitra: User, session: ChatSession, ext: ExtensionRequest
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
    answered = dump_extension(
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
            "ends_at": now + seconds(ext.minutes * services.settings.minute_seconds),
        },
        unset_fields=("grace_deadline", "ended_at", "end_reason"),
        extra_filter={"extension.id": ext.id, "extension.status": ExtensionStatus.PENDING.value},
        extra_update={"$push": {"extensions": answered, "transaction_ids": txn.id}},
        actor=timeline.actor_of(mitra),
    )
    if resumed is None:
        await txn.delete()
        raise _answer_conflict(await current_session(session.id), ext.id)
    assert resumed.extension is not None
    record_answer(session.id, resumed.extension, timeline.actor_of(mitra))
    _tell_answered(
        services,
        resumed,
        accepted=True,
        title="Extension accepted",
        body=f"{resumed.mitra_name} accepted: {ext.minutes} more minutes",
        customer_data={"transaction": pairing.transaction_view(txn)},
    )
    for role in PARTIES:
        tell(services, resumed, role, ServerFrame.SESSION_RESUMED, {"ends_at": resumed.ends_at})
    await on_session_active(services, resumed)
    return resumed, txn


def _tell_answered(
    services: Services,
    session: ChatSession,
    *,
    accepted: bool,
    title: str,
    body: str,
    customer_data: dict[str, Any] | None = None,
) -> None:
    """extension.answered to both parties; the customer also gets `customer_data` and a push."""
    ext = session.extension
    assert ext is not None
    view = extension_view(ext)
    for role in PARTIES:
        data: dict[str, Any] = {"extension": view, "accepted": accepted}
        push = None
        if role == Role.CUSTOMER:
            data.update(customer_data or {})
            push = session_push(
                session,
                role,
                PushType.EXTENSION_ANSWER,
                title,
                body,
                extension_id=ext.id,
                accepted="true" if accepted else "false",
            )
        tell(services, session, role, ServerFrame.EXTENSION_ANSWERED, data, push)


async def _reject_extension(
    services: Services, mitra: User, session: ChatSession, ext: ExtensionRequest
) -> ChatSession:
    """EXTENSION_PENDING -> CLOSING; a fresh grace period for the closing messages."""
    now = utcnow()
    answered = dump_extension(
        ext.model_copy(update={"status": ExtensionStatus.REJECTED, "answered_at": now})
    )
    closing = await transition(
        session.id,
        Trigger.EXTENSION_REJECTED,
        set_fields={
            "extension": answered,
            "end_reason": EndReason.EXTENSION_REJECTED.value,
            **grace_fields(services, now),
        },
        extra_filter={"extension.id": ext.id, "extension.status": ExtensionStatus.PENDING.value},
        extra_update={"$push": {"extensions": answered}},
        actor=timeline.actor_of(mitra),
    )
    if closing is None:
        raise _answer_conflict(await current_session(session.id), ext.id)
    assert closing.extension is not None
    record_answer(session.id, closing.extension, timeline.actor_of(mitra))
    arm_grace_timer(services, closing)
    _tell_answered(
        services,
        closing,
        accepted=False,
        title="Extension declined",
        body=f"{closing.mitra_name} could not extend the chat",
    )
    tell_closing(services, closing, Role.MITRA)
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
            **grace_fields(services, utcnow()),
        },
        actor=timeline.actor_of(customer),
    )
    if closing is None:
        raise invalid_state(await current_session(session_id), "decline the extension")
    arm_grace_timer(services, closing)
    tell_closing(services, closing, Role.CUSTOMER)
    return closing
