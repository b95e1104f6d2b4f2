"""A customer's chat request: the (mocked, paid) transaction and the session in PAIRING,
offered to every available Mitra.

Races are settled by the database, not by locks, so they hold across processes:
- the unique sparse index on Transaction.free_trial_customer_id allows one live free trial
  per customer (a voided one unsets the field, so the customer may try again);
- the unique sparse index on ChatSession.open_customer_id allows one open session per customer.
"""

from datetime import timedelta

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from halochat.constants import (
    ChoiceKind,
    ErrorCode,
    Role,
    ServerFrame,
    TimelineKind,
    TransactionKind,
    TransactionStatus,
)
from halochat.documents import AppConfig, ChatSession, TierSnapshot, Transaction, User
from halochat.documents.common import utcnow
from halochat.domain.app_config import require_config, tier_terms
from halochat.domain.pairing.offers import (
    free_trial_cooldown,
    free_trial_eligible,
    offer_to,
    pairing_status,
)
from halochat.domain.state_machine import enter
from halochat.domain.transactions import new_transaction
from halochat.errors import ApiError
from halochat.notify.events import UserNotice
from halochat.observability import timeline
from halochat.rate_limits import Action, rate_limited
from halochat.services import Services


def session_already_open(session_id: object) -> ApiError:
    return ApiError(
        409,
        ErrorCode.SESSION_ALREADY_OPEN,
        "you already have an open session",
        {"session_id": str(session_id)},
    )


def free_trial_unavailable() -> ApiError:
    return ApiError(409, ErrorCode.FREE_TRIAL_UNAVAILABLE, "the free trial is not available")


async def _open_session_id(customer_id: PydanticObjectId) -> PydanticObjectId | None:
    raw = await ChatSession.get_pymongo_collection().find_one(
        {"open_customer_id": customer_id}, projection={"_id": 1}
    )
    return None if raw is None else raw["_id"]


async def _snapshot(
    services: Services,
    config: AppConfig,
    customer: User,
    choice: ChoiceKind,
    tier_id: str | None,
) -> TierSnapshot:
    if choice == ChoiceKind.FREE_TRIAL:
        if not await free_trial_eligible(config, customer.id):
            raise free_trial_unavailable()
        if (wait := await free_trial_cooldown(services, customer.id)) > 0:
            raise rate_limited(wait, "free-trial requests after a cancel")
        return TierSnapshot(
            kind=ChoiceKind.FREE_TRIAL,
            label="Free trial",
            minutes=config.free_trial_minutes,
            price=0,
        )
    tier = config.tier(tier_id or "")
    if tier is None:
        raise ApiError(404, ErrorCode.TIER_NOT_FOUND, f"no tier {tier_id!r}")
    return TierSnapshot(kind=ChoiceKind.TIER, **tier_terms(tier))


async def available_mitras() -> list[User]:
    return await User.find(
        {"role": Role.MITRA.value, "available": True, "disabled": {"$ne": True}}
    ).to_list()


async def request_chat(
    services: Services, customer: User, choice: ChoiceKind, tier_id: str | None
) -> tuple[ChatSession, Transaction]:
    """Records the (mocked, paid) transaction and creates the session in PAIRING, offered to
    every available Mitra. Any rejection leaves nothing stored."""
    await services.rate_limits.hit(Action.CHAT_REQUEST, customer.id)
    if (open_id := await _open_session_id(customer.id)) is not None:
        raise session_already_open(open_id)
    config = await require_config(services.settings)
    snapshot = await _snapshot(services, config, customer, choice, tier_id)
    mitras = await available_mitras()
    now = utcnow()
    session_id = PydanticObjectId()
    free_trial = choice == ChoiceKind.FREE_TRIAL
    txn = new_transaction(
        customer.id,
        session_id,
        TransactionKind.FREE_TRIAL if free_trial else TransactionKind.TIER,
        snapshot,
        TransactionStatus.PAID,
        free_trial_customer_id=customer.id if free_trial else None,
    )
    try:
        await txn.insert()
    except DuplicateKeyError as exc:  # a concurrent free-trial request won
        raise free_trial_unavailable() from exc
    session = ChatSession(
        id=session_id,
        customer_id=customer.id,
        customer_name=customer.display_name,
        tier=snapshot,
        transaction_ids=[txn.id],
        open_customer_id=customer.id,
        offered_to=[m.id for m in mitras],
        pairing_deadline=now + timedelta(seconds=config.pairing_timeout_seconds),
    )
    try:
        await session.insert()
    except DuplicateKeyError as exc:  # a concurrent request opened a session first
        await txn.delete()
        open_id = await _open_session_id(customer.id)
        raise session_already_open(open_id) from exc

    timeline.record(
        session.id,
        TimelineKind.SESSION_CREATED,
        timeline.actor_of(customer),
        {
            "kind": snapshot.kind.value,
            "tier_id": snapshot.tier_id,
            "minutes": snapshot.minutes,
            "price": snapshot.price,
            "offered_to_count": len(mitras),
        },
    )
    await enter(services, session)  # the pairing timeout
    for mitra in mitras:
        offer_to(services, session, mitra.id)
    status = UserNotice(customer.id, ServerFrame.PAIRING_STATUS, pairing_status(session))
    services.notifier.publish(status)
    return session, txn
