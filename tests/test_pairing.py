"""Pairing end to end: options, chat request, offer to Mitras, first accept wins, timeout,
cancel, roles and ownership; real server, real WebSocket clients, the fake FCM endpoint.
The server runs on the test clock (docs/testing.md): a pairing times out when the timeout
test advances the clock past its deadline."""

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from bson import ObjectId

from tests.support.clients import Actor, api, sockets
from tests.support.fake_fcm import FakeFcm
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess

PAIRING_TIMEOUT = 600  # seconds of the test clock
TIER = {"choice": "tier", "tier_id": "15m"}
FREE_TRIAL = {"choice": "free_trial"}


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerProcess:
    return server_factory(
        env={"HALOCHAT_PAIRING_TIMEOUT_SECONDS": str(PAIRING_TIMEOUT)}, clock=True
    )


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code, error
    return error


def only_these_mitras_available(server: ServerProcess, count: int, tag: str) -> list[Actor]:
    """Earlier tests' Mitras go unavailable so each test knows exactly who is offered."""
    server.db["users"].update_many({"role": "mitra"}, {"$set": {"available": False}})
    return [server.create_user("mitra", f"Bestie{tag}{i}", available=True) for i in range(count)]


def snapshot(server: ServerProcess) -> dict[str, list[dict[str, Any]]]:
    """Everything pairing can change, to assert that a rejected request changed nothing."""
    return {
        name: list(server.db[name].find({}, sort=[("_id", 1)]))
        for name in ("sessions", "transactions", "users")
    }


async def test_flows_helper_opens_an_active_session(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, "flow")
    session = await open_active_session(server, customer, mitra)
    assert session["state"] == "ACTIVE"
    assert session["mitra"] == {"id": mitra.id, "name": mitra.name}
    assert session["other_party"]["id"] == mitra.id


async def test_happy_path_events_on_both_sides(server: ServerProcess) -> None:
    mitras = only_these_mitras_available(server, 3, "happy")
    customer = server.create_user("customer", "Ayu")
    async with sockets(server, customer, *mitras) as (cws, *mws):
        async with api(server.base_url, customer) as http:
            created = await http.post("/v1/sessions", json=TIER)
        assert created.status_code == 201, created.text
        body = created.json()
        session = body["session"]
        sid = session["id"]
        assert session["state"] == "PAIRING"
        assert session["tier"] == {
            "kind": "tier",
            "tier_id": "15m",
            "label": "15 menit",
            "minutes": 15,
            "price": 15_000,
            "currency": "IDR",
        }
        assert session["pairing_deadline"] and session["mitra"] is None
        txn = body["transaction"]
        assert (txn["kind"], txn["status"], txn["session_id"]) == ("tier", "paid", sid)

        status = await cws.wait_for("pairing.status", session_id=sid)
        assert status["data"]["state"] == "PAIRING"
        assert status["data"]["offered_to_count"] == 3
        for ws in mws:
            offer = await ws.wait_for("chat.request", session_id=sid)
            assert offer["data"]["customer"] == {"id": customer.id, "name": "Ayu"}
            assert offer["data"]["minutes"] == 15
            assert offer["data"]["label"] == "15 menit"
            assert offer["data"]["pairing_deadline"]

        async with api(server.base_url, mitras[0]) as http:
            listed = (await http.get("/v1/mitra/requests")).json()["requests"]
            assert [r["session_id"] for r in listed] == [sid]
            accepted = await http.post(f"/v1/sessions/{sid}/accept")
        assert accepted.status_code == 200, accepted.text
        active = accepted.json()["session"]
        assert active["state"] == "ACTIVE"
        assert active["mitra"] == {"id": mitras[0].id, "name": mitras[0].name}
        assert active["other_party"] == {"id": customer.id, "name": "Ayu", "role": "customer"}
        started_at = datetime.fromisoformat(active["started_at"])
        assert (datetime.fromisoformat(active["ends_at"]) - started_at).total_seconds() == 15 * 60

        started = await cws.wait_for("session.started")
        assert started["data"]["session"]["id"] == sid
        assert started["data"]["session"]["other_party"]["id"] == mitras[0].id
        assert (await mws[0].wait_for("session.started"))["data"]["session"]["id"] == sid
        for ws in mws[1:]:
            await ws.wait_for("chat.request_taken", session_id=sid)
        assert not mws[0].pending("chat.request_taken")

    async with api(server.base_url, mitras[1]) as http:
        assert_error(await http.post(f"/v1/sessions/{sid}/accept"), 409, "request_taken")
        assert (await http.get("/v1/mitra/requests")).json()["requests"] == []
        # A Mitra who is not a party cannot read the session.
        assert_error(await http.get(f"/v1/sessions/{sid}"), 404, "session_not_found")
    async with api(server.base_url, customer) as http:
        got = (await http.get(f"/v1/sessions/{sid}")).json()["session"]
    assert got["state"] == "ACTIVE" and got["mitra"]["id"] == mitras[0].id


async def test_three_mitras_accept_at_the_same_instant(server: ServerProcess) -> None:
    mitras = only_these_mitras_available(server, 3, "race")
    customer = server.create_user("customer", "Budi")
    async with api(server.base_url, customer) as http:
        sid = (await http.post("/v1/sessions", json=TIER)).json()["session"]["id"]
    clients = [api(server.base_url, m) for m in mitras]
    try:
        answers = await asyncio.gather(*(c.post(f"/v1/sessions/{sid}/accept") for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409, 409], [a.text for a in answers]
    for a in answers:
        if a.status_code == 409:
            assert a.json()["error"]["code"] == "request_taken"
    winner = next(m for m, a in zip(mitras, answers, strict=True) if a.status_code == 200)
    stored = server.db["sessions"].find_one({"_id": ObjectId(sid)})
    assert stored["state"] == "ACTIVE"
    assert str(stored["mitra_id"]) == winner.id


async def test_options_before_and_after_a_transaction(server: ServerProcess) -> None:
    only_these_mitras_available(server, 1, "opts")
    customer = server.create_user("customer", "Citra")
    async with api(server.base_url, customer) as http:
        options = (await http.get("/v1/chat/options")).json()
        assert options == {"kind": "free_trial", "free_trial": {"minutes": 5}}

        created = await http.post("/v1/sessions", json=FREE_TRIAL)
        assert created.status_code == 201, created.text
        assert created.json()["session"]["tier"]["kind"] == "free_trial"
        assert created.json()["session"]["tier"]["minutes"] == 5
        assert created.json()["transaction"]["kind"] == "free_trial"
        sid = created.json()["session"]["id"]
        after = (await http.get("/v1/chat/options")).json()
        assert after["kind"] == "tiers"
        assert {t["id"] for t in after["tiers"]} >= {"15m", "30m", "60m"}
        assert {"id", "label", "minutes", "price", "currency"} <= set(after["tiers"][0])

        # A failed (here: cancelled) pairing voids the transaction: the trial is offered again.
        assert (await http.post(f"/v1/sessions/{sid}/cancel")).status_code == 200
        txn = server.db["transactions"].find_one({"session_id": ObjectId(sid)})
        assert txn["status"] == "void" and "free_trial_customer_id" not in txn
        assert (await http.get("/v1/chat/options")).json()["kind"] == "free_trial"

    # A customer with any live transaction (a tier bought earlier) gets tiers only, and a
    # crafted free-trial request is refused without storing anything.
    buyer = server.create_user("customer", "Dewi")
    server.db["transactions"].insert_one(
        {
            "customer_id": ObjectId(buyer.id),
            "session_id": ObjectId(),
            "kind": "tier",
            "tier_id": "15m",
            "minutes": 15,
            "price": 15_000,
            "currency": "IDR",
            "status": "paid",
        }
    )
    before = snapshot(server)
    async with api(server.base_url, buyer) as http:
        assert (await http.get("/v1/chat/options")).json()["kind"] == "tiers"
        assert_error(
            await http.post("/v1/sessions", json=FREE_TRIAL), 409, "free_trial_unavailable"
        )
    assert snapshot(server) == before


async def test_double_free_trial_race(server: ServerProcess) -> None:
    only_these_mitras_available(server, 1, "ft")
    customer = server.create_user("customer", "Eka")
    clients = [api(server.base_url, customer) for _ in range(4)]
    try:
        answers = await asyncio.gather(*(c.post("/v1/sessions", json=FREE_TRIAL) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    created = [a for a in answers if a.status_code == 201]
    assert len(created) == 1, [a.text for a in answers]
    for a in answers:
        if a.status_code != 201:
            assert a.status_code == 409, a.text
            assert a.json()["error"]["code"] in {"free_trial_unavailable", "session_already_open"}
    oid = ObjectId(customer.id)
    assert server.db["sessions"].count_documents({"customer_id": oid}) == 1
    assert server.db["transactions"].count_documents({"customer_id": oid}) == 1
    sid = created[0].json()["session"]["id"]
    async with api(server.base_url, customer) as http:
        assert (await http.post(f"/v1/sessions/{sid}/cancel")).status_code == 200


async def test_concurrent_tier_requests_open_one_session(server: ServerProcess) -> None:
    only_these_mitras_available(server, 1, "tiers")
    customer = server.create_user("customer", "Eko")
    clients = [api(server.base_url, customer) for _ in range(4)]
    try:
        answers = await asyncio.gather(*(c.post("/v1/sessions", json=TIER) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    created = [a for a in answers if a.status_code == 201]
    assert len(created) == 1, [a.text for a in answers]
    sid = created[0].json()["session"]["id"]
    for a in answers:
        if a.status_code != 201:
            assert assert_error(a, 409, "session_already_open")["details"] == {"session_id": sid}
    # The losers' transactions were removed: one session, one transaction.
    oid = ObjectId(customer.id)
    assert server.db["sessions"].count_documents({"customer_id": oid}) == 1
    assert server.db["transactions"].count_documents({"customer_id": oid}) == 1
    async with api(server.base_url, customer) as http:
        assert (await http.post(f"/v1/sessions/{sid}/cancel")).status_code == 200


async def test_second_open_session_is_refused(server: ServerProcess) -> None:
    only_these_mitras_available(server, 1, "second")
    customer = server.create_user("customer", "Fajar")
    async with api(server.base_url, customer) as http:
        sid = (await http.post("/v1/sessions", json=TIER)).json()["session"]["id"]
        before = snapshot(server)
        for body in (TIER, {"choice": "tier", "tier_id": "60m"}, FREE_TRIAL):
            error = assert_error(
                await http.post("/v1/sessions", json=body), 409, "session_already_open"
            )
            assert error["details"] == {"session_id": sid}
        assert snapshot(server) == before
        assert (await http.post(f"/v1/sessions/{sid}/cancel")).status_code == 200
        # Once the session is final, a new request is accepted.
        again = await http.post("/v1/sessions", json=TIER)
        assert again.status_code == 201, again.text
        assert (
            await http.post(f"/v1/sessions/{again.json()['session']['id']}/cancel")
        ).status_code == 200


async def test_cancel_withdraws_the_offers(server: ServerProcess) -> None:
    (mitra,) = only_these_mitras_available(server, 1, "cancel")
    customer = server.create_user("customer", "Gita")
    other_customer = server.create_user("customer", "Hadi")
    async with sockets(server, customer, customer, mitra) as (phone, tablet, mws):
        async with api(server.base_url, customer) as http:
            sid = (await http.post("/v1/sessions", json=TIER)).json()["session"]["id"]
            await mws.wait_for("chat.request", session_id=sid)
            async with api(server.base_url, other_customer) as other:
                assert_error(
                    await other.post(f"/v1/sessions/{sid}/cancel"), 404, "session_not_found"
                )
            async with api(server.base_url, mitra) as m:
                assert_error(await m.post(f"/v1/sessions/{sid}/cancel"), 403, "wrong_role")
            cancelled = await http.post(f"/v1/sessions/{sid}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["session"]["state"] == "CANCELLED"
            for device in (phone, tablet):
                await device.wait_for("session.cancelled", session_id=sid)
            withdrawn = await mws.wait_for("chat.request_withdrawn", session_id=sid)
            assert withdrawn["data"]["reason"] == "cancelled"
            assert_error(await http.post(f"/v1/sessions/{sid}/cancel"), 409, "invalid_state")
            got = (await http.get(f"/v1/sessions/{sid}")).json()["session"]
            assert got["state"] == "CANCELLED" and got["completed_at"]
        async with api(server.base_url, mitra) as m:
            assert_error(await m.post(f"/v1/sessions/{sid}/accept"), 409, "invalid_state")
            assert (await m.get("/v1/mitra/requests")).json()["requests"] == []
    stored = server.db["sessions"].find_one({"_id": ObjectId(sid)})
    assert stored["state"] == "CANCELLED" and "open_customer_id" not in stored
    txn = server.db["transactions"].find_one({"session_id": ObjectId(sid)})
    assert txn["status"] == "void"


async def test_roles_ownership_unknown_ids_and_bad_bodies(server: ServerProcess) -> None:
    (mitra,) = only_these_mitras_available(server, 1, "roles")
    bystander = server.create_user("mitra", "Bystander")  # not available: not offered
    customer = server.create_user("customer", "Indah")
    stranger = server.create_user("customer", "Joko")
    async with api(server.base_url, customer) as http:
        sid = (await http.post("/v1/sessions", json=TIER)).json()["session"]["id"]
    before = snapshot(server)
    unknown = str(ObjectId())

    async with api(server.base_url, customer) as http:
        assert_error(await http.post(f"/v1/sessions/{sid}/accept"), 403, "wrong_role")
        assert_error(
            await http.put("/v1/mitra/availability", json={"available": True}), 403, "wrong_role"
        )
        assert_error(await http.get("/v1/mitra/requests"), 403, "wrong_role")
        assert_error(await http.get(f"/v1/sessions/{unknown}"), 404, "session_not_found")
        assert_error(await http.get("/v1/sessions/not-an-id"), 404, "session_not_found")
        assert_error(await http.post(f"/v1/sessions/{unknown}/cancel"), 404, "session_not_found")
    async with api(server.base_url, stranger) as http:
        assert_error(await http.get(f"/v1/sessions/{sid}"), 404, "session_not_found")
        assert_error(await http.post(f"/v1/sessions/{sid}/cancel"), 404, "session_not_found")
        for body, status, code in (
            (b"{not json", 400, "invalid_json"),
            (b"[]", 400, "invalid_json"),
            (b'{"choice": "gold"}', 422, "validation_error"),
            (b'{"choice": "tier"}', 422, "validation_error"),
            (b'{"choice": "free_trial", "tier_id": "15m"}', 422, "validation_error"),
            (b'{"choice": "tier", "tier_id": "15m", "price": 1}', 422, "validation_error"),
            (b'{"choice": "tier", "tier_id": "nope"}', 404, "tier_not_found"),
        ):
            resp = await http.post(
                "/v1/sessions", content=body, headers={"Content-Type": "application/json"}
            )
            assert_error(resp, status, code)
    async with api(server.base_url, mitra) as http:
        assert_error(await http.post("/v1/sessions", json=TIER), 403, "wrong_role")
        assert_error(await http.get("/v1/chat/options"), 403, "wrong_role")
        assert_error(await http.post(f"/v1/sessions/{unknown}/accept"), 404, "session_not_found")
        assert_error(await http.post("/v1/sessions/xyz/accept"), 404, "session_not_found")
        for bad in ({"available": "yes"}, {}, {"available": True, "x": 1}):
            assert_error(
                await http.put("/v1/mitra/availability", json=bad), 422, "validation_error"
            )
    async with api(server.base_url, bystander) as http:
        assert_error(await http.post(f"/v1/sessions/{sid}/accept"), 404, "session_not_found")
        assert_error(await http.get(f"/v1/sessions/{sid}"), 404, "session_not_found")
    assert snapshot(server) == before

    async with api(server.base_url, customer) as http:
        assert (await http.post(f"/v1/sessions/{sid}/cancel")).status_code == 200


async def test_availability_offers_and_withdraws_pending_requests(server: ServerProcess) -> None:
    (first,) = only_these_mitras_available(server, 1, "avail")
    late = server.create_user("mitra", "Late")
    customer = server.create_user("customer", "Kiki")
    async with sockets(server, late, customer) as (lws, cws):
        async with api(server.base_url, customer) as http:
            sid = (await http.post("/v1/sessions", json=TIER)).json()["session"]["id"]
        await cws.wait_for("pairing.status", session_id=sid, offered_to_count=1)
        async with api(server.base_url, late) as http:
            assert (await http.get("/v1/mitra/requests")).json()["requests"] == []
            went = await http.put("/v1/mitra/availability", json={"available": True})
            assert went.status_code == 200 and went.json()["available"] is True
            await lws.wait_for("chat.request", session_id=sid)
            await cws.wait_for("pairing.status", session_id=sid, offered_to_count=2)
            listed = (await http.get("/v1/mitra/requests")).json()["requests"]
            assert [r["session_id"] for r in listed] == [sid]
            assert listed[0]["customer"] == {"id": customer.id, "name": "Kiki"}
            away = await http.put("/v1/mitra/availability", json={"available": False})
            assert away.json()["available"] is False
            withdrawn = await lws.wait_for("chat.request_withdrawn", session_id=sid)
            assert withdrawn["data"]["reason"] == "mitra_unavailable"
            await cws.wait_for("pairing.status", session_id=sid, offered_to_count=1)
            assert (await http.get("/v1/mitra/requests")).json()["requests"] == []
            assert_error(await http.post(f"/v1/sessions/{sid}/accept"), 404, "session_not_found")
        stored = server.db["users"].find_one({"_id": ObjectId(late.id)})
        assert stored["available"] is False
    async with api(server.base_url, first) as http:
        assert (await http.post(f"/v1/sessions/{sid}/accept")).status_code == 200


async def register_device(server: ServerProcess, actor: Actor, token: str) -> None:
    async with api(server.base_url, actor) as http:
        resp = await http.put("/v1/devices", json={"device_id": f"d-{token}", "fcm_token": token})
        assert resp.status_code == 200, resp.text


async def test_push_to_offline_mitra_and_customer(server: ServerProcess, fake_fcm: FakeFcm) -> None:
    (mitra,) = only_these_mitras_available(server, 1, "push")
    customer = server.create_user("customer", "Lina")
    mitra_token, customer_token = f"mitra-{ObjectId()}", f"cust-{ObjectId()}"
    await register_device(server, mitra, mitra_token)
    await register_device(server, customer, customer_token)
    async with api(server.base_url, customer) as http:
        sid = (await http.post("/v1/sessions", json=TIER)).json()["session"]["id"]

    (msg,) = await asyncio.to_thread(
        fake_fcm.wait_for, mitra_token, 1, type="chat_request", session_id=sid
    )
    data = msg["data"]
    assert data["customer_id"] == customer.id
    assert data["customer_name"] == "Lina"
    assert data["minutes"] == "15"
    assert data["other_role"] == "customer"
    assert msg["notification"]["title"] and msg["android"]["priority"] == "high"

    async with api(server.base_url, mitra) as http:
        assert (await http.post(f"/v1/sessions/{sid}/accept")).status_code == 200
    (result,) = await asyncio.to_thread(
        fake_fcm.wait_for, customer_token, 1, type="pairing_result", session_id=sid
    )
    assert result["data"]["result"] == "ACTIVE"
    assert result["data"]["mitra_id"] == mitra.id
    assert result["data"]["mitra_name"] == mitra.name


async def test_timeout_fails_the_pairing(server: ServerProcess, fake_fcm: FakeFcm) -> None:
    fast = server
    (mitra,) = only_these_mitras_available(fast, 1, "slow")
    customer = fast.create_user("customer", "Maya")
    offline = fast.create_user("customer", "Nina")
    token = f"cust-{ObjectId()}"
    await register_device(fast, offline, token)
    async with sockets(fast, customer, mitra) as (cws, mws):
        async with api(fast.base_url, customer) as http:
            sid = (await http.post("/v1/sessions", json=FREE_TRIAL)).json()["session"]["id"]
        async with api(fast.base_url, offline) as http:
            offline_sid = (await http.post("/v1/sessions", json=TIER)).json()["session"]["id"]
        await mws.wait_for("chat.request", session_id=offline_sid)
        deadline = max(
            fast.db["sessions"].find_one({"_id": ObjectId(x)})["pairing_deadline"]
            for x in (sid, offline_sid)
        )
        await fast.advance(PAIRING_TIMEOUT / 2)  # halfway: both still pairing
        for session_id in (sid, offline_sid):
            stored = fast.db["sessions"].find_one({"_id": ObjectId(session_id)})
            assert stored["state"] == "PAIRING"
        assert not cws.pending("pairing.failed")
        await fast.advance_past(deadline)
        failed = await cws.wait_for("pairing.failed", session_id=sid)
        assert failed["data"]["reason"] == "pairing_timeout"
        assert failed["data"]["session"]["state"] == "UNMATCHED"
        await mws.wait_for("chat.request_withdrawn", session_id=sid)
        await mws.wait_for("chat.request_withdrawn", session_id=offline_sid)
    (push,) = await asyncio.to_thread(
        fake_fcm.wait_for, token, 1, type="pairing_result", session_id=offline_sid
    )
    assert push["data"]["result"] == "UNMATCHED"

    for session_id in (sid, offline_sid):
        stored = fast.db["sessions"].find_one({"_id": ObjectId(session_id)})
        assert stored["state"] == "UNMATCHED" and "open_customer_id" not in stored
        txn = fast.db["transactions"].find_one({"session_id": ObjectId(session_id)})
        assert txn["status"] == "void"
    async with api(fast.base_url, mitra) as http:
        assert_error(await http.post(f"/v1/sessions/{sid}/accept"), 409, "invalid_state")
    async with api(fast.base_url, customer) as http:
        got = (await http.get(f"/v1/sessions/{sid}")).json()["session"]
        assert got["state"] == "UNMATCHED" and got["end_reason"] == "pairing_timeout"
        # The failed free trial was voided, so it is offered again.
        assert (await http.get("/v1/chat/options")).json()["kind"] == "free_trial"

    # With the free trial disabled in the Control Center, nobody gets it, crafted or not.
    admin = fast.create_user("admin", "Admin")
    async with api(fast.base_url, admin) as http:
        config = (await http.get("/v1/admin/config")).json()
        values = {k: v for k, v in config.items() if k not in ("version", "updated_at")}
        put = await http.put("/v1/admin/config", json={**values, "free_trial_enabled": False})
        assert put.status_code == 200, put.text
    async with api(fast.base_url, customer) as http:
        assert (await http.get("/v1/chat/options")).json()["kind"] == "tiers"
        assert_error(
            await http.post("/v1/sessions", json=FREE_TRIAL), 409, "free_trial_unavailable"
        )

    # Restart recovery: a pairing whose deadline passed while the server was down fails at
    # start-up; one still in time gets its timer back and fails when it runs out.
    fast.kill()
    stale, pending = ObjectId(), ObjectId()
    now = fast.now()
    for session_id, deadline in ((stale, -60), (pending, 60)):
        txn_id = ObjectId()
        fast.db["transactions"].insert_one(
            {
                "_id": txn_id,
                "customer_id": ObjectId(customer.id),
                "session_id": session_id,
                "kind": "tier",
                "minutes": 15,
                "status": "paid",
            }
        )
        fast.db["sessions"].insert_one(
            {
                "_id": session_id,
                "customer_id": ObjectId(customer.id) if deadline < 0 else ObjectId(offline.id),
                "customer_name": "x",
                "state": "PAIRING",
                "tier": {"kind": "tier", "tier_id": "15m", "label": "15 menit", "minutes": 15},
                "transaction_ids": [txn_id],
                "offered_to": [],
                "pairing_deadline": now + timedelta(seconds=deadline),
            }
        )
    fast.start()
    assert fast.db["sessions"].find_one({"_id": stale})["state"] == "UNMATCHED"
    assert fast.db["transactions"].find_one({"session_id": stale})["status"] == "void"
    assert fast.db["sessions"].find_one({"_id": pending})["state"] == "PAIRING"
    async with sockets(fast, offline) as (ows,):
        await fast.advance_past(now + timedelta(seconds=60))
        await ows.wait_for("pairing.failed", session_id=str(pending))
    assert fast.db["sessions"].find_one({"_id": pending})["state"] == "UNMATCHED"


async def test_accept_is_idempotent_for_the_winner(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, "idem")
    only_these_mitras_available(server, 0, "idem")
    server.db["users"].update_one({"_id": ObjectId(mitra.id)}, {"$set": {"available": True}})
    async with api(server.base_url, customer) as http:
        sid = (await http.post("/v1/sessions", json=TIER)).json()["session"]["id"]
    async with api(server.base_url, mitra) as http:
        first = await http.post(f"/v1/sessions/{sid}/accept")
        second = await http.post(f"/v1/sessions/{sid}/accept")
    assert first.status_code == second.status_code == 200
    assert first.json()["session"]["started_at"] == second.json()["session"]["started_at"]
