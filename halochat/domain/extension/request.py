"""The customer's side of an expired session (DESIGN.md): ask for more time with a tier
(EXPIRED -> EXTENSION_PENDING) or decline (EXPIRED -> CLOSING). What entering those states
arms and announces is declared in halochat/domain/state_machine.py.
"""

import uuid

from beanie import PydanticObjectId

from halochat.constants import (
    EndReason,
    ErrorCode,
    Role,
    TimelineKind,
)
from halochat.documents import ChatSession, ExtensionRequest, User
from halochat.documents.common import utcnow
from halochat.domain.access import invalid_state, participant_session
from halochat.domain.app_config import require_config, tier_terms
from halochat.domain.session_events import (
    current_session,
    dump_extension,
    grace_fields,
)
from halochat.domain.state_machine import Trigger, guard, transition
from halochat.errors import ApiError
from halochat.observability import timeline
from halochat.services import Services


async def request_extension(
    services: Services, customer: User, session_id: PydanticObjectId, tier_id: str
) -> ChatSession:
    """EXPIRED -> EXTENSION_PENDING with the chosen tier; the Mitra is asked to confirm."""
    session, _ = await participant_session(customer, session_id, Role.CUSTOMER)
    guard(session, Trigger.REQUEST_EXTENSION, "request an extension")
    config = await require_config(services.settings)
    tier = config.tier(tier_id)
    if tier is None:
        raise ApiError(404, ErrorCode.TIER_NOT_FOUND, f"no tier {tier_id!r}")
    ext = ExtensionRequest(id=uuid.uuid4().hex, **tier_terms(tier))
    # The Mitra is asked to confirm on entering EXTENSION_PENDING (entry_events.py).
    pending = await transition(
        services,
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
    return pending


async def decline_extension(
    services: Services, customer: User, session_id: PydanticObjectId
) -> ChatSession:
    """The customer does not extend: EXPIRED -> CLOSING (fresh grace for the closures)."""
    session, _ = await participant_session(customer, session_id, Role.CUSTOMER)
    guard(session, Trigger.DECLINE_EXTENSION, "decline the extension")
    closing = await transition(
        services,
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
    return closing
