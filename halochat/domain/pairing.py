"""The first half of the session lifecycle (DESIGN.md): offer, request, accept, timeout,
cancel.

Races are settled by the database, not by locks, so they hold across processes:
- the unique sparse index on Transaction.free_trial_customer_id allows one live free trial
  per customer (a voided one unsets the field, so the customer may try again);
- the unique sparse index on ChatSession.open_customer_id allows one open session per customer;
- accept / timeout / cancel are conditional transitions from PAIRING: exactly one wins.
"""

import logging
import math
from datetime import timedelta
from typing import Any

from beanie import PydanticObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from halochat.constants import (
    ChoiceKind,
    EndReason,
    ErrorCode,
    OptionsKind,
    PairingReason,
    PushType,
    Role,
    ServerFrame,
    SessionState,
    TimelineKind,
    TimerKind,
    TransactionKind,
    TransactionStatus,
)
from halochat.documents import AppConfig, ChatSession, TierSnapshot, Transaction, User
from halochat.documents.common import utcnow
from halochat.domain import lifecycle
from halochat.domain.access import invalid_state, participant_session, session_not_found
from halochat.domain.app_config import require_config
from halochat.domain.session_events import tell
from halochat.domain.state_machine import Trigger, transition
from halochat.errors import ApiError
from halochat.notify.events import PartyNotice, UserNotice
from halochat.observability import timeline
from halochat.push import Push
from halochat.rate_limits import Action, rate_limited
from halochat.services import Services

log = logging.getLogger(__name__)


# --- what the customer is offered ---------------------------------------------------------


async def has_transaction(customer_id: PydanticObjectId) -> bool:
    """Any non-void transaction (a free trial counts); void ones are failed pairings."""
    found = await Transaction.get_pymongo_collection().find_one(
        {"customer_id": customer_id, "status": {"$ne": TransactionStatus.VOID.value}},
        projection={"_id": 1},
    )
    return found is not None


async def free_trial_eligible(config: AppConfig, customer_id: PydanticObjectId) -> bool:
    return config.free_trial_enabled and not await has_transaction(customer_id)


def tier_view(config: AppConfig) -> list[dict[str, Any]]:
    return [
        {
            "id": t.id,
            "label": t.label,
            "minutes": t.minutes,
            "price": t.price,
            "currency": t.currency,
        }
        for t in config.tiers
    ]


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


def notify(
    services: Services,
    user_id: PydanticObjectId | None,
    type_: ServerFrame,
    data: dict[str, Any],
    push: Push | None = None,
) -> None:
    services.notifier.publish(UserNotice(user_id, type_, data, push))


# --- chat request ------------------------------------------------------------------------


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
    return TierSnapshot(
        kind=ChoiceKind.TIER,
        tier_id=tier.id,
        label=tier.label,
        minutes=tier.minutes,
        price=tier.price,
        currency=tier.currency,
    )


async def available_mitras() -> list[User]:
    return await User.find(
        {"role": Role.MITRA.value, "available": True, "disabled": {"$ne": True}}
    ).to_list()


def transaction_view(txn: Transaction) -> dict[str, Any]:
    return {
        "id": str(txn.id),
        "session_id": str(txn.session_id),
        "kind": txn.kind.value,
        "tier_id": txn.tier_id,
        "minutes": txn.minutes,
        "price": txn.price,
        "currency": txn.currency,
        "status": txn.status.value,
        "created_at": txn.created_at,
    }


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
    txn = Transaction(
        customer_id=customer.id,
        session_id=session_id,
        kind=TransactionKind.FREE_TRIAL if free_trial else TransactionKind.TIER,
        tier_id=snapshot.tier_id,
        minutes=snapshot.minutes,
        price=snapshot.price,
        currency=snapshot.currency,
        status=TransactionStatus.PAID,
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
    arm_pairing_timer(services, session)
    for mitra in mitras:
        offer_to(services, session, mitra.id)
    notify(services, customer.id, ServerFrame.PAIRING_STATUS, pairing_status(session))
    return session, txn


def arm_pairing_timer(services: Services, session: ChatSession) -> None:
    assert session.pairing_deadline is not None
    services.timers.at(
        session.id,
        TimerKind.PAIRING_TIMEOUT,
        session.pairing_deadline,
        pairing_timeout,
        services,
        session.id,
    )


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
    push = Push(
        type=PushType.CHAT_REQUEST,
        session_id=str(session.id),
        title="New chat request",
        body=f"{session.customer_name} wants to chat for {session.tier.minutes} minutes",
        data={
            "customer_id": str(session.customer_id),
            "customer_name": session.customer_name,
            "other_id": str(session.customer_id),
            "other_name": session.customer_name,
            "other_role": Role.CUSTOMER.value,
            "state": session.state.value,
            "minutes": session.tier.minutes,
            "label": session.tier.label,
            "pairing_deadline": session.pairing_deadline.isoformat()
            if session.pairing_deadline
            else None,
        },
    )
    notify(services, mitra_id, ServerFrame.CHAT_REQUEST, chat_request_data(session), push)


# --- accept ------------------------------------------------------------------------------


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
    if won is None:
        current = await ChatSession.get(session_id)
        if current is None:
            raise session_not_found()
        if current.mitra_id == mitra.id:
            return current  # a retry of this Mitra's own successful accept
        if current.mitra_id is not None:
            raise request_taken()
        raise invalid_state(current, "accept")

    services.timers.cancel(won.id, TimerKind.PAIRING_TIMEOUT)
    push = Push(
        type=PushType.PAIRING_RESULT,
        session_id=str(won.id),
        title="Your Bestie is here",
        body=f"{mitra.display_name} accepted your chat",
        data={
            "result": SessionState.ACTIVE.value,
            "state": SessionState.ACTIVE.value,
            "mitra_id": str(mitra.id),
            "mitra_name": mitra.display_name,
            "other_id": str(mitra.id),
            "other_name": mitra.display_name,
            "other_role": Role.MITRA.value,
        },
    )
    # session.started carries only the session (no session_id beside it, docs/protocol.md).
    services.notifier.publish_all(
        [
            PartyNotice(won, Role.CUSTOMER, ServerFrame.SESSION_STARTED, {}, push),
            PartyNotice(won, Role.MITRA, ServerFrame.SESSION_STARTED, {}),
        ]
    )
    taken = {"session_id": str(won.id)}
    for other in won.offered_to:
        if other != mitra.id:
            notify(services, other, ServerFrame.REQUEST_TAKEN, taken)
    await lifecycle.on_session_active(services, won)
    return won


# --- timeout and cancel ------------------------------------------------------------------


async def void_transactions(session: ChatSession) -> None:
    """Voids the session's transactions; a voided free trial may be requested again."""
    await Transaction.get_pymongo_collection().update_many(
        {"_id": {"$in": session.transaction_ids}, "status": {"$ne": TransactionStatus.VOID.value}},
        {
            "$set": {"status": TransactionStatus.VOID.value, "updated_at": utcnow()},
            "$unset": {"free_trial_customer_id": ""},
        },
    )


def withdraw_offers(services: Services, session: ChatSession, reason: PairingReason) -> None:
    data = {"session_id": str(session.id), "reason": reason.value}
    for mitra_id in session.offered_to:
        notify(services, mitra_id, ServerFrame.REQUEST_WITHDRAWN, data)


async def pairing_timeout(services: Services, session_id: PydanticObjectId) -> None:
    """Timer job: no accept before the deadline -> UNMATCHED (no-op if already decided)."""
    failed = await transition(
        session_id,
        Trigger.PAIRING_TIMEOUT,
        set_fields={"end_reason": EndReason.PAIRING_TIMEOUT.value},
        extra_filter={"pairing_deadline": {"$lte": utcnow()}},
    )
    if failed is None:
        return
    await void_transactions(failed)
    tell(
        services,
        failed,
        Role.CUSTOMER,
        ServerFrame.PAIRING_FAILED,
        {"session_id": str(failed.id), "reason": PairingReason.TIMEOUT.value},
        Push(
            type=PushType.PAIRING_RESULT,
            session_id=str(failed.id),
            title="No Bestie available",
            body="Nobody accepted your chat in time. Please try again.",
            data={
                "result": SessionState.UNMATCHED.value,
                "state": SessionState.UNMATCHED.value,
                "reason": PairingReason.TIMEOUT.value,
            },
        ),
    )
    withdraw_offers(services, failed, PairingReason.TIMEOUT)


async def cancel(services: Services, customer: User, session_id: PydanticObjectId) -> ChatSession:
    await services.rate_limits.hit(Action.CHAT_CANCEL, customer.id)
    session, _ = await participant_session(customer, session_id, Role.CUSTOMER)
    cancelled = await transition(
        session_id,
        Trigger.CANCEL,
        set_fields={"end_reason": EndReason.CANCELLED.value},
        actor=timeline.actor_of(customer),
    )
    if cancelled is None:
        current = await ChatSession.get(session_id)
        raise invalid_state(current or session, "cancel")
    services.timers.cancel(cancelled.id, TimerKind.PAIRING_TIMEOUT)
    await void_transactions(cancelled)
    withdraw_offers(services, cancelled, PairingReason.CANCELLED)
    tell(
        services,
        cancelled,
        Role.CUSTOMER,
        ServerFrame.SESSION_CANCELLED,
        {"session_id": str(cancelled.id)},
    )
    return cancelled


# --- Mitra availability and open requests ------------------------------------------------


async def open_requests_for(mitra_id: PydanticObjectId) -> list[ChatSession]:
    return (
        await ChatSession.find({"state": SessionState.PAIRING.value, "offered_to": mitra_id})
        .sort("created_at")
        .to_list()
    )


async def set_availability(services: Services, mitra: User, available: bool) -> User:
    """Going available offers the requests still pairing; going away drops this Mitra's
    offers (so GET /v1/mitra/requests lists exactly what the Mitra can accept). The
    customers concerned get a fresh `pairing.status`."""
    await User.get_pymongo_collection().update_one(
        {"_id": mitra.id}, {"$set": {"available": available}}
    )
    mitra.available = available
    pairing = {"state": SessionState.PAIRING.value}
    if available:
        query, change = {**pairing, "offered_to": {"$ne": mitra.id}}, "$addToSet"
    else:
        query, change = {**pairing, "offered_to": mitra.id}, "$pull"
    coll = ChatSession.get_pymongo_collection()
    for session in await ChatSession.find(query).to_list():
        raw = await coll.find_one_and_update(
            {"_id": session.id, **query},
            {change: {"offered_to": mitra.id}},
            return_document=ReturnDocument.AFTER,
        )
        if raw is None:  # decided or changed meanwhile
            continue
        updated = ChatSession.model_validate(raw)
        if available:
            offer_to(services, updated, mitra.id)
        else:
            notify(
                services,
                mitra.id,
                ServerFrame.REQUEST_WITHDRAWN,
                {"session_id": str(updated.id), "reason": PairingReason.MITRA_UNAVAILABLE.value},
            )
        notify(services, updated.customer_id, ServerFrame.PAIRING_STATUS, pairing_status(updated))
    return mitra


async def get_session(user: User, session_id: PydanticObjectId) -> tuple[ChatSession, Role]:
    return await participant_session(user, session_id)


# --- restart recovery --------------------------------------------------------------------


async def reconcile_pairing(services: Services, session: ChatSession) -> None:
    """Brings one PAIRING session in line with the clock (start-up recovery and the sweeper):
    past its deadline it fails, else its timeout timer is (re)armed."""
    deadline = session.pairing_deadline
    if deadline is None or deadline <= utcnow():
        await pairing_timeout(services, session.id)
    else:
        arm_pairing_timer(services, session)


async def recover_pairing(services: Services) -> None:
    """Start-up: fail PAIRING sessions past their deadline, re-arm the others' timeouts."""
    sessions = await ChatSession.find({"state": SessionState.PAIRING.value}).to_list()
    for session in sessions:
        await reconcile_pairing(services, session)
    if sessions:
        log.info("recovered %d pairing session(s)", len(sessions))
