"""Connects Beanie to MongoDB (real or embedded) through pymongo's async client."""

from collections.abc import Sequence

from beanie import init_beanie
from pymongo import AsyncMongoClient, monitoring

from halochat.documents import ALL_DOCUMENTS

# A socket that stays silent this long is given up (a hung, not a refused, database).
SOCKET_TIMEOUT_SECONDS = 30.0


def make_client(
    uri: str,
    timeout_seconds: float = 10.0,
    event_listeners: Sequence[monitoring.CommandListener] = (),
) -> AsyncMongoClient:
    """tz_aware: datetimes come back UTC-aware, matching what we store. `timeout_seconds`
    bounds server selection and connecting, so a call to an unreachable database fails with
    ServerSelectionTimeoutError (answered 503, halochat/errors.py) instead of hanging."""
    timeout_ms = max(1, int(timeout_seconds * 1000))
    return AsyncMongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=int(max(SOCKET_TIMEOUT_SECONDS, timeout_seconds) * 1000),
        event_listeners=event_listeners,
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
