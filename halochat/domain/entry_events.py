"""What each party is told when a session enters a state (declared per state in
halochat/domain/state_machine.py ON_ENTER): frames, and pushes for parties away from the app.
"""

from halochat.constants import (
    PairingReason,
    PushType,
    Role,
    ServerFrame,
    SessionState,
)
from halochat.domain.app_config import recent_config, tier_view
from halochat.domain.session_events import (
    PARTIES,
    extension_view,
    other_name,
    party_notice,
    push_to_mitra,
    session_push,
)
from halochat.domain.triggers import Entered, Trigger
from halochat.notify.events import Event, PartyNotice, UserNotice
from halochat.push import Push
from halochat.services import Services

S = SessionState


def withdrawn(entered: Entered, reason: PairingReason) -> list[Event]:
    """The request leaves every Mitra it was offered to."""
    session = entered.session
    data = {"session_id": str(session.id), "reason": reason.value}
    return [UserNotice(m, ServerFrame.REQUEST_WITHDRAWN, data) for m in session.offered_to]


async def active(services: Services, entered: Entered) -> list[Event]:
    """Accepted: both parties get session.started (the customer a push), the other Mitras
    see the request taken. Extended: both get session.resumed."""
    session = entered.session
    if entered.trigger == Trigger.EXTENSION_ACCEPTED:
        return [
            party_notice(session, role, ServerFrame.SESSION_RESUMED, {"ends_at": session.ends_at})
            for role in PARTIES
        ]
    push = session_push(
        session,
        Role.CUSTOMER,
        PushType.PAIRING_RESULT,
        "Your Bestie is here",
        f"{session.mitra_name} accepted your chat",
        result=S.ACTIVE.value,
        mitra_id=str(session.mitra_id),
        mitra_name=session.mitra_name,
    )
    # session.started carries only the session (no session_id beside it, docs/protocol.md).
    events: list[Event] = [
        PartyNotice(session, Role.CUSTOMER, ServerFrame.SESSION_STARTED, {}, push),
        PartyNotice(session, Role.MITRA, ServerFrame.SESSION_STARTED, {}),
    ]
    taken = {"session_id": str(session.id)}
    events += [
        UserNotice(other, ServerFrame.REQUEST_TAKEN, taken)
        for other in session.offered_to
        if other != session.mitra_id
    ]
    return events


async def unmatched(services: Services, entered: Entered) -> list[Event]:
    """Nobody accepted in time: the customer is told (push), the offers are withdrawn."""
    push = Push(
        type=PushType.PAIRING_RESULT,
        session_id=str(entered.session.id),
        title="No Bestie available",
        body="Nobody accepted your chat in time. Please try again.",
        data={
            "result": S.UNMATCHED.value,
            "state": S.UNMATCHED.value,
            "reason": PairingReason.TIMEOUT.value,
        },
    )
    failed = party_notice(
        entered.session,
        Role.CUSTOMER,
        ServerFrame.PAIRING_FAILED,
        {"reason": PairingReason.TIMEOUT.value},
        push,
    )
    return [failed, *withdrawn(entered, PairingReason.TIMEOUT)]


async def cancelled(services: Services, entered: Entered) -> list[Event]:
    cancel = party_notice(entered.session, Role.CUSTOMER, ServerFrame.SESSION_CANCELLED, {})
    return [*withdrawn(entered, PairingReason.CANCELLED), cancel]


async def expired(services: Services, entered: Entered) -> list[Event]:
    """Time is up: the customer is offered the tiers to extend with."""
    session = entered.session
    config = await recent_config(services.settings)  # only shown: a second old is fine
    tiers = tier_view(config)
    events: list[Event] = []
    for role in PARTIES:
        data: dict[str, object] = {"grace_deadline": session.grace_deadline}
        if role == Role.CUSTOMER:
            data["tiers"] = tiers
            title, body = "Time's up", f"Extend your chat with {session.mitra_name}?"
        else:
            title, body = "Time's up", f"Your chat with {session.customer_name} has ended"
        push = session_push(session, role, PushType.SESSION_EXPIRED, title, body)
        events.append(party_notice(session, role, ServerFrame.SESSION_EXPIRED, data, push))
    return events


async def extension_pending(services: Services, entered: Entered) -> list[Event]:
    """The customer asked for more time: the Mitra is asked to confirm."""
    session = entered.session
    ext = session.extension
    assert ext is not None
    push = push_to_mitra(
        session,
        PushType.EXTENSION_REQUEST,
        "Extension request",
        f"{session.customer_name} wants {ext.minutes} more minutes",
        extension_id=ext.id,
        minutes=ext.minutes,
        price=ext.price,
        label=ext.label,
    )
    data = {
        "extension": extension_view(ext),
        "customer": {"id": str(session.customer_id), "name": session.customer_name},
        "grace_deadline": session.grace_deadline,
    }
    return [party_notice(session, Role.MITRA, ServerFrame.EXTENSION_REQUESTED, data, push)]


# Who ended the chat, by the trigger that moved it to CLOSING (END_EARLY: the actor).
_ENDED_BY = {Trigger.EXTENSION_REJECTED: Role.MITRA, Trigger.DECLINE_EXTENSION: Role.CUSTOMER}


async def closing(services: Services, entered: Entered) -> list[Event]:
    """Both parties are asked for their closing message."""
    session = entered.session
    ended_by = _ENDED_BY.get(entered.trigger) or Role(entered.actor.role.value)
    data = {
        "reason": session.end_reason,
        "ended_by": ended_by.value,
        "grace_deadline": session.grace_deadline,
    }
    return [
        party_notice(
            session,
            role,
            ServerFrame.SESSION_CLOSING,
            data,
            session_push(
                session,
                role,
                PushType.SESSION_ENDED,
                "Chat ended",
                f"Leave a closing message for {other_name(session, role)}",
                reason=session.end_reason,
            ),
        )
        for role in PARTIES
    ]


async def completed(services: Services, entered: Entered) -> list[Event]:
    session, trigger = entered.session, entered.trigger
    return [
        party_notice(
            session,
            role,
            ServerFrame.SESSION_COMPLETED,
            {"completed_by": trigger.value},
            session_push(
                session,
                role,
                PushType.SESSION_ENDED,
                "Chat completed",
                f"Your chat with {other_name(session, role)} is complete",
                reason=session.end_reason,
                completed_by=trigger.value,
            ),
        )
        for role in PARTIES
    ]
