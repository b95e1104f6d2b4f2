"""What a customer is offered (tiers or the free trial) and what a Mitra is offered (chat
requests)."""

import math
from datetime import timedelta
from typing import Any

from beanie import PydanticObjectId

from halochat.constants import ChoiceKind, OptionsKind, PushType, ServerFrame, SessionState
from halochat.documents import AppConfig, ChatSession, User
from halochat.documents.common import utcnow
from halochat.domain.app_config import require_config, tier_view
from halochat.domain.session_events import push_to_mitra
from halochat.domain.transactions import has_transaction
from halochat.notify.events import UserNotice
from halochat.services import Services


async def free_trial_eligible(config: AppConfig, customer_id: PydanticObjectId) -> bool:
    return config.free_trial_enabled and not await has_transaction(customer_id)


async def free_trial_cooldown(services: Services, customer_id: PydanticObjectId) -> float:
    """Seconds until this customer may request the free trial again after cancelling a
    free-trial request (0: now). Stops request+cancel from cycling the free trial (and the
    Mitras' pushes); a request nobody accepted (UNMATCHED) gives the free trial back at once."""
    cooldown = services.settings.free_trial_cooldown_seconds
    if cooldown <= 0:
        return 0.0
    now = utcnow()
    last = await ChatSession.get_pymongo_collection().find_one(
        {
            "customer_id": customer_id,
            "state": SessionState.CANCELLED.value,
            "tier.kind": ChoiceKind.FREE_TRIAL.value,
            "updated_at": {"$gt": now - timedelta(seconds=cooldown)},
        },
        projection={"updated_at": 1},
        sort=[("updated_at", -1)],
    )
    if last is None:
        return 0.0
    cancelled_at = last["updated_at"]
    if cancelled_at.tzinfo is None:
        cancelled_at = cancelled_at.replace(tzinfo=now.tzinfo)
    return max(0.0, cooldown - (now - cancelled_at).total_seconds())


async def chat_options(services: Services, customer: User) -> dict[str, Any]:
    config = await require_config(services.settings)
    if await free_trial_eligible(config, customer.id):
        free_trial: dict[str, Any] = {"minutes": config.free_trial_minutes}
        if (wait := await free_trial_cooldown(services, customer.id)) > 0:
            free_trial["available_in_seconds"] = math.ceil(wait)
        return {"kind": OptionsKind.FREE_TRIAL.value, "free_trial": free_trial}
    return {"kind": OptionsKind.TIERS.value, "tiers": tier_view(config)}


def pairing_status(session: ChatSession) -> dict[str, Any]:
    return {
        "session_id": str(session.id),
        "state": session.state.value,
        "offered_to_count": len(session.offered_to),
        "pairing_deadline": session.pairing_deadline,
    }


def chat_request_data(session: ChatSession) -> dict[str, Any]:
    return {
        "session_id": str(session.id),
        "customer": {"id": str(session.customer_id), "name": session.customer_name},
        "kind": session.tier.kind.value,
        "label": session.tier.label,
        "minutes": session.tier.minutes,
        "pairing_deadline": session.pairing_deadline,
    }


def offer_to(services: Services, session: ChatSession, mitra_id: PydanticObjectId) -> None:
    """`chat.request` on the Mitra's sockets, or a push that opens this request."""
    deadline = session.pairing_deadline
    push = push_to_mitra(
        session,
        PushType.CHAT_REQUEST,
        "New chat request",
        f"{session.customer_name} wants to chat for {session.tier.minutes} minutes",
        minutes=session.tier.minutes,
        label=session.tier.label,
        pairing_deadline=deadline.isoformat() if deadline else None,
    )
    data = chat_request_data(session)
    services.notifier.publish(UserNotice(mitra_id, ServerFrame.CHAT_REQUEST, data, push))
