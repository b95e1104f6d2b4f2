from datetime import datetime

from beanie import Document, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from halochat.constants import TransactionKind, TransactionStatus
from halochat.documents.common import utcnow


class Transaction(Document):
    customer_id: PydanticObjectId
    session_id: PydanticObjectId
    kind: TransactionKind
    tier_id: str | None = None
    minutes: int
    price: int = 0
    currency: str = "IDR"
    status: TransactionStatus
    # Set only on a live free-trial transaction; a unique sparse index makes a second
    # free trial for the same customer impossible even under concurrent requests.
    free_trial_customer_id: PydanticObjectId | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "transactions"
        keep_nulls = False
        indexes = [
            IndexModel([("customer_id", ASCENDING), ("created_at", DESCENDING)]),
            IndexModel([("session_id", ASCENDING)]),
            IndexModel([("created_at", ASCENDING)]),  # start-up orphan check
            IndexModel([("free_trial_customer_id", ASCENDING)], unique=True, sparse=True),
        ]
