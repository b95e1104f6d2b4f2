"""Cluster mode (issue 13): one database, one real nats-server, three halochat processes.

The customer is on process 1, the Mitra on process 2, a second customer device on process 3:
every event reaches every device once, messages in seq order (also when a new session's seq
1 is still being stored by a member with a slow database link while seq 2 is acked on
another); the push decision is cluster-wide; a transition on one process refuses the next
send on another at once; two Mitras on two processes accepting one request: one wins; the
bus restarting makes the sockets resync with nothing acked lost; process 2 killed mid-chat:
its Mitra resyncs on process 3 losslessly and process 2's timers fire on the survivors, once
(warning, expiry, pairing timeout); process 2 restarted rejoins the cluster, sessions enter
grace states there (left EXPIRED, an extension request left pending, ended early) and it is
killed again: the survivors complete each session, once, and the pending extension lapses.
"""

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from bson import ObjectId

from halochat.constants import ExtensionStatus, SessionState
from halochat.domain.triggers import Trigger
from tests.conftest import ServerFactory
from tests.support.clients import Actor, WsClient, api
from tests.support.fake_fcm import FakeFcm
from tests.support.flows import request_and_accept
from tests.support.nats import NatsServer
from tests.support.server import ServerProcess
from tests.support.tcp_proxy import TcpProxy

CLUSTER_ENV = {
    "HALOCHAT_MINUTE_SECONDS": "4",  # test-1m: 4 s of chat; 15m: 60 s
    "HALOCHAT_WARNING_LEAD_SECONDS": "2",
    "HALOCHAT_GRACE_SECONDS": "3",
    "HALOCHAT_PAIRING_TIMEOUT_SECONDS": "5",
    "HALOCHAT_SWEEP_INTERVAL_SECONDS": "0.5",
    "HALOCHAT_LEASE_HEARTBEAT_SECONDS": "1",
    "HALOCHAT_LEASE_TTL_SECONDS": "3",
}


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(server_factory: ServerFactory, nats_server: NatsServer) -> list[ServerProcess]:
    env = {**CLUSTER_ENV, "HALOCHAT_NATS_URL": nats_server.url}
    first = server_factory(env=env)  # seeds the configuration
    others = [server_factory(env=env, start=False) for _ in range(2)]
    for proc in others:
        proc.db_name = first.db_name
    with ThreadPoolExecutor(2) as pool:  # the other two start together
        list(pool.map(ServerProcess.start, others))
    return [first, *others]


def messages(client: WsClient, session_id: str) -> list[int]:
    return [
        f["data"]["message"]["seq"]
        for f in client.frames
        if f["type"] == "message.new" and f["data"]["session_id"] == session_id
    ]


async def until(check: Any, timeout: float = 15.0) -> None:
    """Polls `check` (frames arrive on the clients' reader tasks) until it holds."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 (no event to wait on: a condition over frames)
            await asyncio.sleep(0.05)


async def ready(url: str, actor: Actor) -> WsClient:
    client = await WsClient.open(url, actor)
    await client.wait_for("ready")
    return client


async def register_device(proc: ServerProcess, actor: Actor, token: str) -> None:
    async with api(proc.base_url, actor) as http:
        r = await http.put(
            "/v1/devices", json={"device_id": uuid.uuid4().hex[:8], "fcm_token": token}
        )
        assert r.status_code == 200, r.text


def count(client: WsClient, type_: str, session_id: str | None = None) -> int:
    def sid(f: dict[str, Any]) -> str | None:
        data = f.get("data") or {}
        return data.get("session_id") or (data.get("session") or {}).get("id")

    return sum(
        1
        for f in client.frames
        if f["type"] == type_ and (session_id is None or sid(f) == session_id)
    )


async def test_chat_across_three_processes(cluster: list[ServerProcess], fake_fcm: FakeFcm) -> None:
    p1, p2, p3 = cluster
    tag = uuid.uuid4().hex[:6]
    customer = p1.create_user("customer", f"C-{tag}")
    mitra = p1.create_user("mitra", f"M-{tag}", available=True)
    mitra_token, customer_token = f"m-{tag}", f"c-{tag}"
    await register_device(p2, mitra, mitra_token)
    await register_device(p1, customer, customer_token)
    c1, m2, c3 = (
        await ready(p1.ws_url, customer),
        await ready(p2.ws_url, mitra),
        await ready(p3.ws_url, customer),
    )
    try:
        # Pairing: the request made on process 1 reaches the Mitra on process 2.
        async with api(p1.base_url, customer) as http:
            r = await http.post("/v1/sessions", json={"choice": "tier", "tier_id": "15m"})
            assert r.status_code == 201, r.text
            sid = r.json()["session"]["id"]
        await m2.wait_for("chat.request")
        async with api(p2.base_url, mitra) as http:
            assert (await http.post(f"/v1/sessions/{sid}/accept")).status_code == 200
        for client in (c1, c3, m2):
            await client.wait_for("session.started")

        # Chat both ways at once: customer on process 1, Mitra on process 2.
        async def send(client: WsClient, prefix: str, n: int) -> list[int]:
            seqs = []
            for i in range(n):
                ack = await client.request(
                    "message.send",
                    {"session_id": sid, "client_msg_id": f"{prefix}{i}", "body": f"{prefix} {i}"},
                )
                assert ack["type"] == "ack", ack
                seqs.append(ack["data"]["message"]["seq"])
            return seqs

        c_seqs, m_seqs = await asyncio.gather(send(c1, "c", 8), send(m2, "m", 8))
        assert sorted(c_seqs + m_seqs) == list(range(1, 17))  # gap-free, one writer's order
        await until(lambda: len(messages(c3, sid)) == 16)
        await until(lambda: len(messages(c1, sid)) == 8 and len(messages(m2, sid)) == 8)
        assert messages(c3, sid) == list(range(1, 17))  # every message once, in seq order
        assert messages(c1, sid) == sorted(m_seqs)  # the other party's, in order
        assert messages(m2, sid) == sorted(c_seqs)
        assert fake_fcm.sent_to(mitra_token) == []  # the Mitra is in the foreground elsewhere

        # Receipts and typing cross processes too.
        ack = await m2.request("receipt", {"session_id": sid, "kind": "read", "seq": 16})
        assert ack["type"] == "ack", ack
        for client in (c1, c3):
            await client.wait_for("receipt.updated", read=16)
        typed = await m2.request("typing", {"session_id": sid, "state": "start"})
        assert typed["type"] == "ack", typed
        for client in (c1, c3):
            await client.wait_for("typing", role="mitra")

        # The push decision is cluster-wide: the Mitra's only device goes to the background.
        assert (await m2.request("app.state", {"state": "background"}))["type"] == "ack"
        await send(c1, "bg", 1)
        await asyncio.to_thread(fake_fcm.wait_for, mitra_token, 1)
        await until(lambda: len(messages(m2, sid)) == 9)
        assert fake_fcm.sent_to(customer_token) == []

        # Ended on process 1: the very next send on process 2 is refused.
        async with api(p1.base_url, customer) as http:
            assert (await http.post(f"/v1/sessions/{sid}/end")).status_code == 200
        refused = await m2.request(
            "message.send", {"session_id": sid, "client_msg_id": "late", "body": "late"}
        )
        assert refused["type"] == "error" and refused["error"]["code"] == "invalid_state"
        for client in (c1, c3, m2):
            await client.wait_for("session.closing")
        for proc, actor in ((p1, customer), (p2, mitra)):
            async with api(proc.base_url, actor) as http:
                r = await http.post(f"/v1/sessions/{sid}/closure", json={"text": "thanks"})
                assert r.status_code == 200, r.text
        for client in (c1, c3, m2):
            await client.wait_for("session.completed")
        await asyncio.sleep(0.5)  # nothing arrives twice
        for client in (c1, c3, m2):
            for type_ in ("session.started", "session.closing", "session.completed"):
                assert count(client, type_, sid) == 0, (type_, client.frames)
        assert messages(c3, sid) == list(range(1, 18))
    finally:
        for client in (c1, m2, c3):
            await client.close()


async def test_a_first_message_still_being_stored_is_not_lost(
    cluster: list[ServerProcess],
    server_factory: ServerFactory,
    nats_server: NatsServer,
    mongodb_uri: str,
) -> None:
    """A new session's first two messages: seq 1 taken on a process whose insert is slow (a
    slow link to the database), seq 2 taken and stored on another meanwhile. A socket whose
    first frame of the session is seq 2 looks for lower seqs in the database and finds none
    yet: seq 1's frame, arriving later, must still be written to it (bench/load.py counted
    one such message "not delivered" once)."""
    p1, _, p3 = cluster
    proxy = TcpProxy.for_mongodb(mongodb_uri).start()
    slow = server_factory(env={**CLUSTER_ENV, "HALOCHAT_NATS_URL": nats_server.url}, start=False)
    slow.mongodb_uri, slow.db_uri, slow.db_name = proxy.proxied_uri(), mongodb_uri, p1.db_name
    try:
        slow.start()
        tag = uuid.uuid4().hex[:6]
        customer = p1.create_user("customer", f"C-{tag}")
        mitra = p1.create_user("mitra", f"M-{tag}", available=True)
        c_slow, m1, c3 = (
            await ready(slow.ws_url, customer),
            await ready(p1.ws_url, mitra),
            await ready(p3.ws_url, customer),
        )
        sid = await request_and_accept(p1, p1, customer, mitra, "15m")
        proxy.delay = 1.0  # each request of the slow process reaches the database 1 s late
        first = asyncio.create_task(
            c_slow.request(
                "message.send", {"session_id": sid, "client_msg_id": "c1", "body": "1"}, 30
            )
        )
        sessions = p1.db["sessions"]
        # Seq 1 taken (the slow process's $inc applied); its insert is still on its way.
        await until(lambda: sessions.find_one({"_id": ObjectId(sid)})["last_seq"] == 1)
        ack = await m1.request(
            "message.send", {"session_id": sid, "client_msg_id": "m2", "body": "second"}
        )
        assert ack["data"]["message"]["seq"] == 2, ack
        # Seq 2 stored and acked (the Mitra's socket looked for lower seqs): seq 1 not yet.
        assert p1.db["messages"].count_documents({"session_id": ObjectId(sid)}) == 1
        assert (await first)["data"]["message"]["seq"] == 1
        proxy.delay = 0.0
        try:
            await until(lambda: messages(m1, sid) == [1] and messages(c3, sid) == [1, 2])
        except TimeoutError:
            raise AssertionError((messages(m1, sid), messages(c3, sid))) from None
        await asyncio.sleep(0.5)  # nothing more
        assert messages(m1, sid) == [1] and messages(c3, sid) == [1, 2]
        for client in (c_slow, m1, c3):
            await client.close()
    finally:
        proxy.delay = 0.0
        slow.stop()
        proxy.stop()


async def test_two_mitras_on_two_processes_accept_one_request(
    cluster: list[ServerProcess],
) -> None:
    p1, p2, p3 = cluster
    tag = uuid.uuid4().hex[:6]
    customer = p3.create_user("customer", f"C-{tag}")
    mitras = [p3.create_user("mitra", f"M{i}-{tag}", available=True) for i in range(2)]
    async with api(p3.base_url, customer) as http:
        r = await http.post("/v1/sessions", json={"choice": "tier", "tier_id": "15m"})
        sid = r.json()["session"]["id"]

    async def accept(proc: ServerProcess, mitra: Actor) -> int:
        async with api(proc.base_url, mitra) as http:
            return (await http.post(f"/v1/sessions/{sid}/accept")).status_code

    codes = await asyncio.gather(accept(p1, mitras[0]), accept(p2, mitras[1]))
    assert sorted(codes) == [200, 409], codes

    # An admin on process 3 disables a Mitra whose socket is on process 1: it closes (4403).
    admin = p3.create_user("admin", f"A-{tag}")
    loser = mitras[codes.index(409)]
    sock = await ready(p1.ws_url, loser)
    try:
        async with api(p3.base_url, admin) as http:
            r = await http.post(f"/v1/admin/users/{loser.id}/disable")
            assert r.status_code == 200, r.text
        await until(lambda: sock.conn.close_code is not None)
        assert sock.conn.close_code == 4403
    finally:
        await sock.close()


async def test_bus_restart_resyncs_and_loses_nothing(
    cluster: list[ServerProcess], nats_server: NatsServer
) -> None:
    p1, p2, _ = cluster
    tag = uuid.uuid4().hex[:6]
    customer = p1.create_user("customer", f"C-{tag}")
    mitra = p1.create_user("mitra", f"M-{tag}", available=True)
    sid = await request_and_accept(p1, p2, customer, mitra, "15m")
    c1, m2 = await ready(p1.ws_url, customer), await ready(p2.ws_url, mitra)

    async def bus(proc: ServerProcess) -> str:
        async with api(proc.base_url) as http:
            return (await http.get("/loadz")).json()["bus"]

    try:
        assert await bus(p1) == "connected"
        nats_server.kill()
        # Sends while the bus is down are stored and acked.
        for i in range(3):
            ack = await c1.request(
                "message.send", {"session_id": sid, "client_msg_id": f"d{i}", "body": f"d{i}"}
            )
            assert ack["type"] == "ack", ack
        assert await bus(p1) == "disconnected"
        nats_server.start()
        # Every process reconnects and closes its sockets (1012) so that their apps resync.
        await until(lambda: c1.conn.close_code == 1012 and m2.conn.close_code == 1012, 20)
        m2b = await ready(p2.ws_url, mitra)
        ack = await m2b.request("hello", {"sessions": {sid: 0}})
        assert ack["type"] == "ack", ack
        await until(lambda: messages(m2b, sid) == [1, 2, 3])
        # And the bus carries events again.
        c1b = await ready(p1.ws_url, customer)
        ack = await m2b.request(
            "message.send", {"session_id": sid, "client_msg_id": "after", "body": "after"}
        )
        assert ack["data"]["message"]["seq"] == 4
        await until(lambda: messages(c1b, sid) == [4])
        # A counter behind the stored messages (as a single process leaves it for a session
        # still ACTIVE when it stops) is raised by the first send that collides.
        p1.db["sessions"].update_one({"_id": ObjectId(sid)}, {"$set": {"last_seq": 1}})
        ack = await m2b.request(
            "message.send", {"session_id": sid, "client_msg_id": "behind", "body": "b"}
        )
        assert ack["type"] == "ack" and ack["data"]["message"]["seq"] == 5, ack
        await until(lambda: messages(c1b, sid) == [4, 5])
        await c1b.close()
        await m2b.close()
    finally:
        await c1.close()
        await m2.close()


async def test_process_killed_mid_chat(cluster: list[ServerProcess]) -> None:
    p1, p2, p3 = cluster
    tag = uuid.uuid4().hex[:6]
    customer = p1.create_user("customer", f"C-{tag}")
    mitra = p1.create_user("mitra", f"M-{tag}", available=True)
    waiting = p1.create_user("customer", f"W-{tag}")
    # Pairing timeout armed on process 2 (no Mitra accepts), and a 4-second session whose
    # warning, expiry and grace timers process 2 armed (the Mitra accepted there).
    async with api(p2.base_url, waiting) as http:
        r = await http.post("/v1/sessions", json={"choice": "tier", "tier_id": "15m"})
        assert r.status_code == 201, r.text
    sid = await request_and_accept(p1, p2, customer, mitra, "test-1m")
    c1, m2, w1 = (
        await ready(p1.ws_url, customer),
        await ready(p2.ws_url, mitra),
        await ready(p1.ws_url, waiting),
    )
    try:
        for i in range(3):
            await m2.request(
                "message.send", {"session_id": sid, "client_msg_id": f"k{i}", "body": "x"}
            )
        # The customer keeps sending while process 2 dies and the Mitra resyncs on 3.
        acked: list[int] = []

        async def stream() -> None:
            for i in range(6):
                ack = await c1.request(
                    "message.send", {"session_id": sid, "client_msg_id": f"a{i}", "body": "y"}
                )
                if ack["type"] != "ack":  # the 4 paid seconds ran out meanwhile
                    assert ack["error"]["code"] == "invalid_state", ack
                    return
                acked.append(ack["data"]["message"]["seq"])

        streaming = asyncio.create_task(stream())
        p2.kill()
        m3 = await ready(p3.ws_url, mitra)
        ack = await m3.request("hello", {"sessions": {sid: 1}})
        assert ack["type"] == "ack"
        await streaming
        assert acked == list(range(4, 4 + len(acked)))
        # Lossless and no duplicate. (A live frame that reached the new socket between
        # `ready` and its `hello` comes before the replay: docs/protocol.md, "insert by seq".)
        expected = [2, 3, *acked]
        try:
            await until(lambda: sorted(messages(m3, sid)) == expected)
        except TimeoutError:
            raise AssertionError((messages(m3, sid), acked)) from None
        got = messages(m3, sid)
        assert len(got) == len(expected), got
        replayed_at = got.index(2)
        assert got[replayed_at:] == sorted(got[replayed_at:]), got  # replay, then live, in order
        # Process 2's timers fire on the survivors: warning and expiry, once each.
        for client in (c1, m3):
            await client.wait_for("session.one_minute_left", timeout=15)
            await client.wait_for("session.expired", timeout=15)
        # An extension across processes: asked on 1, accepted on 3, chat resumes.
        async with api(p1.base_url, customer) as http:
            r = await http.post(f"/v1/sessions/{sid}/extension", json={"tier_id": "test-1m"})
            assert r.status_code == 200, r.text
        asked = await m3.wait_for("session.extension_requested")
        extension_id = asked["data"]["extension"]["id"]
        async with api(p3.base_url, mitra) as http:
            r = await http.post(
                f"/v1/sessions/{sid}/extension/answer",
                json={"extension_id": extension_id, "accept": True},
            )
            assert r.status_code == 200, r.text
        for client in (c1, m3):
            await client.wait_for("session.resumed")
        ack = await c1.request(
            "message.send", {"session_id": sid, "client_msg_id": "ext", "body": "more"}
        )
        assert ack["data"]["message"]["seq"] == 4 + len(acked), ack
        await until(lambda: sorted(messages(m3, sid)) == [*expected, 4 + len(acked)])
        assert messages(m3, sid)[-1] == 4 + len(acked)
        # The extended time runs out too; its grace ends the session (survivors' timers).
        for client in (c1, m3):
            await client.wait_for("session.expired", timeout=15)
            await client.wait_for("session.completed", timeout=15)
        await w1.wait_for("pairing.failed", timeout=40)
        await asyncio.sleep(1.0)  # the sweepers of both survivors have run again
        for client in (c1, m3):
            for type_ in (
                "session.expired",
                "session.resumed",
                "session.extension_answered",
                "session.completed",
            ):
                if type_ == "session.extension_answered":
                    assert count(client, type_, sid) == 1, (type_, client.frames)
                else:
                    assert count(client, type_, sid) == 0, (type_, client.frames)
        assert count(w1, "pairing.failed") == 0
        await m3.close()
    finally:
        await c1.close()
        await w1.close()


async def test_killed_member_rejoins_and_its_grace_deadlines_fire_on_the_survivors(
    cluster: list[ServerProcess],
) -> None:
    """Process 2 (SIGKILLed above, or alive when this test runs alone) restarts and rejoins:
    a request made on process 1 reaches a Mitra there. Then grace deadlines are armed there
    (a session left EXPIRED, an extension request left pending, a session ended early) and
    it is SIGKILLed before they run out: the survivors complete each session, once."""
    p1, p2, p3 = cluster
    p2.restart()
    tag = uuid.uuid4().hex[:6]
    customers = [p1.create_user("customer", f"C{i}-{tag}") for i in range(3)]
    mitras = [p1.create_user("mitra", f"M{i}-{tag}", available=True) for i in range(3)]
    # The customers on process 1, the Mitras on process 3 (survivors) and one on process 2.
    cs = [await ready(p1.ws_url, c) for c in customers]
    ms = [await ready(p3.ws_url, m) for m in mitras]
    m2 = await ready(p2.ws_url, mitras[0])
    try:
        # The rejoined member is on the bus: the request made on 1 reaches its socket.
        async with api(p1.base_url, customers[0]) as http:
            r = await http.post("/v1/sessions", json={"choice": "tier", "tier_id": "test-1m"})
            assert r.status_code == 201, r.text
            extended = r.json()["session"]["id"]
        await m2.wait_for("chat.request")
        async with api(p2.base_url, mitras[0]) as http:
            assert (await http.post(f"/v1/sessions/{extended}/accept")).status_code == 200
        expired = await request_and_accept(p1, p2, customers[1], mitras[1], "test-1m")
        ended = await request_and_accept(p1, p2, customers[2], mitras[2], "15m")
        # Process 2 armed both 4-second sessions' expiry: its timer (or a sweeper) fires it.
        for client in (cs[0], cs[1]):
            await client.wait_for("session.expired", timeout=15)
        # Two transitions made on process 2, which arms their grace timers (3 s).
        async with api(p2.base_url, customers[0]) as http:
            r = await http.post(f"/v1/sessions/{extended}/extension", json={"tier_id": "test-1m"})
            assert r.status_code == 200, r.text
        async with api(p2.base_url, mitras[2]) as http:
            assert (await http.post(f"/v1/sessions/{ended}/end")).status_code == 200
        p2.kill()
        sessions = p1.db["sessions"]
        ids = [ObjectId(sid) for sid in (extended, expired, ended)]

        def states() -> list[str]:
            by_id = {doc["_id"]: doc["state"] for doc in sessions.find({"_id": {"$in": ids}})}
            return [by_id[i] for i in ids]

        # Still open: no grace period had run out when process 2 died.
        open_states = [SessionState.EXTENSION_PENDING, SessionState.EXPIRED, SessionState.CLOSING]
        assert states() == [s.value for s in open_states]
        for i, sid in enumerate((extended, expired, ended)):
            for client in (cs[i], ms[i]):
                await client.wait_for(
                    "session.completed",
                    timeout=15,
                    session_id=sid,
                    completed_by=Trigger.GRACE_ELAPSED.value,
                )
        await asyncio.sleep(1.0)  # the sweepers of both survivors have run again
        for client in (*cs, *ms):
            assert count(client, "session.completed") == 0, client.frames
        assert states() == [SessionState.COMPLETED.value] * 3
        lapsed = sessions.find_one({"_id": ObjectId(extended)})
        assert lapsed["extension"]["status"] == ExtensionStatus.LAPSED.value, lapsed
    finally:
        for client in (*cs, *ms, m2):
            await client.close()


async def test_workers_on_one_machine(server_factory: ServerFactory) -> None:
    """HALOCHAT_WORKERS=2: a local nats-server and two cluster workers on one port; a message
    reaches every socket of the recipient, whichever worker the kernel gave each one."""
    proc = server_factory(env={"HALOCHAT_WORKERS": "2"})
    members = proc.db["processes"]
    await until(lambda: members.count_documents({"mode": "cluster"}) == 2, 30)
    tag = uuid.uuid4().hex[:6]
    customer = proc.create_user("customer", f"C-{tag}")
    mitra = proc.create_user("mitra", f"M-{tag}", available=True)
    sid = await request_and_accept(proc, proc, customer, mitra, "15m")
    c = await ready(proc.ws_url, customer)
    ms = [await ready(proc.ws_url, mitra) for _ in range(4)]
    try:
        ack = await c.request(
            "message.send", {"session_id": sid, "client_msg_id": "w", "body": "hi"}
        )
        assert ack["type"] == "ack", ack
        for m in ms:
            await until(lambda m=m: messages(m, sid) == [1])
    finally:
        for client in (c, *ms):
            await client.close()
    proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0, proc.log_tail()
    assert members.count_documents({}) == 0  # both workers left cleanly
