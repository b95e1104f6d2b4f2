"""Realtime chat end to end with real WebSocket clients: conversation, ordering under
concurrency, idempotent retries, lossless reconnect (hello/sync/replay), receipts, typing,
multi-device, ownership, state rules and bad frames."""

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from bson import ObjectId

from tests.support.clients import Actor, WsClient, api, sockets
from tests.support.flows import make_pair, open_active_session, session_view
from tests.support.server import ServerProcess
from tests.support.stored import stored_chat

TYPING_INTERVAL = 0.4


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerProcess:
    return server_factory(env={"HALOCHAT_TYPING_MIN_INTERVAL_SECONDS": str(TYPING_INTERVAL)})


@dataclass
class Chat:
    customer: Actor
    mitra: Actor
    session_id: str


@pytest.fixture
async def chat(server: ServerProcess) -> Chat:
    customer, mitra = make_pair(server, f"-{uuid.uuid4().hex[:6]}")
    session = await open_active_session(server, customer, mitra)
    return Chat(customer, mitra, session["id"])


def cid() -> str:
    return uuid.uuid4().hex


async def send(ws: WsClient, session_id: str, body: str, client_msg_id: str | None = None) -> Any:
    data = {"session_id": session_id, "client_msg_id": client_msg_id or cid(), "body": body}
    return await ws.request("message.send", data)


def assert_error_frame(frame: dict[str, Any], code: str) -> dict[str, Any]:
    assert frame["type"] == "error", frame
    assert frame["error"]["code"] == code, frame
    return frame["error"]


async def history(server: ServerProcess, actor: Actor, session_id: str, **params: Any) -> Any:
    async with api(server.base_url, actor) as http:
        resp = await http.get(f"/v1/sessions/{session_id}/messages", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_conversation_both_ways(server: ServerProcess, chat: Chat) -> None:
    async with sockets(server, chat.customer, chat.mitra) as (c, m):
        ack = await send(c, chat.session_id, "  Halo Bestie!  ")
        assert ack["type"] == "ack", ack
        msg = ack["data"]["message"]
        assert (msg["seq"], msg["body"], msg["sender_role"]) == (1, "Halo Bestie!", "customer")
        assert ack["data"]["replayed"] is False and msg["created_at"] and msg["id"]
        got = await m.wait_for("message.new", session_id=chat.session_id)
        assert got["data"]["message"] == msg

        reply = (await send(m, chat.session_id, "Hai, apa kabar?"))["data"]["message"]
        assert (reply["seq"], reply["sender_id"], reply["sender_role"]) == (
            2,
            chat.mitra.id,
            "mitra",
        )
        got = await c.wait_for("message.new", session_id=chat.session_id)
        assert got["data"]["message"] == reply
        assert not c.pending("message.new") and not m.pending("message.new")  # no echo

    for actor in (chat.customer, chat.mitra):
        page = await history(server, actor, chat.session_id)
        assert [(x["seq"], x["body"], x["status"]) for x in page["messages"]] == [
            (1, "Halo Bestie!", "sent"),
            (2, "Hai, apa kabar?", "sent"),
        ]
        assert page["has_more"] is False
    msgs, _ = stored_chat(server, chat.session_id)
    view = await session_view(server, chat.customer, chat.session_id)
    assert [x["seq"] for x in msgs] == [1, 2] and view["last_seq"] == 2


async def test_http_send_and_history_paging(server: ServerProcess, chat: Chat) -> None:
    async with sockets(server, chat.mitra) as (m,):
        async with api(server.base_url, chat.customer) as http:
            url = f"/v1/sessions/{chat.session_id}/messages"
            for i in range(1, 6):
                resp = await http.post(url, json={"client_msg_id": f"h{i}", "body": f"m{i}"})
                assert resp.status_code == 201, resp.text
                assert resp.json()["message"]["seq"] == i
            again = await http.post(url, json={"client_msg_id": "h3", "body": "m3"})
            assert again.status_code == 200 and again.json()["replayed"] is True
            assert again.json()["message"]["seq"] == 3
            bad = await http.post(url, json={"client_msg_id": "h9", "body": "   "})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
            bad = await http.get(url, params={"limit": "x"})
            assert bad.status_code == 422
        for i in range(1, 6):  # delivered live, in order
            got = await m.wait_for("message.new", session_id=chat.session_id)
            assert got["data"]["message"]["seq"] == i
    seqs = lambda page: [x["seq"] for x in page["messages"]]  # noqa: E731
    page = await history(server, chat.mitra, chat.session_id, limit=2)
    assert (seqs(page), page["has_more"]) == ([4, 5], True)
    page = await history(server, chat.mitra, chat.session_id, limit=2, before_seq=4)
    assert (seqs(page), page["has_more"]) == ([2, 3], True)
    page = await history(server, chat.mitra, chat.session_id, limit=2, before_seq=2)
    assert (seqs(page), page["has_more"]) == ([1], False)
    page = await history(server, chat.mitra, chat.session_id, after_seq=2, limit=2)
    assert (seqs(page), page["has_more"]) == ([3, 4], True)
    page = await history(server, chat.mitra, chat.session_id, after_seq=4)
    assert (seqs(page), page["has_more"]) == ([5], False)
    assert len(stored_chat(server, chat.session_id)[0]) == 5


async def test_concurrent_sends_one_gap_free_order(server: ServerProcess, chat: Chat) -> None:
    n = 25
    async with sockets(server, chat.customer, chat.mitra) as (c, m):
        acks = await asyncio.gather(
            *(send(c, chat.session_id, f"c{i}") for i in range(n)),
            *(send(m, chat.session_id, f"m{i}") for i in range(n)),
        )
        assert all(a["type"] == "ack" for a in acks), acks
        by_seq = {a["data"]["message"]["seq"]: a["data"]["message"] for a in acks}
        assert sorted(by_seq) == list(range(1, 2 * n + 1))  # unique and gap-free
        views = {}
        for me, other_role in ((c, "mitra"), (m, "customer")):
            got = [await me.wait_for("message.new", session_id=chat.session_id) for _ in range(n)]
            seqs = [f["data"]["message"]["seq"] for f in got]
            assert seqs == sorted(seqs), seqs  # live delivery in seq order
            assert all(f["data"]["message"]["sender_role"] == other_role for f in got)
            own = [x for x in by_seq.values() if x["sender_role"] != other_role]
            views[other_role] = sorted(
                [(x["seq"], x["id"]) for x in own]
                + [(f["data"]["message"]["seq"], f["data"]["message"]["id"]) for f in got]
            )
        assert (
            views["mitra"] == views["customer"] == sorted((s, x["id"]) for s, x in by_seq.items())
        )
    page = await history(server, chat.customer, chat.session_id, limit=200)
    assert [(x["seq"], x["id"]) for x in page["messages"]] == views["mitra"]
    msgs, _ = stored_chat(server, chat.session_id)
    view = await session_view(server, chat.mitra, chat.session_id)
    assert len(msgs) == 2 * n and view["last_seq"] == 2 * n


async def test_retried_client_msg_id_is_not_duplicated(server: ServerProcess, chat: Chat) -> None:
    async with sockets(server, chat.customer, chat.mitra) as (c, m):
        first = await send(c, chat.session_id, "once", "retry-1")
        again = await asyncio.gather(
            *(send(c, chat.session_id, "once", "retry-1") for _ in range(3))
        )
        assert all(a["data"]["message"] == first["data"]["message"] for a in again)
        assert all(a["data"]["replayed"] is True for a in again)
        nxt = await send(c, chat.session_id, "next")
        assert nxt["data"]["message"]["seq"] == 2  # no seq consumed by the retries
        seqs = [(await m.wait_for("message.new"))["data"]["message"]["seq"] for _ in range(2)]
        assert seqs == [1, 2] and not m.pending("message.new")
        # The other party reusing the id is refused, not confused with a retry.
        clash = await send(m, chat.session_id, "mine", "retry-1")
        assert_error_frame(clash, "duplicate")
    msgs, _ = stored_chat(server, chat.session_id)
    view = await session_view(server, chat.customer, chat.session_id)
    assert [x["client_msg_id"] for x in msgs] != [] and len(msgs) == 2 and view["last_seq"] == 2


async def test_reconnect_replays_missed_messages_once_in_order(
    server: ServerProcess, chat: Chat
) -> None:
    async with sockets(server, chat.customer, chat.mitra) as (c, m):
        await send(m, chat.session_id, "before")
        assert (await c.wait_for("message.new"))["data"]["message"]["seq"] == 1
    async with sockets(server, chat.mitra) as (m,):  # customer offline meanwhile
        for i in range(2, 5):
            await send(m, chat.session_id, f"missed {i}")
        async with api(server.base_url, chat.mitra) as http:
            resp = await http.post(
                f"/v1/sessions/{chat.session_id}/messages",
                json={"client_msg_id": cid(), "body": "missed 5"},
            )
            assert resp.status_code == 201
        foreign = await open_active_session(server, *make_pair(server, "-foreign"))
        async with sockets(server, chat.customer) as (c,):
            hello = await c.request(
                "hello",
                {"sessions": {chat.session_id: 1, foreign["id"]: 0, "nope": 0, str(ObjectId()): 0}},
            )
            assert hello["type"] == "ack", hello
            sync = await c.wait_for("sync")
            views = {s["id"]: s for s in sync["data"]["sessions"]}
            assert views[chat.session_id]["last_seq"] == 5 and foreign["id"] not in views
            assert views[chat.session_id]["state"] == "ACTIVE"
            assert "watermarks" in views[chat.session_id]
            errors = {e["session_id"]: e["code"] for e in sync["data"]["errors"]}
            assert set(errors.values()) == {"session_not_found"} and len(errors) == 3
            assert foreign["id"] in errors and "nope" in errors
            replay = [await c.wait_for("message.new") for _ in range(4)]
            assert [f["data"]["message"]["seq"] for f in replay] == [2, 3, 4, 5]
            assert [f["data"]["message"]["body"] for f in replay][-1] == "missed 5"
            await send(m, chat.session_id, "live 6")
            live = await c.wait_for("message.new")
            assert live["data"]["message"]["seq"] == 6 and not c.pending("message.new")
            assert (await c.request("ping"))["type"] == "pong"  # still usable


async def test_hello_races_live_sends_exactly_once(server: ServerProcess, chat: Chat) -> None:
    """Messages keep flowing while the customer reconnects: each seq arrives exactly once,
    and everything after the sync frame is in seq order."""
    total = 30
    async with sockets(server, chat.mitra) as (m,):
        for i in range(5):
            await send(m, chat.session_id, f"early {i}")

        async def keep_sending() -> None:
            for i in range(total - 5):
                await send(m, chat.session_id, f"live {i}")

        sender = asyncio.create_task(keep_sending())
        c = await WsClient.open(server.ws_url, chat.customer)
        try:
            await c.wait_for("ready")
            await asyncio.sleep(0.05)  # let some live frames land before the hello
            assert (await c.request("hello", {"sessions": {chat.session_id: 2}}))["type"] == "ack"
            await sender

            def complete(frames: list[dict[str, Any]]) -> bool:
                news = [f for f in frames if f["type"] == "message.new"]
                return len(news) >= total - 2 and any(f["type"] == "sync" for f in frames)

            async with asyncio.timeout(10), c._cond:  # frames stay in place: order matters
                while not complete(c.frames):
                    await c._cond.wait()
            order = [f["type"] for f in c.frames]
            seqs = [f["data"]["message"]["seq"] for f in c.frames if f["type"] == "message.new"]
        finally:
            await c.close()
    assert sorted(seqs) == list(range(3, total + 1)), seqs  # exactly once, nothing missing
    sync_at = order.index("sync")
    after_sync = [
        f["data"]["message"]["seq"] for f in c.frames[sync_at + 1 :] if f["type"] == "message.new"
    ]
    assert after_sync == sorted(after_sync)


async def test_receipts_reach_the_sender(server: ServerProcess, chat: Chat) -> None:
    async with sockets(server, chat.customer, chat.mitra) as (c, m):
        for body in ("one", "two"):
            await send(m, chat.session_id, body)
        rcpt = {"session_id": chat.session_id}
        ack = await c.request("receipt", {**rcpt, "kind": "delivered", "seq": 2})
        assert ack["data"] == {**rcpt, "by_role": "customer", "delivered": 2, "read": 0}
        got = await m.wait_for("receipt.updated", session_id=chat.session_id)
        assert got["data"] == ack["data"]
        ack = await c.request("receipt", {**rcpt, "kind": "read", "seq": 1})
        assert (ack["data"]["delivered"], ack["data"]["read"]) == (2, 1)
        got = await m.wait_for("receipt.updated", session_id=chat.session_id)
        assert (got["data"]["delivered"], got["data"]["read"]) == (2, 1)
        back = await c.request("receipt", {**rcpt, "kind": "delivered", "seq": 1})
        assert (back["data"]["delivered"], back["data"]["read"]) == (2, 1)  # never backwards
        too_far = await c.request("receipt", {**rcpt, "kind": "read", "seq": 3})
        assert_error_frame(too_far, "validation_error")
        bad = await c.request("receipt", {**rcpt, "kind": "seen", "seq": 1})
        assert_error_frame(bad, "validation_error")
        async with api(server.base_url, chat.mitra) as http:  # HTTP receipt from the Mitra
            await send(c, chat.session_id, "three")
            resp = await http.post(
                f"/v1/sessions/{chat.session_id}/receipts", json={"kind": "read", "seq": 3}
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["receipt"]["by_role"] == "mitra"
        got = await c.wait_for("receipt.updated", session_id=chat.session_id, by_role="mitra")
        assert (got["data"]["delivered"], got["data"]["read"]) == (3, 3)
        # The Mitra's own devices hear about its HTTP receipt too (multi-device).
        await m.wait_for("receipt.updated", session_id=chat.session_id, by_role="mitra")
        await asyncio.sleep(0.1)
        assert not m.pending("receipt.updated")  # the no-op receipt was not forwarded
    page = await history(server, chat.mitra, chat.session_id)
    assert [x["status"] for x in page["messages"]] == ["read", "delivered", "read"]
    session = stored_chat(server, chat.session_id)[1]
    assert session["watermarks"]["customer"] == {"delivered": 2, "read": 1}
    assert session["watermarks"]["mitra"] == {"delivered": 3, "read": 3}


async def test_typing_is_forwarded_and_rate_limited(server: ServerProcess, chat: Chat) -> None:
    async with sockets(server, chat.customer, chat.mitra) as (c, m):
        data = {"session_id": chat.session_id, "state": "start"}
        assert (await c.request("typing", data))["data"] == {"forwarded": True}
        got = await m.wait_for("typing", session_id=chat.session_id)
        assert got["data"]["state"] == "start" and got["data"]["role"] == "customer"
        assert got["data"]["user_id"] == chat.customer.id
        assert (await c.request("typing", {**data, "state": "stop"}))["data"] == {
            "forwarded": False
        }
        # The Mitra's own limit is separate.
        assert (await m.request("typing", data))["data"] == {"forwarded": True}
        await c.wait_for("typing", session_id=chat.session_id, role="mitra")
        await asyncio.sleep(TYPING_INTERVAL + 0.1)
        assert (await c.request("typing", {**data, "state": "stop"}))["data"] == {"forwarded": True}
        got = await m.wait_for("typing", session_id=chat.session_id)
        assert got["data"]["state"] == "stop" and not m.pending("typing")
        bad = await c.request("typing", {**data, "state": "dancing"})
        assert_error_frame(bad, "validation_error")


async def test_multi_device_delivery(server: ServerProcess, chat: Chat) -> None:
    async with sockets(server, chat.customer, chat.customer, chat.mitra, chat.mitra) as socks:
        c1, c2, m1, m2 = socks
        msg = (await send(c1, chat.session_id, "from phone"))["data"]["message"]
        for other in (c2, m1, m2):
            got = await other.wait_for("message.new", session_id=chat.session_id)
            assert got["data"]["message"] == msg
        ack = await m1.request("receipt", {"session_id": chat.session_id, "kind": "read", "seq": 1})
        for other in (c1, c2, m2):
            got = await other.wait_for("receipt.updated", session_id=chat.session_id)
            assert got["data"] == ack["data"]
        await asyncio.sleep(0.1)
        assert not c1.pending("message.new") and not m1.pending("receipt.updated")


async def test_third_user_is_refused_everywhere(server: ServerProcess, chat: Chat) -> None:
    before = stored_chat(server, chat.session_id)
    sid = chat.session_id
    intruders = [server.create_user("customer", "Nosy"), server.create_user("mitra", "Other")]
    async with sockets(server, chat.customer, chat.mitra, *intruders) as (c, m, *xs):
        for x in xs:
            for type_, data in (
                ("message.send", {"session_id": sid, "client_msg_id": cid(), "body": "hi"}),
                ("receipt", {"session_id": sid, "kind": "read", "seq": 1}),
                ("typing", {"session_id": sid, "state": "start"}),
            ):
                assert_error_frame(await x.request(type_, data), "session_not_found")
            await x.request("hello", {"sessions": {sid: 0}})
            sync = await x.wait_for("sync")
            assert sync["data"]["errors"][0]["session_id"] == sid
            assert sid not in {s["id"] for s in sync["data"]["sessions"]}
        for actor in intruders:
            async with api(server.base_url, actor) as http:
                url = f"/v1/sessions/{sid}"
                for resp in (
                    await http.get(f"{url}/messages"),
                    await http.post(f"{url}/messages", json={"client_msg_id": "x", "body": "hi"}),
                    await http.post(f"{url}/receipts", json={"kind": "read", "seq": 1}),
                ):
                    assert resp.status_code == 404, resp.text
                    assert resp.json()["error"]["code"] == "session_not_found"
        assert (await c.request("ping"))["type"] == "pong"
        assert (await m.request("ping"))["type"] == "pong"
        assert not (c.pending("message.new") + c.pending("typing") + m.pending("typing"))
    assert stored_chat(server, chat.session_id) == before


async def test_sending_outside_active_is_refused(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, "-states")
    async with api(server.base_url, customer) as http:
        created = await http.post("/v1/sessions", json={"choice": "tier", "tier_id": "15m"})
        assert created.status_code == 201, created.text
        pairing_id = created.json()["session"]["id"]
        async with sockets(server, customer) as (c,):
            refused = await send(c, pairing_id, "too early")
            assert assert_error_frame(refused, "invalid_state")["details"] == {"state": "PAIRING"}
            rcpt = await c.request("receipt", {"session_id": pairing_id, "kind": "read", "seq": 1})
            assert_error_frame(rcpt, "invalid_state")
            assert (await http.post(f"/v1/sessions/{pairing_id}/cancel")).status_code == 200
            refused = await send(c, pairing_id, "too late")
            assert refused["error"]["details"] == {"state": "CANCELLED"}
        resp = await http.post(
            f"/v1/sessions/{pairing_id}/messages", json={"client_msg_id": "a", "body": "x"}
        )
        assert resp.status_code == 409 and resp.json()["error"]["details"]["state"] == "CANCELLED"
    assert stored_chat(server, pairing_id)[0] == []

    session = await open_active_session(server, customer, mitra)
    sid = session["id"]
    async with sockets(server, customer, mitra) as (c, m):
        await send(m, sid, "bye soon")
        async with api(server.base_url, customer) as http:
            assert (await http.post(f"/v1/sessions/{sid}/end")).status_code == 200
        refused = await send(c, sid, "after the end")
        assert refused["error"]["code"] == "invalid_state"
        assert refused["error"]["details"]["state"] in ("CLOSING", "COMPLETED")
        typing = await c.request("typing", {"session_id": sid, "state": "start"})
        assert_error_frame(typing, "invalid_state")
        # Reading after the end is fine.
        ok = await c.request("receipt", {"session_id": sid, "kind": "read", "seq": 1})
        assert ok["type"] == "ack" and ok["data"]["read"] == 1
        await m.wait_for("receipt.updated", session_id=sid)
    msgs, doc = stored_chat(server, sid)
    assert len(msgs) == 1 and doc["last_seq"] == 1


async def test_bad_frames_get_errors_and_the_socket_survives(
    server: ServerProcess, chat: Chat
) -> None:
    sid = chat.session_id
    async with sockets(server, chat.customer) as (c,):
        await c.send("{not json")
        assert_error_frame(await c.wait_for("error"), "invalid_json")
        await c.send("[1, 2]")
        assert_error_frame(await c.wait_for("error"), "invalid_json")
        await c.send(json.dumps({"type": "message.send", "id": "big", "data": {"x": "y" * 70_000}}))
        assert_error_frame(await c.wait_for("error"), "payload_too_large")
        assert_error_frame(await c.request("bogus.type", {}), "unknown_frame")
        cases: list[tuple[dict[str, Any], str]] = [
            ({"session_id": sid, "client_msg_id": cid()}, "validation_error"),  # no body
            ({"session_id": sid, "client_msg_id": cid(), "body": 5}, "validation_error"),
            ({"session_id": sid, "client_msg_id": cid(), "body": " \n\t "}, "validation_error"),
            ({"session_id": sid, "client_msg_id": cid(), "body": "x" * 4001}, "validation_error"),
            ({"session_id": sid, "client_msg_id": "", "body": "hi"}, "validation_error"),
            ({"session_id": sid, "client_msg_id": "c" * 65, "body": "hi"}, "validation_error"),
            ({"session_id": sid, "client_msg_id": cid(), "body": "hi", "x": 1}, "validation_error"),
            (
                {"session_id": "not-an-id", "client_msg_id": cid(), "body": "hi"},
                "session_not_found",
            ),
            (
                {"session_id": str(ObjectId()), "client_msg_id": cid(), "body": "hi"},
                "session_not_found",
            ),
        ]
        for data, code in cases:
            assert_error_frame(await c.request("message.send", data), code)
        rcpt = await c.request("receipt", {"session_id": sid, "kind": "read", "seq": "1"})
        assert_error_frame(rcpt, "validation_error")
        assert_error_frame(await c.request("hello", {"sessions": {sid: -1}}), "validation_error")
        assert_error_frame(await c.request("hello", {"sessions": [sid]}), "validation_error")
        assert (await c.request("ping"))["type"] == "pong"
        ok = await send(c, sid, "x" * 4000)
        assert ok["type"] == "ack" and ok["data"]["message"]["seq"] == 1
    msgs, _ = stored_chat(server, sid)
    assert len(msgs) == 1 and (await session_view(server, chat.customer, sid))["last_seq"] == 1


async def test_connection_auth_ways_and_4401(server: ServerProcess, chat: Chat) -> None:
    m = await WsClient.open(server.ws_url, chat.mitra)
    try:
        await m.wait_for("ready")
        for kwargs in ({"query": f"token={chat.customer.token}"}, {"auth_frame": True}):
            c = await WsClient.open(server.ws_url, chat.customer, **kwargs)
            try:
                ready = await c.wait_for("ready")
                assert ready["data"] == {
                    "user_id": chat.customer.id,
                    "role": "customer",
                    "display_name": chat.customer.name,
                }
                assert (await send(c, chat.session_id, f"via {kwargs}"))["type"] == "ack"
                await m.wait_for("message.new", session_id=chat.session_id)
            finally:
                await c.close()
        bad = await m.request("app.state", {"state": "asleep"})
        assert_error_frame(bad, "validation_error")
    finally:
        await m.close()
    bad_token = Actor(chat.customer.id, "customer", "x", chat.customer.token + "x")
    for kwargs in ({}, {"query": f"token={bad_token.token}"}):
        c = await WsClient.open(server.ws_url, bad_token, **kwargs)
        err = await c.wait_for("error")
        assert err["error"]["code"] == "invalid_token"
        await c.conn.wait_closed()
        assert c.conn.close_code == 4401
    c = await WsClient.open(server.ws_url)
    await c.send({"type": "ping", "id": "p"})
    assert (await c.wait_for("error"))["error"]["code"] == "auth_required"
    await c.conn.wait_closed()
    assert c.conn.close_code == 4401
