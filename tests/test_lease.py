"""One process per database (issue 13, item 1; docs/scaling.md).

Real servers: of two processes starting together on one database exactly one serves, the
other refuses with exit status 3 and a message naming the first; it starts once the first
stops; after a SIGKILL on this host the restart takes over at once. Their lease heartbeat is
0.5 s and the TTL 60 s, longer than the harness waits for a server to start: what starts
did not wait for the lease to expire.

In-process, on the real database (the code the start hook runs, with a 1 s TTL): the claim is
atomic; a holder on another host is refused while its heartbeat advances and taken over
after the TTL once it stops; heartbeat failures (the database paused) do not stop the
process. A process that lost its lease exits: tests/test_lifecycle.py (the paused server).
"""

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from halochat.cluster.membership import ExitCode, Membership, StartRefused
from halochat.config import Settings
from halochat.db.connect import init_db, make_client
from halochat.db.embedded import EmbeddedMongo
from halochat.documents.process import LEASE_ID, ProcessMode
from tests.conftest import ServerFactory
from tests.support.server import ServerProcess

LONG_TTL = {"HALOCHAT_LEASE_HEARTBEAT_SECONDS": "0.5", "HALOCHAT_LEASE_TTL_SECONDS": "60"}


def on_same_database(
    server_factory: ServerFactory, first: ServerProcess, env: dict[str, str]
) -> ServerProcess:
    second = server_factory(env=env, start=False)
    second.db_name = first.db_name
    return second


def refused_log(proc: ServerProcess) -> str:
    """The log of a server that refused to start (exit status 3)."""
    assert proc.proc is not None and proc.proc.returncode == ExitCode.REFUSED
    log = proc.log_path.read_text()
    assert "refusing to start: another halochat process is serving database" in log
    assert "Traceback" not in log  # one clear message, not Sanic's traceback of it
    return log


def lease(server: ServerProcess) -> dict[str, Any] | None:
    return server.db["leases"].find_one({"_id": LEASE_ID})


def test_one_process_per_database(server_factory: ServerFactory) -> None:
    # Two processes start together on one database: exactly one serves, the other refuses
    # with exit status 3 and a message naming the one that serves.
    a = server_factory(env=LONG_TTL, start=False)
    b = on_same_database(server_factory, a, LONG_TTL)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(_start, (a, b)))
    assert sorted(outcomes) == ["refused", "serving"], outcomes
    first, second = (a, b) if outcomes[0] == "serving" else (b, a)
    log = refused_log(second)
    assert first.proc is not None
    held = lease(first)
    assert held is not None and held["pid"] == first.proc.pid and held["mode"] == "single"
    # The message names the holder and says what to do.
    for part in (f"pid {first.proc.pid}", f"127.0.0.1:{first.port}", socket.gethostname()):
        assert part in log, part
    assert "Stop the other process" in log and "HALOCHAT_NATS_URL" in log
    assert httpx.get(f"{first.base_url}/readyz", timeout=5).status_code == 200  # untouched
    assert first.db["processes"].count_documents({}) == 1  # the refused one left nothing

    # A clean stop frees the lease at once (the TTL is 60 s).
    first.stop()
    assert first.proc.returncode == 0
    assert lease(first) is None and first.db["processes"].count_documents({}) == 0
    second.start()
    assert second.proc is not None and lease(second)["pid"] == second.proc.pid

    # SIGKILL leaves the lease behind; a restart on this host sees the pid is dead and takes
    # over at once instead of waiting the 60 s TTL.
    crashed_pid = second.proc.pid
    second.kill()
    assert lease(second)["pid"] == crashed_pid  # left behind
    second.start()
    assert lease(second)["pid"] == second.proc.pid
    assert "taking over the lease of a dead process" in second.log_path.read_text()


def _start(proc: ServerProcess) -> str:
    try:
        proc.start()
    except RuntimeError:
        return "refused"
    return "serving"


@pytest.fixture
async def fresh_db(mongodb_uri: str) -> AsyncIterator[tuple[Settings, Any]]:
    """Settings for a new database on the shared server, and that database (in-process)."""
    settings = Settings(
        mongodb_uri=mongodb_uri,
        db_name=f"t_lease_{time.time_ns()}",
        lease_heartbeat_seconds=0.2,
        lease_ttl_seconds=1.0,
    )
    client = make_client(mongodb_uri)
    await init_db(client, settings.db_name)
    yield settings, client[settings.db_name]
    await client.drop_database(settings.db_name)
    await client.close()


async def test_the_claim_is_atomic(fresh_db: tuple[Settings, Any]) -> None:
    """Many claims at the same instant on one database (the start-up's claim without the
    process around it), on no lease and on a stale one: exactly one holds the lease. A
    cluster-mode claim does not join a database a single process
    holds."""
    settings, db = fresh_db
    members = [Membership(settings, on_lost=lambda: None) for _ in range(8)]
    won = await asyncio.gather(*(m._claim() for m in members))
    assert sum(won) == 1, won
    holder = members[won.index(True)]
    assert await holder._claim() is True  # renewing its own lease
    cluster = Membership(settings.model_copy(update={"nats_url": "nats://x"}), lambda: None)
    assert cluster.mode is ProcessMode.CLUSTER and await cluster._claim() is False
    assert (await db["leases"].find_one({"_id": LEASE_ID}))["holder"] == holder.id

    # The holder stops heartbeating: after the 1 s TTL the others race for the stale lease,
    # one takes it, and the old holder's next heartbeat finds it gone.
    await asyncio.sleep(1.2)
    others = [m for m in members if m is not holder]
    won = await asyncio.gather(*(m._claim() for m in others))
    assert sum(won) == 1, won
    assert await holder._renew() is False
    assert await cluster._claim() is False  # the new single holder's lease is live


def test_a_ttl_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(ValidationError, match="HALOCHAT_LEASE_TTL_SECONDS must be >= 2 x"):
        Settings(lease_heartbeat_seconds=5, lease_ttl_seconds=9)


async def hold_elsewhere(db: Any, heartbeat_ms: int = 0) -> None:
    """A lease held by a process on another host (its pid cannot be checked from here)
    whose last heartbeat was `heartbeat_ms` from now."""
    beat = {"$add": ["$$NOW", heartbeat_ms]}
    holder = {
        "mode": "single",
        "holder": "elsewhere-1",
        "host": "db-peer-7",
        "pid": 4242,
        "pid_space": "db-peer-7|another-boot|pid:[1]",
        "bind": "0.0.0.0:8000",
        "started_at": "$$NOW",
        "heartbeat_at": beat,
    }
    await db["leases"].update_one({"_id": LEASE_ID}, [{"$set": holder}], upsert=True)


async def test_a_live_holder_on_another_host_is_refused(fresh_db: tuple[Settings, Any]) -> None:
    """Its pid cannot be checked from here: watched until its heartbeat advances."""
    settings, db = fresh_db
    await hold_elsewhere(db)

    async def keep_beating() -> None:
        while True:
            await asyncio.sleep(0.1)
            await hold_elsewhere(db)

    beating = asyncio.create_task(keep_beating())
    try:
        with pytest.raises(StartRefused) as refusal:
            await Membership(settings, on_lost=lambda: None).join()
    finally:
        beating.cancel()
    assert "host db-peer-7, pid 4242, listening on 0.0.0.0:8000" in str(refusal.value)


async def test_a_crashed_holder_on_another_host_expires_after_the_ttl(
    fresh_db: tuple[Settings, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings, db = fresh_db
    await hold_elsewhere(db)  # and never again: it crashed
    member = Membership(settings, on_lost=lambda: None)
    started = time.monotonic()
    await member.join()
    try:
        assert time.monotonic() - started > 0.5  # waited for the 1 s TTL
        assert "waiting up to 1 s for its heartbeat to expire" in caplog.text
        assert (await db["leases"].find_one({"_id": LEASE_ID}))["holder"] == member.id
    finally:
        await member.leave()
    assert await db["leases"].find_one({"_id": LEASE_ID}) is None  # released


async def test_heartbeat_failures_do_not_stop_the_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database stops answering (its process is paused) for longer than the TTL: the
    heartbeats fail and are retried; nobody took the lease over, so the process keeps it."""
    lost: list[bool] = []
    with EmbeddedMongo(tmp_path / "db") as uri:
        db_pid = json.loads((tmp_path / "db" / "server.json").read_text())["pid"]
        settings = Settings(
            mongodb_uri=uri, db_name="t", lease_heartbeat_seconds=0.2, lease_ttl_seconds=0.5
        )
        client = make_client(uri)
        await init_db(client, settings.db_name)
        member = Membership(settings, on_lost=lambda: lost.append(True))
        await member.join()
        os.kill(db_pid, signal.SIGSTOP)
        try:
            async with asyncio.timeout(30):
                while "lease heartbeat failed" not in caplog.text:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        finally:
            os.kill(db_pid, signal.SIGCONT)
        leases = client[settings.db_name]["leases"]
        before = (await leases.find_one({"_id": LEASE_ID}))["heartbeat_at"]
        async with asyncio.timeout(30):
            while (await leases.find_one({"_id": LEASE_ID}))["heartbeat_at"] == before:  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # renewed again: still ours
        assert not lost and not member.lost
        assert (await leases.find_one({"_id": LEASE_ID}))["holder"] == member.id
        await member.leave()
        await client.close()
