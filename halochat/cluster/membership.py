"""Every server process registers itself on its database; without a bus it must be alone.

halochat keeps per-session state in memory (the seq counter's lock, the live-session cache,
timers, sockets), so two processes on one database without a bus between them would corrupt
sessions silently. At start-up a process therefore:

- registers a `processes` document (ProcessMember) and renews its heartbeat_at every
  `lease_heartbeat_seconds`;
- in single mode (HALOCHAT_NATS_URL unset) claims the `leases` document atomically: it
  succeeds only when there is no lease, or it is its own, or its heartbeat is older than
  `lease_ttl_seconds` (by the database's clock); two processes starting together: exactly
  one wins (Membership._claim). The loser refuses to start, naming the holder, unless the
  holder is on this machine and its pid is dead (taken over at once) or its heartbeat stops
  advancing while we watch (it expires after the TTL; taken over then).

A clean stop deletes the lease at once. A heartbeat that fails (database unreachable) is
retried; a heartbeat that finds the lease no longer its own (taken over, possible only after
the TTL passed without one, or released again since: gone) stops this process with exit
status LEASE_LOST, since another process may have served the database meanwhile.

Cluster mode (HALOCHAT_NATS_URL set) claims the lease for the cluster: any number of cluster
members, joined by the NATS bus (halochat/cluster/delivery.py), and no single-mode process.
See docs/scaling.md.
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

from pymongo.errors import DuplicateKeyError

from halochat.config import Settings
from halochat.documents.common import utcnow
from halochat.documents.process import LEASE_ID, DatabaseLease, ProcessMember, ProcessMode
from halochat.processes import pid_alive

log = logging.getLogger(__name__)


class ExitCode(IntEnum):
    """Exit statuses of `python -m halochat serve` (documented in docs/operations.md)."""

    REFUSED = 3  # would share the database without a bus (or with a process of the other mode)
    LEASE_LOST = 4  # another process took the lease over while this one was running


class StartRefused(Exception):
    """Raised by the start hook; halochat.server logs the message and exits REFUSED."""

    exit_code = ExitCode.REFUSED


def pid_space() -> str:
    """Identifies the set of pids this process can check: the hostname, plus on Linux the
    boot and the pid namespace (two containers may share a hostname, never a namespace)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "|".join(parts)


def _stale(ttl_seconds: float) -> dict[str, Any]:
    """Matches a lease whose last heartbeat is older than the TTL, by the database's clock."""
    limit = {"$subtract": ["$$NOW", int(ttl_seconds * 1000)]}
    return {"$expr": {"$lt": ["$heartbeat_at", limit]}}


def describe(lease: dict[str, Any]) -> str:
    beat: datetime = lease["heartbeat_at"]
    age = (utcnow() - beat).total_seconds()
    return (
        f"process {lease.get('holder') or '(cluster)'} in {lease['mode']} mode on host "
        f"{lease['host']}, pid {lease['pid']}, listening on {lease['bind']}, started "
        f"{lease['started_at']:%Y-%m-%d %H:%M:%S} UTC, last heartbeat "
        f"{beat:%Y-%m-%d %H:%M:%S} UTC ({age:.1f} s ago)"
    )


class Membership:
    """This process's registration and lease; `join` at start-up, `leave` at a clean stop."""

    def __init__(self, settings: Settings, on_lost: Callable[[], None]) -> None:
        self.settings = settings
        self.mode = ProcessMode.CLUSTER if settings.nats_url else ProcessMode.SINGLE
        self.id = uuid.uuid4().hex
        self.pid = os.getpid()
        self.pid_space = pid_space()
        self.started_at = utcnow()
        self.lost = False  # set when another process took the lease over
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None

    # -- the documents -----------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        """This process's description, as `$literal`s for pipeline updates."""
        values = {
            "host": socket.gethostname(),
            "pid": self.pid,
            "pid_space": self.pid_space,
            "bind": f"{self.settings.host}:{self.settings.port}",
            "started_at": self.started_at,
        }
        return {k: {"$literal": v} for k, v in values.items()}

    async def _register(self) -> None:
        await ProcessMember.get_pymongo_collection().update_one(
            {"_id": self.id},
            [{"$set": {**self._fields(), "mode": self.mode.value, "heartbeat_at": "$$NOW"}}],
            upsert=True,
        )

    async def _claim(self) -> bool:
        """True when this process now holds the lease. Atomic: an upsert that matches only
        our own lease (or, in cluster mode, a cluster's) and inserts when there is none, so
        of two processes finding none, one inserts and the other hits the unique _id; else a
        compare-and-set on a lease whose heartbeat is older than the TTL. (MongoDB refuses
        `$expr` in an upsert's filter, so staleness is read first, then the exact lease
        seen replaced: two processes taking the same stale lease, one matches.)"""
        leases = DatabaseLease.get_pymongo_collection()
        single = self.mode is ProcessMode.SINGLE
        update = [
            {
                "$set": {
                    **self._fields(),
                    "mode": self.mode.value,
                    # A cluster shares the lease among its members, never with a single process.
                    "holder": {"$literal": self.id if single else None},
                    "heartbeat_at": "$$NOW",
                }
            }
        ]
        ours = {"holder": self.id} if single else {"mode": ProcessMode.CLUSTER.value}
        try:
            await leases.update_one({"_id": LEASE_ID, **ours}, update, upsert=True)
            return True
        except DuplicateKeyError:  # the lease is someone else's
            pass
        stale = await leases.find_one({"_id": LEASE_ID, **_stale(self.settings.lease_ttl_seconds)})
        if stale is None:  # alive
            return False
        seen = {"holder": stale.get("holder"), "heartbeat_at": stale["heartbeat_at"]}
        taken = await leases.update_one({"_id": LEASE_ID, **seen}, update)
        return taken.matched_count == 1

    async def _renew(self) -> bool:
        """The heartbeat: False when the lease is no longer ours. Never a re-claim: a lease
        that is gone may have been taken and released by another process meanwhile."""
        mine: dict[str, Any] = (
            {"holder": self.id}
            if self.mode is ProcessMode.SINGLE
            else {"mode": ProcessMode.CLUSTER.value}
        )
        renewed = await DatabaseLease.get_pymongo_collection().update_one(
            {"_id": LEASE_ID, **mine}, [{"$set": {"heartbeat_at": "$$NOW"}}]
        )
        await self._register()  # upsert: also after the TTL monitor removed the document
        return renewed.matched_count == 1

    # -- start and stop ----------------------------------------------------------------

    async def join(self) -> None:
        """Claims the lease (or raises StartRefused), registers, starts the heartbeat."""
        await self._acquire()
        await self._register()
        self._task = asyncio.create_task(self._beat_forever(), name="lease-heartbeat")
        log.info(
            "holding the database lease of %r as process %s (%s mode)",
            self.settings.db_name,
            self.id,
            self.mode.value,
        )

    async def _acquire(self) -> None:
        leases = DatabaseLease.get_pymongo_collection()
        ttl, interval = self.settings.lease_ttl_seconds, self.settings.lease_heartbeat_seconds
        watched: tuple[Any, Any] | None = None  # (holder, heartbeat_at) first seen
        give_up = time.monotonic() + ttl + 2 * interval
        while not await self._claim():
            lease = await leases.find_one({"_id": LEASE_ID})
            if lease is None:  # released between the claim and the read
                continue
            seen = (lease.get("holder"), lease["heartbeat_at"])
            # Only a single-mode holder is one process whose pid tells whether it is alive.
            single = lease.get("mode") == ProcessMode.SINGLE.value
            local = single and lease.get("pid_space") == self.pid_space
            if local and (lease["pid"] == self.pid or not pid_alive(lease["pid"])):
                # Crashed on this machine: no need to wait for its lease to expire.
                log.warning("taking over the lease of a dead process: %s", describe(lease))
                await leases.delete_one({"_id": LEASE_ID, "holder": seen[0]})
                continue
            if local or (watched is not None and seen != watched) or time.monotonic() > give_up:
                raise StartRefused(self._refusal(lease))
            if watched is None:
                watched = seen
                log.warning(
                    "the database lease is held by %s; waiting up to %g s for its "
                    "heartbeat to expire (refusing to start if the heartbeat advances)",
                    describe(lease),
                    ttl,
                )
            await asyncio.sleep(min(interval / 2, 1.0))

    def _refusal(self, lease: dict[str, Any]) -> str:
        return (
            f"refusing to start: another halochat process is serving database "
            f"{self.settings.db_name!r}: {describe(lease)}. Two processes on one database "
            "without a message bus would corrupt sessions (two seq counters, messages "
            "accepted after a session ended). Stop the other process and start this one "
            "again, or give each process its own database (MONGODB_URI / HALOCHAT_DB_NAME). "
            "Several processes on one database run in cluster mode: every one of them with "
            "HALOCHAT_NATS_URL set (docs/scaling.md). A crashed holder's lease expires "
            f"{self.settings.lease_ttl_seconds:g} s after its last heartbeat "
            "(HALOCHAT_LEASE_TTL_SECONDS)."
        )

    async def _beat_forever(self) -> None:
        interval = self.settings.lease_heartbeat_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(self.settings.lease_ttl_seconds):
                    held = await self._renew()
            except Exception as exc:  # database unreachable: keep serving, keep trying
                log.warning("lease heartbeat failed (retrying in %g s): %r", interval, exc)
                continue
            if not held:
                break
        self.lost = True
        lease = None
        with contextlib.suppress(Exception):  # only for the message: stop regardless
            lease = await DatabaseLease.get_pymongo_collection().find_one({"_id": LEASE_ID})
        log.critical(
            "LOST THE DATABASE LEASE of %r: it is now held by %s. This process missed its "
            "heartbeats for longer than %g s (paused, or cut off from the database) and "
            "another process took over; two single-mode processes must never serve one "
            "database, so this one stops now (exit status %d).",
            self.settings.db_name,
            describe(lease) if lease else "nobody (gone: taken and released again?)",
            self.settings.lease_ttl_seconds,
            ExitCode.LEASE_LOST,
        )
        self._on_lost()

    async def leave(self) -> None:
        """Clean stop: the lease is free at once (not after the TTL)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            if self.mode is ProcessMode.SINGLE:
                await DatabaseLease.get_pymongo_collection().delete_one(
                    {"_id": LEASE_ID, "holder": self.id}
                )
            await ProcessMember.get_pymongo_collection().delete_one({"_id": self.id})
        except Exception as exc:  # the database is gone: the lease expires after the TTL
            log.warning("could not release the database lease: %r", exc)
