"""The Control Center configuration (app_config): defaults, read, validated update."""

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from pymongo.errors import DuplicateKeyError

from halochat.config import Settings
from halochat.documents import AppConfig, ConfigValues, Tier
from halochat.documents.app_config import CONFIG_KEY
from halochat.documents.common import utcnow

# Realistic IDR tiers; prices are whole rupiah.
DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier(id="15m", label="15 menit", minutes=15, price=15_000),
    Tier(id="30m", label="30 menit", minutes=30, price=27_000),
    Tier(id="60m", label="60 menit", minutes=60, price=50_000),
)
# Developer tiers: never in the default configuration, only where `halochat seed` (or an
# admin) puts them (set_test_tiers).
TEST_TIERS: tuple[Tier, ...] = (
    Tier(id="test-1m", label="1 menit (test)", minutes=1, price=1_000, test=True),
)


def default_values(settings: Settings) -> ConfigValues:
    return ConfigValues(
        tiers=list(DEFAULT_TIERS),
        free_trial_enabled=True,
        free_trial_minutes=5,
        pairing_timeout_seconds=settings.pairing_timeout_seconds,
    )


async def get_config() -> AppConfig | None:
    return await AppConfig.find_one(AppConfig.key == CONFIG_KEY)


async def ensure_config(settings: Settings) -> tuple[AppConfig, bool]:
    """Returns the configuration, creating the default one if there is none (idempotent,
    race-safe through the unique key). The bool says whether it was created now."""
    existing = await get_config()
    if existing is not None:
        return existing, False
    doc = AppConfig(**default_values(settings).model_dump())
    try:
        await doc.insert()
    except DuplicateKeyError:
        existing = await get_config()
        assert existing is not None
        return existing, False
    return doc, True


async def require_config(settings: Settings) -> AppConfig:
    config, _ = await ensure_config(settings)
    return config


# Events that fire in bursts (thousands of expiries a minute) only show the configuration:
# they share one read at most this old instead of one read each.
RECENT_SECONDS = 1.0


@dataclass
class _Recent:
    read_at: float = -math.inf
    read: asyncio.Future[AppConfig] | None = None


_recent = _Recent()


async def recent_config(settings: Settings) -> AppConfig:
    """The configuration as of at most RECENT_SECONDS ago (fresh after an update here);
    concurrent callers share one read."""
    now = time.monotonic()
    read = _recent.read
    stale = now - _recent.read_at > RECENT_SECONDS
    failed = read is not None and read.done() and (read.cancelled() or read.exception() is not None)
    if read is None or stale or failed:
        read = _recent.read = asyncio.ensure_future(require_config(settings))
        _recent.read_at = now
    return await asyncio.shield(read)


async def replace_config(settings: Settings, values: ConfigValues) -> AppConfig:
    """Replaces the editable values as a whole; applies to new requests at once."""
    config = await require_config(settings)
    await AppConfig.get_pymongo_collection().update_one(
        {"_id": config.id},
        {
            "$set": {**values.model_dump(mode="python"), "updated_at": utcnow()},
            "$inc": {"version": 1},
        },
    )
    updated = await get_config()
    assert updated is not None
    _recent.read = None
    return updated


async def update_config(settings: Settings, changes: dict[str, Any]) -> AppConfig:
    """Changes only the given editable values (PATCH); the result is validated as a whole
    (ValidationError: 422) before anything is written."""
    config = await require_config(settings)
    ConfigValues.model_validate({**config.values().model_dump(mode="python"), **changes})
    if not changes:
        return config
    # $set of the given fields only: a concurrent change to another field is not undone.
    await AppConfig.get_pymongo_collection().update_one(
        {"_id": config.id},
        {"$set": {**changes, "updated_at": utcnow()}, "$inc": {"version": 1}},
    )
    updated = await get_config()
    assert updated is not None
    _recent.read = None
    return updated


async def set_test_tiers(settings: Settings, enabled: bool) -> AppConfig:
    """Adds (or resets) the developer test tiers, or removes them; other tiers untouched."""
    config = await require_config(settings)
    tiers = [t for t in config.tiers if not t.test and t.id not in {x.id for x in TEST_TIERS}]
    if enabled:
        tiers += list(TEST_TIERS)
    values = config.values().model_copy(update={"tiers": tiers})
    return await replace_config(settings, ConfigValues.model_validate(values.model_dump()))


TIER_FIELDS = {"id", "label", "minutes", "price", "currency"}  # what buying a tier means


def tier_view(config: AppConfig) -> list[dict[str, Any]]:
    """The tiers as a customer is offered them (chat options, extension offer)."""
    return [t.model_dump(include=TIER_FIELDS) for t in config.tiers]


def tier_terms(tier: Tier) -> dict[str, Any]:
    """A tier's terms as a purchase records them (session snapshot, extension request)."""
    terms = tier.model_dump(include=TIER_FIELDS)
    return {"tier_id": terms.pop("id"), **terms}
