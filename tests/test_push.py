"""Chat-message push: firebase-admin's real send path against the loopback fake FCM.

A recipient with no foreground WebSocket gets an FCM message with a notification and the
deep-link data (docs/push.md); a foreground one gets only the WebSocket frame; dead tokens
are deleted."""

import asyncio
import time
import uuid
from typing import Any

from bson import ObjectId

from tests.support.clients import Actor, WsClient, api
from tests.support.fake_fcm import DEAD_PREFIX, FakeFcm
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess


async def register_device(server: ServerProcess, actor: Actor, token: str) -> None:
    async with api(server.base_url, actor) as http:
        resp = await http.put(
            "/v1/devices", json={"device_id": f"dev-{uuid.uuid4().hex[:8]}", "fcm_token": token}
        )
        assert resp.status_code == 200, resp.text


async def active_chat(server: ServerProcess) -> tuple[Actor, Actor, str]:
    customer, mitra = make_pair(server, f"-{uuid.uuid4().hex[:6]}")
    session = await open_active_session(server, customer, mitra)
    return customer, mitra, session["id"]


async def post_message(server: ServerProcess, actor: Actor, session_id: str, body: str) -> Any:
    async with api(server.base_url, actor) as http:
        resp = await http.post(
            f"/v1/sessions/{session_id}/messages",
            json={"client_msg_id": uuid.uuid4().hex, "body": body},
        )
    assert resp.status_code == 201, resp.text
    return resp.json()["message"]


async def wait_push(fake_fcm: FakeFcm, token: str, count: int = 1, **match: str) -> Any:
    return await asyncio.to_thread(fake_fcm.wait_for, token, count, **match)


async def test_push_to_a_disconnected_recipient_deep_links(
    server: ServerProcess, fake_fcm: FakeFcm
) -> None:
    customer, mitra, sid = await active_chat(server)
    token = f"mitra-{uuid.uuid4().hex}"
    await register_device(server, mitra, token)
    long_body = "Aku lagi sedih banget hari ini, " * 10
    c = await WsClient.open(server.ws_url, customer)
    try:
        await c.wait_for("ready")
        ack = await c.request(
            "message.send", {"session_id": sid, "client_msg_id": "p1", "body": long_body}
        )
        msg = ack["data"]["message"]
    finally:
        await c.close()
    [push] = await wait_push(fake_fcm, token, type="chat_message", session_id=sid)
    assert push["data"] == {
        "type": "chat_message",
        "session_id": sid,
        "sender_id": customer.id,
        "sender_name": customer.name,
        "sender_role": "customer",
        "other_id": customer.id,
        "other_name": customer.name,
        "other_role": "customer",
        "seq": "1",
        "message_id": msg["id"],
    }
    assert push["notification"]["title"] == customer.name
    preview = push["notification"]["body"]
    assert len(preview) <= 100 and preview.endswith("…")
    assert long_body.strip().startswith(preview[:-1])
    assert push["android"]["priority"] == "high"
    assert push["android"]["collapse_key"] == sid
    assert push["apns"]["payload"]["aps"]["thread-id"] == sid

    # And the other way round, Customer offline, a short message verbatim.
    ctoken = f"customer-{uuid.uuid4().hex}"
    await register_device(server, customer, ctoken)
    reply = await post_message(server, mitra, sid, "Cerita aja, aku dengerin")
    [push] = await wait_push(fake_fcm, ctoken, type="chat_message", session_id=sid)
    assert push["notification"] == {"title": mitra.name, "body": "Cerita aja, aku dengerin"}
    assert push["data"]["sender_role"] == "mitra" and push["data"]["sender_id"] == mitra.id
    assert push["data"]["seq"] == "2" and push["data"]["message_id"] == reply["id"]


async def test_no_push_while_in_foreground_push_in_background(
    server: ServerProcess, fake_fcm: FakeFcm
) -> None:
    customer, mitra, sid = await active_chat(server)
    token = f"mitra-{uuid.uuid4().hex}"
    await register_device(server, mitra, token)
    m = await WsClient.open(server.ws_url, mitra)
    try:
        await m.wait_for("ready")
        await post_message(server, customer, sid, "foreground")
        got = await m.wait_for("message.new", session_id=sid)
        assert got["data"]["message"]["seq"] == 1
        state = await m.request("app.state", {"state": "background"})
        assert state["type"] == "ack"
        await post_message(server, customer, sid, "background")
        got = await m.wait_for("message.new", session_id=sid)  # the socket still gets it
        assert got["data"]["message"]["seq"] == 2
        [push] = await wait_push(fake_fcm, token, type="chat_message", seq="2")
        assert push["notification"]["body"] == "background"
        await m.request("app.state", {"state": "foreground"})
        await post_message(server, customer, sid, "foreground again")
        await m.wait_for("message.new", session_id=sid)
    finally:
        await m.close()
    await post_message(server, customer, sid, "offline")
    pushes = await wait_push(fake_fcm, token, 2)
    # Pushes are sent in order per message; only the background and offline ones exist.
    assert [p["data"]["seq"] for p in fake_fcm.sent_to(token)] == ["2", "4"], pushes


async def test_dead_token_is_deleted(server: ServerProcess, fake_fcm: FakeFcm) -> None:
    customer, mitra, sid = await active_chat(server)
    dead, live = f"{DEAD_PREFIX}{uuid.uuid4().hex}", f"live-{uuid.uuid4().hex}"
    await register_device(server, mitra, dead)
    await register_device(server, mitra, live)
    await post_message(server, customer, sid, "anyone there?")
    await wait_push(fake_fcm, live, type="chat_message", session_id=sid)
    devices = server.db["devices"]

    def dead_token_gone() -> bool:  # the deletion follows FCM's answer, asynchronously
        deadline = time.monotonic() + 10
        while devices.count_documents({"fcm_token": dead}):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    assert await asyncio.to_thread(dead_token_gone)
    assert devices.count_documents({"user_id": ObjectId(mitra.id), "fcm_token": live}) == 1
    assert fake_fcm.sent_to(dead) == []
