"""Server processes on this database and the single-process lease (docs/scaling.md).

Both are written only through halochat.cluster.membership, with the database's clock
(`$$NOW`), so hosts whose clocks differ still agree on who is alive.
"""

from datetime import datetime
from enum import StrEnum

from beanie import Document
from pydantic import Field
from pymongo import ASCENDING, IndexModel

# Dead members' documents are removed by MongoDB's TTL monitor a day after their last
# heartbeat: housekeeping only. Liveness is always decided by comparing heartbeat_at with
# the lease TTL (the embedded store runs no TTL monitor).
MEMBER_RETENTION_SECONDS = 24 * 3600
# The one lease document of a database.
LEASE_ID = "database"


class ProcessMode(StrEnum):
    SINGLE = "single"  # HALOCHAT_NATS_URL unset: the only process on its database
    CLUSTER = "cluster"  # HALOCHAT_NATS_URL set: one of several, joined by the bus (issue 13)


class ProcessMember(Document):
    """One running server process; heartbeat_at is renewed every lease heartbeat."""

    id: str = Field(description="a uuid drawn at start-up")  # type: ignore[assignment]
    host: str  # hostname, for people
    pid: int
    # hostname|boot id|pid namespace: equal only when `pid` can be checked from here.
    pid_space: str
    bind: str  # listen address and port
    mode: ProcessMode
    started_at: datetime
    heartbeat_at: datetime

    class Settings:
        name = "processes"
        indexes = [
            IndexModel([("heartbeat_at", ASCENDING)], expireAfterSeconds=MEMBER_RETENTION_SECONDS),
        ]


class DatabaseLease(Document):
    """Who may serve this database. In single mode `holder` is the one process; a cluster
    holds it collectively (holder None, renewed by every member). The fields after `holder`
    describe the process that last claimed or renewed it, for the refusal message."""

    id: str = LEASE_ID  # type: ignore[assignment]
    mode: ProcessMode
    holder: str | None
    host: str
    pid: int
    pid_space: str
    bind: str
    started_at: datetime
    heartbeat_at: datetime

    class Settings:
        name = "leases"
