from datetime import datetime

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from halochat.constants import ChoiceKind, ExtensionStatus, Role, SessionState
from halochat.documents.common import utcnow


class TierSnapshot(BaseModel):
    """What the customer bought, frozen at request time (config may change later)."""

    kind: ChoiceKind
    tier_id: str | None = None
    label: str
    minutes: int
    price: int = 0
    currency: str = "IDR"


class ExtensionRequest(BaseModel):
    id: str
    tier_id: str
    label: str
    minutes: int
    price: int
    currency: str = "IDR"
    status: ExtensionStatus = ExtensionStatus.PENDING
    requested_at: datetime = Field(default_factory=utcnow)
    answered_at: datetime | None = None
    transaction_id: PydanticObjectId | None = None


class Closure(BaseModel):
    text: str
    at: datetime = Field(default_factory=utcnow)


class Closures(BaseModel):
    customer: Closure | None = None
    mitra: Closure | None = None

    def of(self, role: Role) -> Closure | None:
        return self.customer if role == Role.CUSTOMER else self.mitra


class Watermark(BaseModel):
    """Highest seq of the *other* party's messages this participant's device has
    received (delivered) and displayed (read). Only ever moves forward ($max)."""

    delivered: int = 0
    read: int = 0


class Watermarks(BaseModel):
    customer: Watermark = Field(default_factory=Watermark)
    mitra: Watermark = Field(default_factory=Watermark)


class ChatSession(Document):
    customer_id: PydanticObjectId
    customer_name: str
    mitra_id: PydanticObjectId | None = None
    mitra_name: str | None = None
    state: SessionState = SessionState.PAIRING
    tier: TierSnapshot
    transaction_ids: list[PydanticObjectId] = Field(default_factory=list)
    # Present only while the session is open: a unique sparse index enforces
    # "a customer holds at most one open session" atomically, across processes.
    open_customer_id: PydanticObjectId | None = None
    # Mitras the request was offered to (to withdraw the offers later).
    offered_to: list[PydanticObjectId] = Field(default_factory=list)

    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    pairing_deadline: datetime | None = None
    started_at: datetime | None = None
    ends_at: datetime | None = None
    warned_for: datetime | None = None  # the ends_at the 1-minute warning was sent for
    grace_deadline: datetime | None = None
    ended_at: datetime | None = None  # when chatting stopped (expiry or end early)
    completed_at: datetime | None = None
    end_reason: str | None = None

    extension: ExtensionRequest | None = None
    extensions: list[ExtensionRequest] = Field(default_factory=list)
    closures: Closures = Field(default_factory=Closures)

    last_seq: int = 0  # per-session message counter
    watermarks: Watermarks = Field(default_factory=Watermarks)

    def role_of(self, user_id: PydanticObjectId) -> Role | None:
        if user_id == self.customer_id:
            return Role.CUSTOMER
        if self.mitra_id is not None and user_id == self.mitra_id:
            return Role.MITRA
        return None

    def other_party(self, role: Role) -> tuple[PydanticObjectId | None, str | None]:
        if role == Role.CUSTOMER:
            return self.mitra_id, self.mitra_name
        return self.customer_id, self.customer_name

    class Settings:
        name = "sessions"
        keep_nulls = False
        indexes = [
            IndexModel([("open_customer_id", ASCENDING)], unique=True, sparse=True),
            IndexModel([("customer_id", ASCENDING), ("state", ASCENDING)]),
            IndexModel([("mitra_id", ASCENDING), ("state", ASCENDING)]),
            # The sweeper's overdue queries (halochat/domain/sweeper.py), one per deadline;
            # (state, ends_at) also serves queries on state alone.
            IndexModel([("state", ASCENDING), ("ends_at", ASCENDING)]),
            IndexModel([("state", ASCENDING), ("grace_deadline", ASCENDING)]),
            IndexModel([("state", ASCENDING), ("pairing_deadline", ASCENDING)]),
            IndexModel([("customer_id", ASCENDING), ("completed_at", DESCENDING)]),
            IndexModel([("mitra_id", ASCENDING), ("completed_at", DESCENDING)]),
            IndexModel([("completed_at", ASCENDING)]),
            IndexModel([("created_at", ASCENDING)]),  # export date filters
        ]
