from datetime import datetime

from beanie import Document
from pydantic import BaseModel, Field, field_validator
from pymongo import ASCENDING, IndexModel

from halochat.documents.common import utcnow

CONFIG_KEY = "control_center"


class Tier(BaseModel):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    label: str = Field(min_length=1, max_length=100)
    minutes: int = Field(gt=0, le=24 * 60)
    price: int = Field(gt=0, description="Price in the currency's smallest unit (IDR has none).")
    currency: str = Field(default="IDR", min_length=3, max_length=3)
    # Developer test tiers (the 1-minute tier); `scripts/seed.py --test-tiers` manages them.
    test: bool = False


class ConfigValues(BaseModel):
    """The editable part of the Control Center configuration, validated as a whole."""

    tiers: list[Tier] = Field(min_length=1)
    free_trial_enabled: bool = True
    free_trial_minutes: int = Field(default=5, gt=0, le=24 * 60)
    pairing_timeout_seconds: int = Field(default=120, gt=0, le=3600)

    @field_validator("tiers")
    @classmethod
    def _unique_tier_ids(cls, tiers: list[Tier]) -> list[Tier]:
        # A field validator, so the 422 names the field ("tiers").
        ids = [t.id for t in tiers]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"tier ids must be unique (repeated: {', '.join(dupes)})")
        return tiers


class AppConfig(Document, ConfigValues):
    """The single Control Center document (key == CONFIG_KEY)."""

    key: str = CONFIG_KEY
    version: int = 1
    updated_at: datetime = Field(default_factory=utcnow)

    def values(self) -> ConfigValues:
        return ConfigValues.model_validate(self.model_dump(include=set(ConfigValues.model_fields)))

    def tier(self, tier_id: str) -> Tier | None:
        return next((t for t in self.tiers if t.id == tier_id), None)

    class Settings:
        name = "app_config"
        indexes = [IndexModel([("key", ASCENDING)], unique=True)]
