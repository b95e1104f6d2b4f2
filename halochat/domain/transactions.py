"""Transactions (DESIGN.md glossary): what a customer chose, and voiding them when a pairing
fails (so a free trial may be requested again)."""

from typing import Any

from beanie import PydanticObjectId

from halochat.constants import TransactionKind, TransactionStatus
from halochat.documents import ChatSession, ExtensionRequest, TierSnapshot, Transaction
from halochat.documents.common import utcnow


async def has_transaction(customer_id: PydanticObjectId) -> bool:
    """Any non-void transaction (a free trial counts); void ones are failed pairings."""
    found = await Transaction.get_pymongo_collection().find_one(
        {"customer_id": customer_id, "status": {"$ne": TransactionStatus.VOID.value}},
        projection={"_id": 1},
    )
    return found is not None


async def void_transactions(session: ChatSession) -> None:
    """Voids the session's transactions; a voided free trial may be requested again."""
    await Transaction.get_pymongo_collection().update_many(
        {"_id": {"$in": session.transaction_ids}, "status": {"$ne": TransactionStatus.VOID.value}},
        {
            "$set": {"status": TransactionStatus.VOID.value, "updated_at": utcnow()},
            "$unset": {"free_trial_customer_id": ""},
        },
    )


def new_transaction(
    customer_id: PydanticObjectId,
    session_id: PydanticObjectId,
    kind: TransactionKind,
    terms: TierSnapshot | ExtensionRequest,
    status: TransactionStatus,
    **extra: Any,
) -> Transaction:
    """A transaction for what the customer chose (a tier snapshot or an extension)."""
    return Transaction(
        customer_id=customer_id,
        session_id=session_id,
        kind=kind,
        tier_id=terms.tier_id,
        minutes=terms.minutes,
        price=terms.price,
        currency=terms.currency,
        status=status,
        **extra,
    )


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
