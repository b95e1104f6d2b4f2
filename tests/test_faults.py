"""Database faults (docs/operations.md "Faults and recovery"): deadlines that fall while the
database is unreachable fire once it is back, sends after ends_at are refused meanwhile, DB
calls answer 503 quickly; the embedded database child is supervised, and one server owns a
data directory."""

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import AutoReconnect

from halochat.auth import issue_token
from halochat.db.embedded import STATE_FILE, EmbeddedMongo
from halochat.documents.common import utcnow
from halochat.jobs.timers import TimerKind, Timers
from halochat.server import EXIT_DATA_DIR_IN_USE
from tests.conftest import FAST_ENV, ServerFactory
from tests.support.clients import Actor, WsClient, api
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess
from tests.support.stored import session_doc
from tests.support.tcp_proxy import TcpProxy

DB_TIMEOUT = 1.0
ENV = {
    "HALOCHAT_MINUTE_SECONDS": "4",  # the test tier "test-1m" lasts 4 s
    "HALOCHAT_PAIRING_TIMEOUT_SECONDS": "4",
    "HALOCHAT_GRACE_SECONDS": "4",
    "HALOCHAT_WARNING_LEAD_SECONDS": "1",
    "HALOCHAT_DB_TIMEOUT_SECONDS": str(DB_TIMEOUT),
    "HALOCHAT_SWEEP_INTERVAL_SECONDS": "1",
}
QUICK = DB_TIMEOUT + 4  # "quickly": the DB timeout plus slack for a loaded machine
RECOVERY = 8.0  # each deadline fires within this after the database is back


@pytest.fixture(scope="module")
def proxied(
    mongodb_uri: str, fcm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, TcpProxy]]:
    """A server whose database connection goes through a cuttable proxy (the test's own
    direct access does not)."""
    proxy = TcpProxy.for_mongodb(mongodb_uri).start()
    server = ServerProcess(
        tmp_path_factory.mktemp("faults"),
        mongodb_uri=proxy.proxied_uri(),
        db_uri=mongodb_uri,
        env={**FAST_ENV, **fcm_env, **ENV},
    )
    try:
        yield server.start(), proxy
    finally:
        proxy.restore()
        server.close()
        proxy.stop()


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def stored_state(server: ServerProcess, session_id: Any) -> dict[str, Any]:
    return server.db["sessions"].find_one({"_id": ObjectId(session_id)})


async def wait_until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return result


async def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = await call
    return resp, time.monotonic() - started


def assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "service_unavailable"


async def test_deadlines_during_a_database_outage_fire_once_it_is_back(
    proxied: tuple[ServerProcess, TcpProxy],
) -> None:
    server, proxy = proxied
    # B: CLOSING (ended early); its grace deadline falls during the outage.
    cust_b, mitra_b = make_pair(server, "B")
    b = await open_active_session(server, cust_b, mitra_b, tier_id="60m")
    async with api(server.base_url, cust_b) as http:
        assert (await http.post(f"/v1/sessions/{b['id']}/end")).status_code == 200
    # C: pairing; nobody accepts before its deadline, which falls during the outage.
    cust_c, _ = make_pair(server, "C")
    async with api(server.base_url, cust_c) as http:
        created = await http.post("/v1/sessions", json={"choice": "tier", "tier_id": "15m"})
        assert created.status_code == 201, created.text
        c = created.json()["session"]
    # A: its paid time ends during the outage (one message sent before); opened
    # last, so that the outage surely begins before its 4 s are over.
    cust_a, mitra_a = make_pair(server, "A")
    ws_a = await WsClient.open(server.ws_url, cust_a)
    await ws_a.wait_for("ready")
    a = await open_active_session(server, cust_a, mitra_a, tier_id="test-1m")
    sent = await ws_a.request(
        "message.send", {"session_id": a["id"], "client_msg_id": "a-1", "body": "halo"}
    )
    assert sent["type"] == "ack", sent

    proxy.cut()
    now = datetime.now(UTC)
    states = [stored_state(server, x["id"])["state"] for x in (a, b, c)]
    assert states == ["ACTIVE", "CLOSING", "PAIRING"], "setup outran the deadlines"
    # Orphans: overdue deadlines no timer anywhere holds (written straight to the database,
    # as a dead process would leave them): only the sweeper can fire them.
    orphan_active = session_doc(
        now - timedelta(seconds=30),
        state="ACTIVE",
        customer_id=ObjectId(cust_b.id),
        customer_name="CustomerB",
        mitra_id=ObjectId(mitra_b.id),
        mitra_name="BestieB",
        started_at=now - timedelta(seconds=30),
        ends_at=now - timedelta(seconds=1),
    )
    orphan_pairing = session_doc(
        now - timedelta(seconds=30),
        state="PAIRING",
        customer_id=ObjectId(cust_c.id),
        customer_name="CustomerC",
        pairing_deadline=now - timedelta(seconds=1),
    )
    server.db["sessions"].insert_many([orphan_active, orphan_pairing])

    # Within the paid time, a send that cannot be stored gets a 503 error frame, quickly.
    started = time.monotonic()
    failed = await ws_a.request(
        "message.send", {"session_id": a["id"], "client_msg_id": "a-down", "body": "halo?"}
    )
    assert failed["type"] == "error", failed
    assert failed["error"]["code"] == "service_unavailable", failed
    assert time.monotonic() - started < QUICK

    async with api(server.base_url, cust_a) as http:
        resp, took = await timed(http.get(f"/v1/sessions/{a['id']}"))
        assert_unavailable(resp)
        assert took < QUICK, took
        ready, took = await timed(http.get("/readyz"))
        assert_unavailable(ready)
        assert took < QUICK, took
        assert (await http.get("/healthz")).status_code == 200  # the process itself is fine

    # Past ends_at, with the expiry unable to land: the send is refused anyway.
    ends_at = parse_time(a["ends_at"])
    await asyncio.sleep(max(0.0, (ends_at - datetime.now(UTC)).total_seconds()) + 0.1)
    late = await ws_a.request(
        "message.send", {"session_id": a["id"], "client_msg_id": "a-late", "body": "late"}
    )
    assert late["type"] == "error", late
    assert late["error"]["code"] == "invalid_state", late
    assert late["error"]["details"]["state"] == "EXPIRED"

    # Each deadline's timer fired, failed on the database, and is being retried.
    for job in (f"{a['id']}:expiry", f"{b['id']}:grace", f"{c['id']}:pairing_timeout"):
        await wait_until(
            f"{job} to fail", lambda j=job: f"timer {j} failed" in server.log_path.read_text(), 15
        )
    assert stored_state(server, a["id"])["state"] == "ACTIVE"  # nothing could land

    proxy.restore()
    back = time.monotonic()
    await wait_until(
        "A to expire",
        lambda: stored_state(server, a["id"])["state"] in ("EXPIRED", "COMPLETED"),
        RECOVERY,
    )
    await wait_until(
        "B to complete", lambda: stored_state(server, b["id"])["state"] == "COMPLETED", RECOVERY
    )
    await wait_until(
        "C to fail", lambda: stored_state(server, c["id"])["state"] == "UNMATCHED", RECOVERY
    )
    await wait_until(
        "the orphans to be swept",
        lambda: (
            stored_state(server, orphan_active["_id"])["state"] in ("EXPIRED", "COMPLETED")
            and stored_state(server, orphan_pairing["_id"])["state"] == "UNMATCHED"
        ),
        RECOVERY,
    )
    assert time.monotonic() - back < RECOVERY
    assert stored_state(server, a["id"])["end_reason"] == "time_up"
    assert stored_state(server, b["id"])["end_reason"] == "ended_by_customer"
    assert stored_state(server, c["id"])["end_reason"] == "pairing_timeout"

    # After: still refused, and only the message sent in time is stored.
    async with api(server.base_url, cust_a) as http:
        refused = await http.post(
            f"/v1/sessions/{a['id']}/messages", json={"client_msg_id": "a-2", "body": "late"}
        )
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "invalid_state"
    stored = list(server.db["messages"].find({"session_id": ObjectId(a["id"])}))
    assert [m["client_msg_id"] for m in stored] == ["a-1"]
    await ws_a.close()


async def test_a_failing_timer_is_retried_but_never_replaces_a_newer_one() -> None:
    """The retry machinery itself (halochat/jobs/timers.py), in this process."""
    timers = Timers()
    timers.start()
    try:
        calls: list[str] = []

        async def flaky() -> None:  # the database is back at the third attempt
            calls.append("flaky")
            if len(calls) < 3:
                raise AutoReconnect("connection refused")

        timers.at("s1", TimerKind.EXPIRY, utcnow(), flaky)
        await wait_until("three attempts", lambda: len(calls) == 3, 10)  # 0.5 s + 1 s backoff
        await asyncio.sleep(0.2)
        assert len(calls) == 3 and timers.scheduler.get_job("s1:expiry") is None  # done

        # A job that fails after a later deadline was armed under its id leaves that alone.
        started, release = asyncio.Event(), asyncio.Event()

        async def stale() -> None:
            started.set()
            await release.wait()
            raise AutoReconnect("connection refused")

        async def later() -> None:
            pass

        timers.at("s2", TimerKind.GRACE, utcnow(), stale)
        await asyncio.wait_for(started.wait(), 5)
        timers.at("s2", TimerKind.GRACE, utcnow() + timedelta(seconds=60), later)
        release.set()
        await asyncio.sleep(0.2)
        job = timers.scheduler.get_job("s2:grace")
        assert job is not None and job.next_run_time > utcnow() + timedelta(seconds=50)
    finally:
        timers.shutdown()


# --- the embedded database: supervision and ownership -------------------------------------


def db_dir(server: ServerProcess) -> Path:
    return server.workdir / "var" / "db"


def child_pid(server: ServerProcess) -> int:
    return json.loads((db_dir(server) / STATE_FILE).read_text())["pid"]


def own_db_user(server: ServerProcess) -> Actor:
    """A customer in the server's own embedded database (reached as a client of it)."""
    doc = {"_id": ObjectId(), "role": "customer", "display_name": "Sinta", "disabled": False}
    with MongoClient(EmbeddedMongo(db_dir(server)).start()) as client:
        client[server.db_name].users.insert_one(doc)
    token = issue_token(server.settings(), doc["_id"])
    return Actor(id=str(doc["_id"]), role="customer", name="Sinta", token=token)


@pytest.fixture(scope="module")
def own_db_server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(
        env={
            "HALOCHAT_DB_TIMEOUT_SECONDS": str(DB_TIMEOUT),
            # Long enough to watch the outage; a real deployment restarts at once.
            "HALOCHAT_EMBEDDED_RESTART_DELAY_SECONDS": "2",
        },
        own_db=True,
    )


async def test_killed_embedded_database_is_restarted(own_db_server: ServerProcess) -> None:
    server = own_db_server
    user = own_db_user(server)
    old_pid = child_pid(server)
    os.kill(old_pid, signal.SIGKILL)
    async with api(server.base_url, user) as http:
        live = await wait_until_response(http, "/healthz", 503)
        assert live.json()["error"]["details"]["checks"]["embedded_database"] == "down"
        resp, took = await timed(http.get("/v1/me"))
        assert_unavailable(resp)
        assert took < QUICK, took

        await wait_until_response(http, "/healthz", 200, timeout=20)
        me = await wait_until_response(http, "/v1/me", 200, timeout=10)
        assert me.json()["display_name"] == "Sinta"  # the same data
    assert child_pid(server) != old_pid
    assert "embedded database restarted" in server.log_path.read_text()


async def wait_until_response(
    http: httpx.AsyncClient, path: str, status: int, timeout: float = 5.0
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while (resp := await http.get(path)).status_code != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {resp.status_code} {resp.text}, wanted {status}")
        await asyncio.sleep(0.1)
    return resp


def test_second_server_on_the_same_data_dir_refuses_to_start(
    own_db_server: ServerProcess, server_factory: ServerFactory
) -> None:
    first = own_db_server
    second = server_factory(
        env={"HALOCHAT_DATA_DIR": str(first.workdir / "var")}, own_db=True, start=False
    )
    with pytest.raises(RuntimeError, match=rf"server exited \({EXIT_DATA_DIR_IN_USE}\)"):
        second.start()
    assert "owned by another halochat process" in second.log_path.read_text()
    # The first one is untouched, and a script may still use its database as a client.
    assert httpx.get(f"{first.base_url}/readyz", timeout=10).status_code == 200
    script = EmbeddedMongo(db_dir(first))
    assert script.start() == json.loads((db_dir(first) / STATE_FILE).read_text())["uri"]
    script.stop()  # stops nothing it does not own
    assert httpx.get(f"{first.base_url}/readyz", timeout=10).status_code == 200
