"""Mitra availability: going available is offered the requests still pairing; going away
withdraws this Mitra's offers."""

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from halochat.constants import PairingReason, Role, ServerFrame, SessionState
from halochat.documents import ChatSession, User
from halochat.domain.access import participant_session
from halochat.domain.pairing.offers import offer_to, pairing_status
from halochat.notify.events import UserNotice
from halochat.services import Services


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
    publish = services.notifier.publish
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
            reason = PairingReason.MITRA_UNAVAILABLE.value
            withdrawn = {"session_id": str(updated.id), "reason": reason}
            publish(UserNotice(mitra.id, ServerFrame.REQUEST_WITHDRAWN, withdrawn))
        publish(
            UserNotice(updated.customer_id, ServerFrame.PAIRING_STATUS, pairing_status(updated))
        )
    return mitra


async def get_session(user: User, session_id: PydanticObjectId) -> tuple[ChatSession, Role]:
    return await participant_session(user, session_id)
