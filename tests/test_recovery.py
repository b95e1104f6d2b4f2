"""Restart recovery: sessions left in every open state, the server killed (SIGKILL, no
shutdown hooks), their deadlines passing while it is down, then a restart. Each session
reaches the right state, the parties get pushes for what happened while their apps were not
connected, and see the final state when they reconnect (GET and the WebSocket hello/sync).

The server runs on the test clock (docs/testing.md): one tier "minute" is 10 minutes, the
warning comes 60 s before the end, the grace period is an hour, and deadlines fall only when
the test advances the clock. Time passing while the server is down is simulated by moving
the stored deadlines back; what must still be running after the restart gets deadlines
half an hour after the crash, and the clock is advanced to them once the parties are back."""

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from beanie import PydanticObjectId

from tests.support.clients import Actor, WsClient, api
from tests.support.fake_fcm import FakeFcm
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess

LEAD, GRACE = 60, 3600  # seconds of the test clock
TIMINGS = {
    "HALOCHAT_MINUTE_SECONDS": "600",
    "HALOCHAT_WARNING_LEAD_SECONDS": str(LEAD),
    "HALOCHAT_GRACE_SECONDS": str(GRACE),
}
STILL_RUNNING = timedelta(minutes=30)


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerProcess:
    return server_factory(env=TIMINGS, clock=True)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def post(server: ServerProcess, actor: Actor, path: str, body: Any = None) -> Any:
    async with api(server.base_url, actor) as http:
        resp = await http.post(path, json=body)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


async def state_of(server: ServerProcess, actor: Actor, sid: str) -> dict[str, Any]:
    async with api(server.base_url, actor) as http:
        resp = await http.get(f"/v1/sessions/{sid}")
    assert resp.status_code == 200, resp.text
    return resp.json()["session"]


async def register_device(server: ServerProcess, actor: Actor) -> str:
    token = f"recovery-{actor.role}-{actor.id}"
    async with api(server.base_url, actor) as http:
        resp = await http.put("/v1/devices", json={"device_id": "phone", "fcm_token": token})
    assert resp.status_code == 200, resp.text
    return token


async def expired_sessions(server: ServerProcess, *pairs: tuple[Actor, Actor]) -> list[str]:
    """One short session per pair, run out (the clock advanced past their ends_at) while the
    customers watched."""
    watchers = [await WsClient.open(server.ws_url, customer) for customer, _ in pairs]
    try:
        sessions = [
            await open_active_session(server, customer, mitra, tier_id="test-1m")
            for customer, mitra in pairs
        ]
        await server.advance_past(max(parse_time(s["ends_at"]) for s in sessions))
        for ws, session in zip(watchers, sessions, strict=True):
            await ws.wait_for("session.expired", session_id=session["id"])
    finally:
        for ws in watchers:
            await ws.close()
    return [s["id"] for s in sessions]


def push_types(fake_fcm: FakeFcm, token: str, sid: str) -> list[str]:
    return [m["data"]["type"] for m in fake_fcm.sent_to(token) if m["data"]["session_id"] == sid]


async def test_restart_after_the_deadlines_passed(server: ServerProcess, fake_fcm: FakeFcm) -> None:
    names = (
        "pairing",
        "dead",
        "overdue",
        "rearm",
        "expired",
        "pending",
        "closing_done",
        "closing_live",
    )
    people = {name: make_pair(server, f"rec-{name}") for name in names}
    sid: dict[str, str] = {}

    # --- leave sessions in every open state --------------------------------------------
    sid["expired"], sid["pending"] = await expired_sessions(
        server, people["expired"], people["pending"]
    )
    customer = people["pending"][0]
    await post(server, customer, f"/v1/sessions/{sid['pending']}/extension", {"tier_id": "15m"})
    for name in ("dead", "overdue", "rearm", "closing_done", "closing_live"):
        sid[name] = (await open_active_session(server, *people[name], tier_id="15m"))["id"]
    customer, mitra = people["closing_done"]
    await post(server, mitra, f"/v1/sessions/{sid['closing_done']}/end")
    await post(server, customer, f"/v1/sessions/{sid['closing_done']}/closure", {"text": "Bye"})
    await post(server, people["closing_live"][0], f"/v1/sessions/{sid['closing_live']}/end")
    created = await post(
        server, people["pairing"][0], "/v1/sessions", {"choice": "tier", "tier_id": "15m"}
    )
    sid["pairing"] = created["session"]["id"]
    tokens = {
        (name, i): await register_device(server, actor)
        for name, pair in people.items()
        for i, actor in enumerate(pair)
    }
    states = {
        name: server.db["sessions"].find_one({"_id": PydanticObjectId(s)})["state"]
        for name, s in sid.items()
    }
    assert states == {
        "pairing": "PAIRING",
        "dead": "ACTIVE",
        "overdue": "ACTIVE",
        "rearm": "ACTIVE",
        "expired": "EXPIRED",
        "pending": "EXTENSION_PENDING",
        "closing_done": "CLOSING",
        "closing_live": "CLOSING",
    }

    # --- crash, time passes, restart -----------------------------------------------------
    server.kill()
    now = server.now()
    moves = {
        "pairing": {"pairing_deadline": now - timedelta(seconds=1)},
        "dead": {"ends_at": now - timedelta(seconds=GRACE + 60)},  # past ends_at + grace
        "overdue": {"ends_at": now - timedelta(seconds=1)},  # past ends_at, within grace
        "rearm": {"ends_at": now + STILL_RUNNING},  # still running
        "expired": {"grace_deadline": now - timedelta(seconds=1)},
        "pending": {"grace_deadline": now - timedelta(seconds=1)},
        "closing_done": {"grace_deadline": now - timedelta(seconds=1)},
        "closing_live": {"grace_deadline": now + STILL_RUNNING},
    }
    for name, fields in moves.items():
        server.db["sessions"].update_one({"_id": PydanticObjectId(sid[name])}, {"$set": fields})
    await asyncio.to_thread(server.start)

    # --- settled at start-up, before anyone reconnects -----------------------------------
    expected = {
        "pairing": "UNMATCHED",
        "dead": "COMPLETED",
        "overdue": "EXPIRED",
        "rearm": "ACTIVE",
        "expired": "COMPLETED",
        "pending": "COMPLETED",
        "closing_done": "COMPLETED",
        "closing_live": "CLOSING",
    }
    seen = {name: await state_of(server, people[name][0], s) for name, s in sid.items()}
    assert {name: s["state"] for name, s in seen.items()} == expected
    assert seen["dead"]["end_reason"] == "time_up"
    assert seen["pending"]["extension"]["status"] == "lapsed"
    assert seen["closing_done"]["closures"]["customer"]["text"] == "Bye"
    assert seen["closing_done"]["closures"]["mitra"] is None
    assert seen["overdue"]["grace_deadline"] > now.isoformat()  # a fresh grace period

    # Offline parties were pushed what happened while the server was down.
    for name in ("dead", "expired", "pending", "closing_done"):
        for i in (0, 1):
            fake_fcm.wait_for(
                tokens[name, i],
                type="session_ended",
                session_id=sid[name],
                completed_by="grace_elapsed",
            )
    for i in (0, 1):
        fake_fcm.wait_for(tokens["overdue", i], type="session_expired", session_id=sid["overdue"])
    # The long-dead session was completed directly: no stale "extend?" offer.
    assert "session_expired" not in push_types(fake_fcm, tokens["dead", 0], sid["dead"])
    fake_fcm.wait_for(tokens["pairing", 0], type="pairing_result", session_id=sid["pairing"])

    # --- the parties reconnect ------------------------------------------------------------
    clients = {
        (name, i): await WsClient.open(server.ws_url, actor)
        for name, pair in people.items()
        for i, actor in enumerate(pair)
    }
    try:
        for (name, i), ws in clients.items():
            await ws.wait_for("ready")
            if (name, i) == ("pairing", 1):
                continue  # that Mitra was only offered the request, never a party
            ack = await ws.request("hello", {"sessions": {sid[name]: 0}})
            assert ack["type"] == "ack", ack
            sync = await ws.wait_for("sync")
            listed = {s["id"]: s["state"] for s in sync["data"]["sessions"]}
            assert listed[sid[name]] == expected[name], (name, i, listed)

        # Timers were re-armed for what is still running: each fires when its time comes.
        rearm_ends = now + STILL_RUNNING
        await server.advance_past(rearm_ends - timedelta(seconds=LEAD))
        for i in (0, 1):
            await clients["rearm", i].wait_for("session.one_minute_left", session_id=sid["rearm"])
            assert not clients["rearm", i].pending("session.expired")
            assert not clients["closing_live", i].pending("session.completed")
        await server.advance_past(rearm_ends)  # closing_live's grace deadline too
        for i in (0, 1):
            await clients["rearm", i].wait_for("session.expired", session_id=sid["rearm"])
            done = await clients["closing_live", i].wait_for(
                "session.completed", session_id=sid["closing_live"]
            )
            assert done["data"]["completed_by"] == "grace_elapsed"

        # The session that expired at start-up carries on: extension, accepted, ACTIVE.
        customer, mitra = people["overdue"]
        ext = await post(
            server, customer, f"/v1/sessions/{sid['overdue']}/extension", {"tier_id": "test-1m"}
        )
        await clients["overdue", 1].wait_for("session.extension_requested")
        answer = {"extension_id": ext["extension"]["id"], "accept": True}
        await post(server, mitra, f"/v1/sessions/{sid['overdue']}/extension/answer", answer)
        resumed = await clients["overdue", 0].wait_for("session.resumed", session_id=sid["overdue"])
        assert resumed["data"]["session"]["state"] == "ACTIVE"
        await server.advance_past(resumed["data"]["ends_at"])
        await clients["overdue", 0].wait_for("session.expired", session_id=sid["overdue"])
    finally:
        for ws in clients.values():
            await ws.close()
