"""Events and shared helpers of the session lifecycle: frames (with the session as each party
sees it), deep-linking pushes, grace deadlines.
"""

from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId

from halochat.constants import (
    ExtensionStatus,
    PushType,
    Role,
    ServerFrame,
    TimelineKind,
)
from halochat.documents import ChatSession, EventActor, ExtensionRequest
from halochat.domain.access import session_not_found
from halochat.domain.state_machine import Trigger
from halochat.notify.events import PartyNotice
from halochat.observability import timeline
from halochat.push import Push
from halochat.services import Services

PARTIES = (Role.CUSTOMER, Role.MITRA)


def party_id(session: ChatSession, role: Role) -> PydanticObjectId | None:
    return session.customer_id if role == Role.CUSTOMER else session.mitra_id


def session_push(
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
            "other_role": role.counterpart.value,
            "state": session.state.value,
            **data,
        },
    )


def tell(
    services: Services,
    session: ChatSession,
    role: Role,
    type_: ServerFrame,
    data: dict[str, Any],
    push: Push | None = None,
) -> None:
    """`type_` to one party with the session as that party sees it."""
    data = {"session_id": str(session.id), **data}
    services.notifier.publish(PartyNotice(session, role, type_, data, push))


def other_name(session: ChatSession, role: Role) -> str:
    return session.other_party(role)[1] or ""


def tell_closing(services: Services, session: ChatSession, ended_by: Role | None) -> None:
    for role in PARTIES:
        tell(
            services,
            session,
            role,
            ServerFrame.SESSION_CLOSING,
            {
                "reason": session.end_reason,
                "ended_by": ended_by.value if ended_by else None,
                "grace_deadline": session.grace_deadline,
            },
            session_push(
                session,
                role,
                PushType.SESSION_ENDED,
                "Chat ended",
                f"Leave a closing message for {other_name(session, role)}",
                reason=session.end_reason,
            ),
        )


def tell_completed(services: Services, session: ChatSession, trigger: Trigger) -> None:
    for role in PARTIES:
        tell(
            services,
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


def dump_extension(ext: ExtensionRequest) -> dict[str, Any]:
    return ext.model_dump(mode="python", exclude_none=True)


def record_answer(session_id: object, ext: ExtensionRequest, actor: EventActor) -> None:
    """extension_answered on the timeline: accepted / rejected by the Mitra, or lapsed."""
    timeline.record(
        session_id,
        TimelineKind.EXTENSION_ANSWERED,
        actor,
        {
            "extension_id": ext.id,
            "accepted": ext.status == ExtensionStatus.ACCEPTED,
            "status": ext.status.value,
        },
    )


def extension_view(ext: ExtensionRequest) -> dict[str, Any]:
    return ext.model_dump(mode="json")


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def grace_fields(services: Services, now: datetime) -> dict[str, Any]:
    """Every grace state gets its own full grace period from the moment it is entered."""
    return {"grace_deadline": now + seconds(services.settings.grace_seconds)}


async def current_session(session_id: PydanticObjectId) -> ChatSession:
    current = await ChatSession.get(session_id)
    if current is None:
        raise session_not_found()
    return current
