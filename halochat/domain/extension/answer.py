"""The Mitra's answer to an extension request: accept (a pending-payment transaction, ACTIVE
again with a later ends_at) or reject (CLOSING). Each is one conditional transition from
EXTENSION_PENDING on that very request, so a second answer or the grace job finds it resolved.
"""

from typing import Any

from beanie import PydanticObjectId

from halochat.constants import (
    EndReason,
    ErrorCode,
    ExtensionStatus,
    PushType,
    Role,
    ServerFrame,
    TransactionKind,
    TransactionStatus,
)
from halochat.documents import ChatSession, ExtensionRequest, Transaction, User
from halochat.documents.common import utcnow
from halochat.domain.access import invalid_state, participant_session
from halochat.domain.session_events import (
    PARTIES,
    current_session,
    dump_extension,
    extension_view,
    grace_fields,
    party_notice,
    record_answer,
    seconds,
    session_push,
)
from halochat.domain.state_machine import Trigger, can, transition
from halochat.domain.transactions import new_transaction, transaction_view
from halochat.errors import ApiError
from halochat.notify.events import Event
from halochat.observability import timeline
from halochat.services import Services


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
    if can(Trigger.EXTENSION_ACCEPTED, session.state) or _known_extension(session, extension_id):
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
        not can(Trigger.EXTENSION_ACCEPTED, session.state)
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
    txn = new_transaction(
        session.customer_id,
        session.id,
        TransactionKind.EXTENSION,
        ext,
        TransactionStatus.PENDING_PAYMENT,
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
    customer_data = {"transaction": transaction_view(txn)}
    resumed = await transition(
        services,
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
        # Told before session.resumed (the entry's own events).
        first=lambda s: _answered(
            s,
            accepted=True,
            title="Extension accepted",
            body=f"{s.mitra_name} accepted: {ext.minutes} more minutes",
            customer_data=customer_data,
        ),
    )
    if resumed is None:
        await txn.delete()
        raise _answer_conflict(await current_session(session.id), ext.id)
    assert resumed.extension is not None
    record_answer(session.id, resumed.extension, timeline.actor_of(mitra))
    return resumed, txn


def _answered(
    session: ChatSession,
    *,
    accepted: bool,
    title: str,
    body: str,
    customer_data: dict[str, Any] | None = None,
) -> list[Event]:
    """extension.answered for both parties; the customer also gets `customer_data` and a push."""
    ext = session.extension
    assert ext is not None
    view = extension_view(ext)
    events: list[Event] = []
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
        events.append(party_notice(session, role, ServerFrame.EXTENSION_ANSWERED, data, push))
    return events


async def _reject_extension(
    services: Services, mitra: User, session: ChatSession, ext: ExtensionRequest
) -> ChatSession:
    """EXTENSION_PENDING -> CLOSING; a fresh grace period for the closing messages."""
    now = utcnow()
    answered = dump_extension(
        ext.model_copy(update={"status": ExtensionStatus.REJECTED, "answered_at": now})
    )
    closing = await transition(
        services,
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
        # Told before session.closing (the entry's own events).
        first=lambda s: _answered(
            s,
            accepted=False,
            title="Extension declined",
            body=f"{s.mitra_name} could not extend the chat",
        ),
    )
    if closing is None:
        raise _answer_conflict(await current_session(session.id), ext.id)
    assert closing.extension is not None
    record_answer(session.id, closing.extension, timeline.actor_of(mitra))
    return closing
