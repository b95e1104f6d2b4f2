from datetime import datetime

from beanie import Document
from pydantic import BaseModel, Field, field_validator
from pymongo import ASCENDING, IndexModel

from halochat.documents.common import utcnow
from halochat.inputs import Line

CONFIG_KEY = "control_center"
# A sensible ceiling, far inside int64: one billion in the currency's smallest unit.
MAX_PRICE = 1_000_000_000
MAX_FREE_TRIAL_MINUTES = 24 * 60
MAX_PAIRING_TIMEOUT_SECONDS = 3600
MAX_TIERS = 50


class Tier(BaseModel):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    label: Line = Field(max_length=100)
    minutes: int = Field(gt=0, le=24 * 60)
    price: int = Field(
        gt=0, le=MAX_PRICE, description="Price in the currency's smallest unit (IDR has none)."
    )
    currency: str = Field(default="IDR", pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    # Developer test tiers (the 1-minute tier); `halochat seed` manages them.
    test: bool = False


class ConfigValues(BaseModel):
    """The editable part of the Control Center configuration, validated as a whole."""

    tiers: list[Tier] = Field(min_length=1, max_length=MAX_TIERS)
    free_trial_enabled: bool = True
    free_trial_minutes: int = Field(default=5, gt=0, le=MAX_FREE_TRIAL_MINUTES)
    pairing_timeout_seconds: int = Field(default=120, gt=0, le=MAX_PAIRING_TIMEOUT_SECONDS)

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
