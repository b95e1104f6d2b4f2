"""The end of a request nobody took: the pairing timeout (UNMATCHED) and the customer's
cancel (CANCELLED). Both are conditional transitions from PAIRING, so exactly one of them,
or an accept, wins; entering either voids the transactions and withdraws the offers
(halochat/domain/state_machine.py ON_ENTER)."""

from beanie import PydanticObjectId

from halochat.constants import EndReason, Role, TimerKind
from halochat.documents import ChatSession, User
from halochat.documents.common import utcnow
from halochat.domain.access import invalid_state, participant_session
from halochat.domain.state_machine import Trigger, timer_job, transition
from halochat.observability import timeline
from halochat.rate_limits import Action
from halochat.services import Services


@timer_job(TimerKind.PAIRING_TIMEOUT)
async def pairing_timeout(services: Services, session_id: PydanticObjectId) -> None:
    """Timer job: no accept before the deadline -> UNMATCHED (no-op if already decided)."""
    await transition(
        services,
        session_id,
        Trigger.PAIRING_TIMEOUT,
        set_fields={"end_reason": EndReason.PAIRING_TIMEOUT.value},
        extra_filter={"pairing_deadline": {"$lte": utcnow()}},
    )


async def cancel(services: Services, customer: User, session_id: PydanticObjectId) -> ChatSession:
    await services.rate_limits.hit(Action.CHAT_CANCEL, customer.id)
    session, _ = await participant_session(customer, session_id, Role.CUSTOMER)
    cancelled = await transition(
        services,
        session_id,
        Trigger.CANCEL,
        set_fields={"end_reason": EndReason.CANCELLED.value},
        actor=timeline.actor_of(customer),
    )
    if cancelled is None:
        current = await ChatSession.get(session_id)
        raise invalid_state(current or session, "cancel")
    return cancelled
