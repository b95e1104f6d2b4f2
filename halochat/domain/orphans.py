"""Transactions a crash left without their session (DESIGN.md: nothing stored by a request
that did not complete may count).

A chat request stores its transaction before the session, and an accepted extension stores
its transaction before the session update that points at it, so that a rejection can delete
it again. A crash between the two writes leaves a transaction no session refers to: a
free trial would then be "used" forever. At start-up such transactions are voided (and a
free trial freed), as a failed pairing does.
"""

from datetime import timedelta

from beanie import PydanticObjectId

from halochat.constants import TransactionStatus
from halochat.documents import ChatSession, Transaction
from halochat.documents.common import utcnow

# Only a request in flight at the crash can leave an orphan; looking this far back covers a
# server that stayed down for a long time without scanning the whole collection.
LOOKBACK = timedelta(days=7)
# A request's two writes are milliseconds apart: anything younger may belong to a request
# another server process is serving right now.
SETTLE = timedelta(minutes=1)


async def void_orphan_transactions() -> int:
    """Voids live transactions created within LOOKBACK (and before SETTLE) that their
    session does not list; returns how many."""
    txns = Transaction.get_pymongo_collection()
    now = utcnow()
    recent = await txns.find(
        {
            "status": {"$ne": TransactionStatus.VOID.value},
            "created_at": {"$gte": now - LOOKBACK, "$lte": now - SETTLE},
        },
        projection={"session_id": 1},
    ).to_list(None)
    by_session: dict[PydanticObjectId, list[PydanticObjectId]] = {}
    for t in recent:
        by_session.setdefault(t["session_id"], []).append(t["_id"])
    orphans: list[PydanticObjectId] = []
    sessions = ChatSession.get_pymongo_collection()
    async for s in sessions.find(
        {"_id": {"$in": list(by_session)}}, projection={"transaction_ids": 1}
    ):
        listed = set(s.get("transaction_ids") or [])
        orphans += [t for t in by_session.pop(s["_id"]) if t not in listed]
    for missing_session in by_session.values():  # the session was never stored
        orphans += missing_session
    if not orphans:
        return 0
    result = await txns.update_many(
        {"_id": {"$in": orphans}, "status": {"$ne": TransactionStatus.VOID.value}},
        {
            "$set": {"status": TransactionStatus.VOID.value, "updated_at": utcnow()},
            "$unset": {"free_trial_customer_id": ""},
        },
    )
    return result.modified_count
