"""Connects Beanie to MongoDB (real or embedded) through pymongo's async client."""

from collections.abc import Sequence

from beanie import init_beanie
from pymongo import AsyncMongoClient, monitoring

from halochat.documents import ALL_DOCUMENTS


def make_client(
    uri: str, event_listeners: Sequence[monitoring.CommandListener] = ()
) -> AsyncMongoClient:
    # tz_aware: datetimes come back UTC-aware, matching what we store.
    return AsyncMongoClient(
        uri, tz_aware=True, serverSelectionTimeoutMS=10_000, event_listeners=event_listeners
    )


async def init_db(client: AsyncMongoClient, db_name: str) -> None:
    """Registers the documents and creates their indexes (idempotent)."""
    await init_beanie(database=client[db_name], document_models=ALL_DOCUMENTS)


async def ping(client: AsyncMongoClient) -> bool:
    try:
        await client.admin.command("ping")
    except Exception:
        return False
    return True
