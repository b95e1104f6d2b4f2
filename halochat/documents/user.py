from datetime import datetime

from beanie import Document
from pydantic import Field
from pymongo import ASCENDING, IndexModel

from halochat.constants import Role
from halochat.documents.common import utcnow


class User(Document):
    role: Role
    display_name: str
    # Firebase uid when auth_mode=firebase; unique where present.
    auth_uid: str | None = None
    # Mitra availability: only available Mitras are offered chat requests.
    available: bool = False
    disabled: bool = False
    # Tokens issued at or before this instant are refused (admin "revoke tokens").
    tokens_valid_after: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "users"
        # auth_uid=None must be absent, not null: the unique sparse index counts nulls.
        keep_nulls = False
        indexes = [
            IndexModel([("auth_uid", ASCENDING)], unique=True, sparse=True),
            IndexModel([("role", ASCENDING), ("available", ASCENDING)]),
        ]
