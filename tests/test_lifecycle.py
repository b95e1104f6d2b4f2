"""Session lifecycle end to end: warning, expiry, extension (accepted / rejected / declined),
end early, closures, grace completion, ownership, and timers that fire twice, late, or in
two server processes at once. Real servers, real WebSocket clients, the fake FCM endpoint.

The module's server runs on the test clock (docs/testing.md): one tier "minute" is 10
minutes, the warning comes 60 s before the end, the grace period is 5 minutes, and nothing
falls due until a test advances the clock past a deadline. The two-process test runs on
real timers (a 6 s minute), so APScheduler's own waiting stays covered."""

import asyncio
import signal
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from beanie import PydanticObjectId

from halochat.config import Settings
from halochat.db.connect import init_db, make_client
from halochat.documents.common import utcnow
from halochat.domain import lifecycle
from halochat.jobs.timers import Timers
from halochat.push import PushService
from halochat.services import Services
from halochat.ws.hub import Hub
from tests.support.clients import Actor, WsClient, api, sockets
from tests.support.fake_fcm import FakeFcm
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess

MINUTE, LEAD, GRACE = 600, 60, 300  # seconds of the test clock
TIMINGS = {
    "HALOCHAT_MINUTE_SECONDS": str(MINUTE),
    "HALOCHAT_WARNING_LEAD_SECONDS": str(LEAD),
    "HALOCHAT_GRACE_SECONDS": str(GRACE),
    # Only the timers fire deadlines here (the sweeper is tests/test_faults.py's).
    "HALOCHAT_SWEEP_INTERVAL_SECONDS": "3600",
}
ONE_MINUTE = "test-1m"  # 10 minutes here
LONG = "15m"  # 150 minutes here: never runs out during a test


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerProcess:
    return server_factory(env=TIMINGS, clock=True)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def to_warning(server: ServerProcess, ends_at: str) -> None:
    """The test clock to the warning time of `ends_at` (a hair past it: the warning's
    remaining_seconds is then LEAD, rounded)."""
    await server.advance_past(parse_time(ends_at) - timedelta(seconds=LEAD), margin=0.05)


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code, error
    return error


async def post(server: ServerProcess, actor: Actor, path: str, body: Any = None) -> httpx.Response:
    async with api(server.base_url, actor) as http:
        return await http.post(path, json=body)


async def get_session(server: ServerProcess, actor: Actor, sid: str) -> dict[str, Any]:
    async with api(server.base_url, actor) as http:
        resp = await http.get(f"/v1/sessions/{sid}")
    assert resp.status_code == 200, resp.text
    return resp.json()["session"]


async def register_device(server: ServerProcess, actor: Actor, token: str) -> None:
    async with api(server.base_url, actor) as http:
        resp = await http.put("/v1/devices", json={"device_id": token, "fcm_token": token})
    assert resp.status_code == 200, resp.text


def stored(server: ServerProcess, sid: str) -> dict[str, Any]:
    return server.db["sessions"].find_one({"_id": PydanticObjectId(sid)})


def extension_transactions(server: ServerProcess, sid: str) -> list[dict[str, Any]]:
    return list(
        server.db["transactions"].find({"session_id": PydanticObjectId(sid), "kind": "extension"})
    )


async def both(clients: list[WsClient], type_: str, **match: Any) -> list[dict[str, Any]]:
    return [await c.wait_for(type_, **match) for c in clients]


async def test_full_paid_session(server: ServerProcess) -> None:
    """Warning, expiry, extension accepted, second warning and expiry, decline, both
    closures, COMPLETED, as both apps see it."""
    customer, mitra = make_pair(server, "full")
    async with sockets(server.ws_url, customer, mitra) as (cws, mws):
        session = await open_active_session(server, customer, mitra, tier_id=ONE_MINUTE)
        sid = session["id"]
        first_end = session["ends_at"]

        await to_warning(server, first_end)
        for warning in await both([cws, mws], "session.one_minute_left", session_id=sid):
            assert warning["data"]["remaining_seconds"] == LEAD
            assert warning["data"]["ends_at"] == first_end
        assert not cws.pending("session.expired")
        await server.advance_past(first_end)
        c_exp, m_exp = await both([cws, mws], "session.expired", session_id=sid)
        assert c_exp["data"]["session"]["state"] == "EXPIRED"
        assert c_exp["data"]["session"]["end_reason"] == "time_up"
        tier_ids = {t["id"] for t in c_exp["data"]["tiers"]}
        assert {"15m", "30m", "60m", ONE_MINUTE} <= tier_ids
        assert "tiers" not in m_exp["data"]  # only the customer chooses
        assert c_exp["data"]["grace_deadline"] == c_exp["data"]["session"]["grace_deadline"]
        refused = await cws.request(
            "message.send", {"session_id": sid, "client_msg_id": "late-1", "body": "halo?"}
        )
        assert refused["type"] == "error", refused
        assert refused["error"]["code"] == "invalid_state"
        assert refused["error"]["details"]["state"] == "EXPIRED"

        # The customer asks for one more (test) minute; the Mitra is asked.
        resp = await post(
            server, customer, f"/v1/sessions/{sid}/extension", {"tier_id": ONE_MINUTE}
        )
        assert resp.status_code == 200, resp.text
        ext = resp.json()["extension"]
        assert resp.json()["session"]["state"] == "EXTENSION_PENDING"
        assert ext["status"] == "pending"
        assert (ext["minutes"], ext["price"], ext["label"]) == (1, 1_000, "1 menit (test)")
        asked = await mws.wait_for("session.extension_requested", session_id=sid)
        assert asked["data"]["extension"]["id"] == ext["id"]
        assert asked["data"]["customer"] == {"id": customer.id, "name": customer.name}

        resp = await post(
            server,
            mitra,
            f"/v1/sessions/{sid}/extension/answer",
            {"extension_id": ext["id"], "accept": True},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["session"]["state"] == "ACTIVE"
        txn = resp.json()["transaction"]
        assert (txn["kind"], txn["status"], txn["price"]) == ("extension", "pending_payment", 1000)
        c_ans, m_ans = await both([cws, mws], "session.extension_answered", session_id=sid)
        assert c_ans["data"]["accepted"] is True and m_ans["data"]["accepted"] is True
        assert c_ans["data"]["transaction"]["id"] == txn["id"]
        assert c_ans["data"]["extension"]["status"] == "accepted"
        c_res, _ = await both([cws, mws], "session.resumed", session_id=sid)
        second_end = c_res["data"]["ends_at"]
        assert second_end > first_end
        assert c_res["data"]["session"]["grace_deadline"] is None
        # The live session took the new ends_at: sending works again, past the first one.
        resumed = await cws.request(
            "message.send", {"session_id": sid, "client_msg_id": "after-ext", "body": "lanjut"}
        )
        assert resumed["type"] == "ack", resumed

        # A second answer to the same request changes nothing.
        before = stored(server, sid)
        again = await post(
            server,
            mitra,
            f"/v1/sessions/{sid}/extension/answer",
            {"extension_id": ext["id"], "accept": False},
        )
        assert_error(again, 409, "already_resolved")
        assert stored(server, sid) == before
        assert len(extension_transactions(server, sid)) == 1

        # Second round: one warning for the new ends_at, then expiry again.
        await to_warning(server, second_end)
        for warning in await both([cws, mws], "session.one_minute_left", session_id=sid):
            assert warning["data"]["ends_at"] == second_end
        await server.advance_past(second_end)
        await both([cws, mws], "session.expired", session_id=sid)

        resp = await post(server, customer, f"/v1/sessions/{sid}/extension/decline")
        assert resp.status_code == 200, resp.text
        for closing in await both([cws, mws], "session.closing", session_id=sid):
            assert closing["data"]["reason"] == "extension_declined"
            assert closing["data"]["ended_by"] == "customer"
            assert closing["data"]["session"]["state"] == "CLOSING"

        resp = await post(server, customer, f"/v1/sessions/{sid}/closure", {"text": "  Makasih!  "})
        assert resp.status_code == 200, resp.text
        assert resp.json()["session"]["closures"]["customer"]["text"] == "Makasih!"
        told = await mws.wait_for("session.closure_submitted", session_id=sid)
        assert told["data"]["role"] == "customer"
        assert told["data"]["closure"]["text"] == "Makasih!"
        assert_error(
            await post(server, customer, f"/v1/sessions/{sid}/closure", {"text": "again"}),
            409,
            "already_submitted",
        )

        resp = await post(server, mitra, f"/v1/sessions/{sid}/closure", {"text": "Sama-sama"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["session"]["state"] == "COMPLETED"
        for done in await both([cws, mws], "session.completed", session_id=sid):
            assert done["data"]["completed_by"] == "closures_done"
            assert done["data"]["session"]["state"] == "COMPLETED"
        # Exactly one warning and one expiry per ends_at reached each side.
        for ws in (cws, mws):
            assert not ws.pending("session.one_minute_left")
            assert not ws.pending("session.expired")

    final = await get_session(server, mitra, sid)
    assert final["state"] == "COMPLETED"
    assert final["closures"]["customer"]["text"] == "Makasih!"
    assert final["closures"]["mitra"]["text"] == "Sama-sama"
    assert final["end_reason"] == "extension_declined"
    doc = stored(server, sid)
    assert [e["status"] for e in doc["extensions"]] == ["accepted"]
    assert len(doc["transaction_ids"]) == 2
    assert "open_customer_id" not in doc  # the customer may open a new chat


async def test_extension_rejected_then_grace_with_no_closure(
    server: ServerProcess, fake_fcm: FakeFcm
) -> None:
    """The Mitra is offline (push) and rejects; nobody writes a closure; grace completes."""
    customer, mitra = make_pair(server, "reject")
    token = f"mitra-reject-{mitra.id}"
    await register_device(server, mitra, token)
    async with sockets(server.ws_url, customer) as (cws,):
        session = await open_active_session(server, customer, mitra, tier_id=ONE_MINUTE)
        sid = session["id"]
        await server.advance_past(session["ends_at"])
        await cws.wait_for("session.expired", session_id=sid)
        [expired_push] = fake_fcm.wait_for(token, type="session_expired", session_id=sid)
        assert expired_push["data"]["other_id"] == customer.id

        resp = await post(server, customer, f"/v1/sessions/{sid}/extension", {"tier_id": LONG})
        assert resp.status_code == 200, resp.text
        ext_id = resp.json()["extension"]["id"]
        [push] = fake_fcm.wait_for(token, type="extension_request", session_id=sid)
        assert push["data"]["customer_id"] == customer.id
        assert push["data"]["customer_name"] == customer.name
        assert push["data"]["extension_id"] == ext_id
        assert (push["data"]["minutes"], push["data"]["price"]) == ("15", "15000")

        # A stale / unknown extension id is refused.
        stale = await post(
            server,
            mitra,
            f"/v1/sessions/{sid}/extension/answer",
            {"extension_id": "0" * 32, "accept": True},
        )
        assert_error(stale, 409, "already_resolved")

        resp = await post(
            server,
            mitra,
            f"/v1/sessions/{sid}/extension/answer",
            {"extension_id": ext_id, "accept": False},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["session"]["state"] == "CLOSING"
        assert "transaction" not in resp.json()
        answered = await cws.wait_for("session.extension_answered", session_id=sid)
        assert answered["data"]["accepted"] is False
        closing = await cws.wait_for("session.closing", session_id=sid)
        assert closing["data"]["reason"] == "extension_rejected"
        assert closing["data"]["ended_by"] == "mitra"

        grace_deadline = closing["data"]["session"]["grace_deadline"]
        await server.advance(GRACE / 2)  # halfway: still CLOSING
        assert stored(server, sid)["state"] == "CLOSING"
        await server.advance_past(grace_deadline)
        done = await cws.wait_for("session.completed", session_id=sid)
        assert done["data"]["completed_by"] == "grace_elapsed"
        assert done["data"]["session"]["closures"] == {"customer": None, "mitra": None}
    fake_fcm.wait_for(token, 2, type="session_ended", session_id=sid)
    final = await get_session(server, customer, sid)
    assert final["state"] == "COMPLETED"
    assert final["extension"]["status"] == "rejected"
    assert extension_transactions(server, sid) == []
    # Too late for anything now.
    assert_error(
        await post(server, customer, f"/v1/sessions/{sid}/closure", {"text": "late"}),
        409,
        "invalid_state",
    )


async def test_end_early_and_grace_with_one_closure(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, "early")
    async with sockets(server.ws_url, customer, mitra) as (cws, mws):
        session = await open_active_session(server, customer, mitra, tier_id=LONG)
        sid = session["id"]
        # No closure while chatting; bad closure texts are refused.
        assert_error(
            await post(server, customer, f"/v1/sessions/{sid}/closure", {"text": "bye"}),
            409,
            "invalid_state",
        )
        resp = await post(server, mitra, f"/v1/sessions/{sid}/end")
        assert resp.status_code == 200, resp.text
        assert resp.json()["session"]["state"] == "CLOSING"
        for closing in await both([cws, mws], "session.closing", session_id=sid):
            assert closing["data"]["reason"] == "ended_by_mitra"
            assert closing["data"]["ended_by"] == "mitra"
        assert_error(await post(server, customer, f"/v1/sessions/{sid}/end"), 409, "invalid_state")

        before = stored(server, sid)
        for bad in ({"text": "   "}, {"text": "x" * 1001}, {"text": 5}, {"txt": "hi"}):
            resp = await post(server, customer, f"/v1/sessions/{sid}/closure", bad)
            assert_error(resp, 422, "validation_error")
        assert stored(server, sid) == before
        resp = await post(server, mitra, f"/v1/sessions/{sid}/closure", {"text": "y" * 1000})
        assert resp.status_code == 200, resp.text
        assert resp.json()["session"]["state"] == "CLOSING"  # one closure: grace runs on

        await server.advance_past(resp.json()["session"]["grace_deadline"])
        done = await cws.wait_for("session.completed", session_id=sid)
        assert done["data"]["completed_by"] == "grace_elapsed"
        await mws.wait_for("session.completed", session_id=sid)
        # Ended early: the warning and expiry timers were cancelled.
        assert not cws.pending("session.one_minute_left")
        assert not cws.pending("session.expired")
    final = await get_session(server, customer, sid)
    assert final["state"] == "COMPLETED"
    assert final["closures"]["customer"] is None
    assert final["closures"]["mitra"]["text"] == "y" * 1000


async def test_ownership_roles_and_states(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, "own")
    stranger_c, stranger_m = make_pair(server, "stranger")
    session = await open_active_session(server, customer, mitra, tier_id=LONG)
    sid = session["id"]
    base = f"/v1/sessions/{sid}"
    answer = {"extension_id": "x", "accept": True}
    before = stored(server, sid)

    for actor in (stranger_c, stranger_m):
        for path, body in (
            ("/end", None),
            ("/closure", {"text": "hi"}),
            ("/extension", {"tier_id": LONG}),
            ("/extension/decline", None),
            ("/extension/answer", answer),
        ):
            assert_error(await post(server, actor, base + path, body), 404, "session_not_found")
    assert_error(
        await post(server, mitra, base + "/extension", {"tier_id": LONG}), 403, "wrong_role"
    )
    assert_error(await post(server, mitra, base + "/extension/decline"), 403, "wrong_role")
    assert_error(
        await post(server, customer, base + "/extension/answer", answer), 403, "wrong_role"
    )
    # Right party, wrong state.
    assert_error(
        await post(server, customer, base + "/extension", {"tier_id": LONG}), 409, "invalid_state"
    )
    assert_error(await post(server, customer, base + "/extension/decline"), 409, "invalid_state")
    assert_error(
        await post(server, mitra, base + "/extension/answer", answer), 409, "invalid_state"
    )
    # Unknown or malformed ids and bodies.
    for path in ("/v1/sessions/nope/end", f"/v1/sessions/{PydanticObjectId()}/end"):
        assert_error(await post(server, customer, path), 404, "session_not_found")
    assert_error(
        await post(
            server, mitra, base + "/extension/answer", {"extension_id": "x", "accept": "yes"}
        ),
        422,
        "validation_error",
    )
    async with api(server.base_url, customer) as http:
        assert_error(await http.post(base + "/extension", content=b"{nope"), 400, "invalid_json")
        assert_error(
            await http.post(base + "/end", headers={"Authorization": ""}), 401, "auth_required"
        )
    assert stored(server, sid) == before
    assert (await post(server, mitra, base + "/end")).status_code == 200


async def test_unknown_tier_and_concurrent_answers(server: ServerProcess) -> None:
    """Two answers at the same instant: one wins, the other gets 409, one transaction."""
    customer, mitra = make_pair(server, "race")
    async with sockets(server.ws_url, customer) as (cws,):
        session = await open_active_session(server, customer, mitra, tier_id=ONE_MINUTE)
        sid = session["id"]
        await server.advance_past(session["ends_at"])
        await cws.wait_for("session.expired", session_id=sid)
        before = stored(server, sid)
        resp = await post(server, customer, f"/v1/sessions/{sid}/extension", {"tier_id": "nope"})
        assert_error(resp, 404, "tier_not_found")
        assert stored(server, sid) == before

        resp = await post(server, customer, f"/v1/sessions/{sid}/extension", {"tier_id": LONG})
        ext_id = resp.json()["extension"]["id"]
        path = f"/v1/sessions/{sid}/extension/answer"
        answers = await asyncio.gather(
            *(
                post(server, mitra, path, {"extension_id": ext_id, "accept": accept})
                for accept in (True, True, False, True)
            )
        )
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200, 409, 409, 409], [r.text for r in answers]
        for loser in (r for r in answers if r.status_code == 409):
            assert_error(loser, 409, "already_resolved")
        winner = next(r for r in answers if r.status_code == 200).json()["session"]
        doc = stored(server, sid)
        assert len(doc["extensions"]) == 1
        txns = extension_transactions(server, sid)
        if winner["state"] == "ACTIVE":
            assert len(txns) == 1 and doc["extensions"][0]["transaction_id"] == txns[0]["_id"]
            assert len(doc["transaction_ids"]) == 2
        else:
            assert winner["state"] == "CLOSING" and txns == []


# --- timers that fire twice, late, or in two processes ----------------------------------


async def count_frames(clients: list[WsClient], type_: str, sid: str) -> list[int]:
    """How many `type_` frames each socket got, once every party saw one. Both processes'
    timers fire at the same instant, so a duplicate would arrive right along."""

    def counts() -> list[int]:
        return [
            sum(1 for f in ws.pending(type_) if f["data"]["session_id"] == sid) for ws in clients
        ]

    async with asyncio.timeout(15):
        while sum(counts()) < 2:  # noqa: ASYNC110  (frames spread over four sockets)
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    return counts()


@pytest.fixture
async def services(server: ServerProcess) -> AsyncIterator[Services]:
    """The domain in this test process, on the server's database (no sockets, no FCM)."""
    settings = Settings(
        mongodb_uri=server.mongodb_uri,
        db_name=server.db_name,
        minute_seconds=MINUTE,
        warning_lead_seconds=LEAD,
        grace_seconds=GRACE,
    )
    client = make_client(settings.mongodb_uri or "")
    await init_db(client, settings.db_name)
    # The scheduler is never started: jobs armed here stay in memory and never run.
    yield Services(settings, client, Hub(), PushService(settings), Timers())
    await client.close()


async def test_jobs_fired_twice_and_late_change_once(
    server: ServerProcess, services: Services
) -> None:
    customer, mitra = make_pair(server, "twice")
    session = await open_active_session(server, customer, mitra, tier_id=LONG)
    sid = PydanticObjectId(session["id"])
    coll = server.db["sessions"]

    # Inside the warning window: three concurrent warnings, one is sent.
    coll.update_one({"_id": sid}, {"$set": {"ends_at": utcnow() + timedelta(seconds=0.8)}})
    sent = await asyncio.gather(*(lifecycle.send_warning(services, sid) for _ in range(3)))
    assert sorted(sent) == [False, False, True]
    assert await lifecycle.send_warning(services, sid) is False

    # A stale expiry timer (ends_at is in the future) does nothing.
    assert await lifecycle.expire(services, sid) is None
    assert coll.find_one({"_id": sid})["state"] == "ACTIVE"

    # Overdue: concurrent expiries, one transition; late ones are no-ops.
    coll.update_one({"_id": sid}, {"$set": {"ends_at": utcnow() - timedelta(seconds=1)}})
    results = await asyncio.gather(*(lifecycle.expire(services, sid) for _ in range(3)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0].state == "EXPIRED"
    grace_deadline = coll.find_one({"_id": sid})["grace_deadline"]
    await lifecycle.expiry_job(services, sid)  # the timer, late
    doc = coll.find_one({"_id": sid})
    assert doc["state"] == "EXPIRED" and doc["grace_deadline"] == grace_deadline

    # Grace: too early does nothing; overdue, concurrent: one completion.
    assert await lifecycle.complete_after_grace(services, sid) is None
    coll.update_one({"_id": sid}, {"$set": {"grace_deadline": utcnow() - timedelta(seconds=1)}})
    done = await asyncio.gather(*(lifecycle.complete_after_grace(services, sid) for _ in range(3)))
    assert len([d for d in done if d is not None]) == 1
    completed_at = coll.find_one({"_id": sid})["completed_at"]
    await lifecycle.grace_job(services, sid)
    await lifecycle.expiry_job(services, sid)
    await lifecycle.warning_job(services, sid)
    doc = coll.find_one({"_id": sid})
    assert doc["state"] == "COMPLETED" and doc["completed_at"] == completed_at
    assert doc["warned_for"] is not None


async def test_a_paused_process_replaced_then_resumed_tells_nobody_twice(
    server_factory: Any, fake_fcm: FakeFcm
) -> None:
    """Two server processes hold one session's timers only when the first was paused (a VM
    stall; SIGSTOP here) past its lease TTL and a second took the database over, recovering
    the session and arming the same timers (docs/scaling.md). Resumed once the session has
    expired, with its own timers overdue, the first races the second's transitions until
    its heartbeat finds the lease gone and stops it (exit status 4). Each party is told each
    thing exactly once: by a frame on one of its sockets, or by a push when it had none
    live (the second may start before or after the session expires).

    The expiry runs on real timers (a 6 s test tier): APScheduler's own waiting, in both
    processes. The grace period is long, so that a second process slow to start still finds
    the session within it (a session past its whole grace is completed without telling
    anyone); once the first has stopped, the second's test clock is advanced past it."""
    lease = {"HALOCHAT_LEASE_HEARTBEAT_SECONDS": "0.5", "HALOCHAT_LEASE_TTL_SECONDS": "2"}
    timings = {
        "HALOCHAT_MINUTE_SECONDS": "6",
        "HALOCHAT_WARNING_LEAD_SECONDS": "1",
        "HALOCHAT_GRACE_SECONDS": str(GRACE),
    }
    env = {**timings, **lease}
    first = server_factory(env=env, clock=True)
    second = server_factory(env=env, clock=True, start=False)
    second.db_name = first.db_name
    customer, mitra = make_pair(first, "race2")
    tokens = [f"race2-{actor.id}" for actor in (customer, mitra)]
    for actor, token in zip((customer, mitra), tokens, strict=True):
        await register_device(first, actor, token)
    async with sockets(first.ws_url, customer, mitra) as on_first:
        session = await open_active_session(first, customer, mitra, tier_id=ONE_MINUTE)
        sid = session["id"]
        first.proc.send_signal(signal.SIGSTOP)
        try:
            async with asyncio.timeout(30):
                while not lease_expired(first, ttl_ms=2000):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            await asyncio.to_thread(second.start)
            assert "recovered 1 open session" in second.log_path.read_text()  # timers armed
            async with sockets(second.ws_url, customer, mitra) as on_second:
                async with asyncio.timeout(30):
                    while stored(first, sid)["state"] == "ACTIVE":  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                first.proc.send_signal(signal.SIGCONT)  # its expiry timer is overdue now
                code = await asyncio.to_thread(first.proc.wait, 30)
                assert code == 4, first.log_tail()
                assert "LOST THE DATABASE LEASE" in first.log_path.read_text()
                await second.advance_past(stored(second, sid)["grace_deadline"])
                async with asyncio.timeout(30):
                    while stored(first, sid)["state"] != "COMPLETED":  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # a duplicate would arrive right along
        finally:
            first.proc.send_signal(signal.SIGCONT)

    def told(party: int, frame: str, push: str) -> int:
        frames = sum(
            1
            for ws in (on_first[party], on_second[party])
            for f in ws.pending(frame)
            if f["data"]["session_id"] == sid
        )
        pushes = fake_fcm.sent_to(tokens[party])
        return frames + sum(
            1 for m in pushes if m["data"].get("type") == push and m["data"]["session_id"] == sid
        )

    for frame, push in (
        ("session.expired", "session_expired"),
        ("session.completed", "session_ended"),
    ):
        counts = [told(party, frame, push) for party in (0, 1)]  # customer, Mitra
        assert counts == [1, 1], (frame, counts)


def lease_expired(server: ServerProcess, ttl_ms: int) -> bool:
    stale = {"$lt": ["$heartbeat_at", {"$subtract": ["$$NOW", ttl_ms]}]}
    return server.db["leases"].count_documents({"$expr": stale}) == 1


async def test_the_test_clock_is_an_admin_control_that_only_moves_forward(
    server: ServerProcess,
) -> None:
    """POST /v1/test/clock, on this test server (a production server has no such path:
    tests/test_foundation.py)."""
    customer, _ = make_pair(server, "clock")
    assert_error(
        await post(server, customer, "/v1/test/clock", {"advance_seconds": 1}), 403, "wrong_role"
    )
    admin = server.create_user("admin", "ClockAdmin")
    before = server.now()
    for bad in (
        {"advance_seconds": -1},
        {"advance_seconds": "soon"},
        {"advance_seconds": 10**12},
        {"advance_seconds": 1, "rewind": True},
        {},
    ):
        assert_error(await post(server, admin, "/v1/test/clock", bad), 422, "validation_error")
    resp = await post(server, admin, "/v1/test/clock", {"advance_seconds": 0})
    assert resp.status_code == 200, resp.text
    assert abs(parse_time(resp.json()["now"]) - before) < timedelta(seconds=30)
    assert resp.json()["offset_seconds"] == server.clock_offset  # nothing moved it
    moved = await server.advance(90)
    assert moved - before >= timedelta(seconds=90)
