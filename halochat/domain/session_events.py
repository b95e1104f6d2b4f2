"""Events and shared helpers of the session lifecycle: frames (with the session as each party
sees it), deep-linking pushes, extension records, grace deadlines.
"""

from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId

from halochat.constants import ExtensionStatus, PushType, Role, ServerFrame, TimelineKind
from halochat.documents import ChatSession, EventActor, ExtensionRequest
from halochat.domain.access import session_not_found
from halochat.notify.events import PartyNotice
from halochat.observability import timeline
from halochat.push import Push
from halochat.services import Services

PARTIES = (Role.CUSTOMER, Role.MITRA)


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


def push_to_mitra(
    session: ChatSession, type_: PushType, title: str, body: str, **data: object
) -> Push:
    """A push for the Mitra about the session's customer, also named as customer_id/_name."""
    return session_push(
        session,
        Role.MITRA,
        type_,
        title,
        body,
        customer_id=str(session.customer_id),
        customer_name=session.customer_name,
        **data,
    )


def party_notice(
    session: ChatSession,
    role: Role,
    type_: ServerFrame,
    data: dict[str, Any],
    push: Push | None = None,
) -> PartyNotice:
    """`type_` for one party: the session id, `data`, and the session as that party sees it."""
    return PartyNotice(session, role, type_, {"session_id": str(session.id), **data}, push)


def other_name(session: ChatSession, role: Role) -> str:
    return session.other_party(role)[1] or ""


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
