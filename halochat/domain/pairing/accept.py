"""A Mitra accepts a chat request: the first to accept wins, atomically (one conditional
transition from PAIRING); what the parties and the other Mitras are told is declared with
the ACTIVE state (halochat/domain/entry_events.py)."""

from datetime import timedelta

from beanie import PydanticObjectId

from halochat.constants import ErrorCode
from halochat.documents import ChatSession, User
from halochat.documents.common import utcnow
from halochat.domain.access import invalid_state, session_not_found
from halochat.domain.state_machine import Trigger, transition
from halochat.errors import ApiError
from halochat.observability import timeline
from halochat.services import Services


def request_taken() -> ApiError:
    return ApiError(409, ErrorCode.REQUEST_TAKEN, "another Mitra already took this request")


async def accept(services: Services, mitra: User, session_id: PydanticObjectId) -> ChatSession:
    """The first Mitra to accept wins (one conditional update); the others get 409."""
    session = await ChatSession.get(session_id)
    if session is None or mitra.id not in session.offered_to:
        raise session_not_found()
    now = utcnow()
    ends_at = now + timedelta(seconds=session.tier.minutes * services.settings.minute_seconds)
    won = await transition(
        services,
        session_id,
        Trigger.ACCEPT,
        set_fields={
            "mitra_id": mitra.id,
            "mitra_name": mitra.display_name,
            "started_at": now,
            "ends_at": ends_at,
        },
        extra_filter={"offered_to": mitra.id},
        actor=timeline.actor_of(mitra),
    )
    if won is not None:
        return won
    current = await ChatSession.get(session_id)
    if current is None:
        raise session_not_found()
    if current.mitra_id == mitra.id:
        return current  # a retry of this Mitra's own successful accept
    if current.mitra_id is not None:
        raise request_taken()
    raise invalid_state(current, "accept")
