"""Bounded memory, fairness and shedding (docs/operations.md "Limits and overload"): slow
readers are disconnected and freed, error answers stay small, the per-user socket cap, hello
by a non-party does not touch the victim's session, rate limits with Retry-After, the free-trial
cool-down, byte-counted frames, and overload shedding where every send gets an answer."""

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import ObjectId
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from halochat.domain.messaging.common import overloaded
from halochat.ws.admission import SendAdmission
from tests.conftest import ServerFactory
from tests.support.clients import WsClient, api, sockets
from tests.support.flows import full_history, make_pair, open_active_session
from tests.support.server import ServerProcess

OUTBOUND_MAX_BYTES = 256 * 1024
ANSWER_BYTES = 100 * 1024  # a sync frame answering the slow reader's hello (~90 KB)
MAX_SOCKETS = 2
COOLDOWN_SECONDS = 30

LIMITED_ENV = {
    "HALOCHAT_WS_OUTBOUND_MAX_BYTES": str(OUTBOUND_MAX_BYTES),
    "HALOCHAT_WS_MAX_SOCKETS_PER_USER": str(MAX_SOCKETS),
    "HALOCHAT_CHAT_REQUEST_RATE": "3/minute",
    "HALOCHAT_CHAT_CANCEL_RATE": "2/minute",
    "HALOCHAT_HTTP_WRITE_RATE": "8/minute",
    "HALOCHAT_FREE_TRIAL_COOLDOWN_SECONDS": str(COOLDOWN_SECONDS),
    # One message in flight to the store and 50 ms to get in (test_overload_sheds_...).
    "HALOCHAT_STORE_MAX_INFLIGHT": "1",
    "HALOCHAT_STORE_WAIT_SECONDS": "0.05",
}


@pytest.fixture(scope="module")
def limited(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(LIMITED_ENV)


async def load(server: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=15.0) as http:
        return (await http.get("/loadz")).json()


async def wait_until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


def assert_429(resp: httpx.Response) -> int:
    assert resp.status_code == 429, resp.text
    error = resp.json()["error"]
    assert error["code"] == "rate_limited"
    retry = error["details"]["retry_after"]
    assert isinstance(retry, int) and retry >= 1
    assert resp.headers["Retry-After"] == str(retry)
    return retry


async def send_retrying(ws: WsClient, body: dict[str, Any]) -> dict[str, Any]:
    """message.send as the app does it: retried (same client_msg_id) while overloaded."""
    for _ in range(50):
        answer = await ws.request("message.send", body)
        if answer["type"] == "ack" or answer["error"]["code"] != "overloaded":
            return answer
        await asyncio.sleep(0.05)
    return answer


# --- memory ------------------------------------------------------------------------------


# A hello listing 500 ids that are no ObjectIds: each is answered with an error naming it
# (~90 KB per answer) and no database query; the frame itself is ~52 KB.
BIG_ANSWER_HELLO = json.dumps(
    {
        "type": "hello",
        "id": "h",
        "data": {"sessions": {f"{i:04d}" + "x" * 100: 0 for i in range(500)}},
    }
)


async def unread_socket(server: ServerProcess, actor: Any, **options: Any) -> ClientConnection:
    """A WebSocket whose client never reads, with a 4 KiB receive buffer: the server's
    output to it backs up at once."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.port))
    return await connect(server.ws_url, sock=raw, additional_headers=actor.headers, **options)


async def test_slow_reader_is_disconnected_and_freed(limited: ServerProcess) -> None:
    """A client that never reads, flooded with frames whose answers are big: the bytes queued
    for it never pass the bound, the server drops it (transport aborted) and the hub no
    longer holds it."""
    customer = limited.create_user("customer", "Slow")
    baseline = (await load(limited))["sockets"]
    conn = await unread_socket(limited, customer, max_queue=1)
    peak = 0
    try:
        async with asyncio.timeout(90):
            for i in range(300):
                await conn.send(BIG_ANSWER_HELLO)
                if i % 5 == 0:
                    now = await load(limited)
                    peak = max(peak, now["queued_bytes"])
                    if now["sockets"] == baseline:
                        break
    except (ConnectionClosed, OSError):
        pass  # the server aborted the connection while we were still sending
    finally:
        conn.transport.abort()
    assert await wait_until(lambda: _sockets_are(limited, baseline)), "slow socket still held"
    assert peak <= OUTBOUND_MAX_BYTES + ANSWER_BYTES  # the bound, plus one frame at most
    assert (await load(limited))["queued_bytes"] == 0
    assert "dropping slow connection" in limited.log_tail(400)


def server_rss_mb(server: ServerProcess) -> float:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_flooding_client_is_held_back(limited: ServerProcess) -> None:
    """Clients that send big frames much faster than the server handles them (and read
    nothing): the server reads only as fast as it handles (TCP backpressure,
    halochat/ws/read_gate.py) instead of buffering what they sent."""
    users = [limited.create_user("customer", f"Flood{i}") for i in range(5)]
    before = server_rss_mb(limited)
    sent = 0

    async def flood(actor: Any) -> None:
        nonlocal sent
        conn = await unread_socket(limited, actor)
        try:
            for _ in range(150):  # 150 x 52 KB = 7.8 MB per socket
                await asyncio.wait_for(conn.send(BIG_ANSWER_HELLO), 2)
                sent += 1
        except (ConnectionClosed, OSError, TimeoutError):
            pass  # dropped as a slow reader, or held back: either is fine
        finally:
            conn.transport.abort()

    await asyncio.gather(*(flood(u) for u in users))
    growth = server_rss_mb(limited) - before
    assert sent > 100
    sent_mb = sent * len(BIG_ANSWER_HELLO) >> 20
    assert growth < 30, f"server RSS grew {growth:.0f} MB for {sent_mb} MB sent"


async def test_dropped_sockets_leave_nothing_pending(limited: ServerProcess) -> None:
    """Clients that flood big frames and go away with frames still unread by the server:
    the frames and the hand-over tasks holding them are let go with the connection
    (Sanic alone keeps them pending for the life of the process, ws/read_gate.py)."""
    users = [limited.create_user("customer", f"Gone{i}") for i in range(4)]
    await wait_until(lambda: _sockets_are(limited, 0))
    baseline = (await load(limited))["tasks"]

    async def flood_and_vanish(actor: Any) -> None:
        for _ in range(3):  # each round: a new socket, frames in flight, then gone
            conn = await unread_socket(limited, actor)
            try:
                for _ in range(12):
                    await asyncio.wait_for(conn.send(BIG_ANSWER_HELLO), 2)
            except (ConnectionClosed, OSError, TimeoutError):
                pass
            finally:
                conn.transport.abort()

    await asyncio.gather(*(flood_and_vanish(u) for u in users))
    assert await wait_until(lambda: _sockets_are(limited, 0))

    async def settled() -> bool:
        now = await load(limited)
        return now["pending_reads"] == 0 and now["tasks"] <= baseline + 2

    assert await wait_until(settled, 15), await load(limited)


async def _sockets_are(server: ServerProcess, count: int) -> bool:
    return (await load(server))["sockets"] == count


async def test_huge_error_flood_gets_small_answers(limited: ServerProcess) -> None:
    """55 KB frames of unknown keys: each answer lists at most 10 problems (the rest counted),
    so per-socket output stays far below the byte bound and the socket stays open."""
    customer = limited.create_user("customer", "Keys")
    keys = {f"k{i:05d}": 1 for i in range(5000)}
    frame = json.dumps({"type": "ping", "id": "x", "data": {}, **keys})
    assert 50_000 < len(frame) < 65_536
    async with sockets(limited, customer) as (ws,):
        for _ in range(20):
            await ws.send(frame)
        for _ in range(20):
            error = await ws.wait_for("error", timeout=30)
            assert error["error"]["code"] == "validation_error"
            assert len(error["error"]["details"]["fields"]) == 10
            assert error["error"]["details"]["more"] == 4990
            assert len(json.dumps(error)) < 4096
        assert (await ws.request("ping"))["type"] == "pong"


async def test_frame_limit_counts_utf8_bytes(limited: ServerProcess) -> None:
    """40,000 three-byte characters are 120,000 bytes: over the 64 KiB frame limit, though
    only 40,000 characters."""
    customer = limited.create_user("customer", "Bytes")
    async with sockets(limited, customer) as (ws,):
        big = {"type": "ping", "id": "big", "data": {"x": "€" * 40_000}}
        await ws.send(json.dumps(big, ensure_ascii=False))
        error = await ws.wait_for("error", timeout=20)
        assert error["error"]["code"] == "payload_too_large"
        await ws.conn.send(("€" * 30_000).encode())  # a binary frame: counted in bytes too
        error = await ws.wait_for("error", timeout=20)
        assert error["error"]["code"] == "payload_too_large"
        assert (await ws.request("ping"))["type"] == "pong"


async def test_socket_cap_refuses_the_extra_socket(limited: ServerProcess) -> None:
    customer = limited.create_user("customer", "Many")
    async with sockets(limited, *[customer] * MAX_SOCKETS):
        extra = await WsClient.open(limited.ws_url, customer)
        error = await extra.wait_for("error", timeout=20)
        assert error["error"]["code"] == "too_many_connections"
        assert error["error"]["details"]["max_sockets"] == MAX_SOCKETS
        await asyncio.wait_for(extra.conn.wait_closed(), 20)
        assert extra.conn.close_code == 4429
    # Once the others are closed the user may connect again.
    assert await wait_until(lambda: _accepts(limited, customer)), (
        "socket refused after the others closed"
    )


async def _accepts(server: ServerProcess, actor: Any) -> bool:
    ws = await WsClient.open(server.ws_url, actor)
    try:
        await ws.wait_for("ready", timeout=10)
        return True
    except (ConnectionError, TimeoutError):  # refused: error frame, then closed
        return False
    finally:
        await ws.close()


# --- fairness ----------------------------------------------------------------------------


async def test_hello_by_a_non_party_does_not_touch_the_victims_session(
    limited: ServerProcess,
) -> None:
    customer, mitra = make_pair(limited, "-victim")
    session = await open_active_session(limited, customer, mitra)
    sid = session["id"]
    attacker = limited.create_user("customer", "Attacker")
    listed = {sid: 0, **{str(ObjectId()): 0 for _ in range(499)}}
    hello = {"type": "hello", "data": {"sessions": listed}}
    async with sockets(limited, customer, attacker, attacker) as (victim, att1, att2):
        for att in (att1, att2):
            for i in range(30):  # pipelined: each would hold the victim's lock before the fix
                await att.send({**hello, "id": f"a{i}"})
        for i in range(10):
            started = time.monotonic()
            body = {"session_id": sid, "client_msg_id": f"v{i}", "body": "hi"}
            ack = await send_retrying(victim, body)
            assert ack["type"] == "ack", ack
            assert time.monotonic() - started < 5.0  # generous: the machine is shared
        sync = await att1.wait_for("sync", timeout=30)
        errors = {e["session_id"]: e["code"] for e in sync["data"]["errors"]}
        assert errors[sid] == "session_not_found"
        assert all(s["id"] != sid for s in sync["data"]["sessions"])
    assert len(await full_history(limited, customer, sid)) == 10


# --- rate limits -------------------------------------------------------------------------


async def test_chat_request_and_cancel_rate_limits_and_free_trial_cooldown(
    limited: ServerProcess,
) -> None:
    customer = limited.create_user("customer", "Cycler")
    async with api(limited.base_url, customer) as http:
        created = await http.post("/v1/sessions", json={"choice": "free_trial"})
        assert created.status_code == 201, created.text
        sid = created.json()["session"]["id"]
        assert (await http.post(f"/v1/sessions/{sid}/cancel")).status_code == 200
        # The cancelled free trial is the customer's again, but not at once.
        options = (await http.get("/v1/chat/options")).json()
        assert options["kind"] == "free_trial"
        assert 0 < options["free_trial"]["available_in_seconds"] <= COOLDOWN_SECONDS
        retry = assert_429(await http.post("/v1/sessions", json={"choice": "free_trial"}))
        assert retry <= COOLDOWN_SECONDS
        # A paid tier is not cooled down, but requests are counted (3 per minute).
        created = await http.post("/v1/sessions", json={"choice": "tier", "tier_id": "15m"})
        assert created.status_code == 201, created.text
        sid = created.json()["session"]["id"]
        assert (await http.post(f"/v1/sessions/{sid}/cancel")).status_code == 200
        assert_429(await http.post("/v1/sessions", json={"choice": "tier", "tier_id": "15m"}))
        before = limited.db["sessions"].count_documents({"customer_id": ObjectId(customer.id)})
        assert before == 2  # the refused requests stored nothing
        # Cancels: 2 per minute, the third is refused before anything is looked up.
        assert_429(await http.post(f"/v1/sessions/{sid}/cancel"))


async def test_http_writes_are_limited_per_user(limited: ServerProcess) -> None:
    mitra = limited.create_user("mitra", "Toggler")
    other = limited.create_user("mitra", "Other")
    async with api(limited.base_url, mitra) as http:
        for i in range(8):
            resp = await http.put("/v1/mitra/availability", json={"available": i % 2 == 0})
            assert resp.status_code == 200, resp.text
        assert_429(await http.put("/v1/mitra/availability", json={"available": True}))
        assert (await http.get("/v1/mitra/requests")).status_code == 200  # reads are not limited
    async with api(limited.base_url, other) as http:  # per user: others are not affected
        resp = await http.put("/v1/mitra/availability", json={"available": True})
        assert resp.status_code == 200


# --- overload ----------------------------------------------------------------------------


async def test_overload_sheds_and_every_send_is_answered(limited: ServerProcess) -> None:
    """One message in flight to the store at a time and 50 ms to get in: concurrent sends
    over many sessions are partly refused with 503 overloaded at once; every send gets an ack
    or an error, and exactly the acked messages are stored (retries with the same
    client_msg_id then store the rest, once)."""
    server = limited
    pairs = [make_pair(server, f"-shed{i}") for i in range(3)]
    sids = [(await open_active_session(server, c, m))["id"] for c, m in pairs]
    per_socket = 20
    async with sockets(server, *[c for c, _ in pairs]) as clients:
        for ws, sid in zip(clients, sids, strict=True):
            for i in range(per_socket):
                body = {"session_id": sid, "client_msg_id": f"s{i}", "body": f"m{i}"}
                await ws.send({"type": "message.send", "id": f"s{i}", "data": body})
        answers = [await ws.answers("s", per_socket) for ws in clients]
        codes = {
            a["error"]["code"] for per in answers for a in per.values() if a["type"] == "error"
        }
        assert codes <= {"overloaded", "rate_limited"}, codes
        assert "overloaded" in codes, "the tiny in-flight bound should shed"
        for (customer, _), ws, sid, per in zip(pairs, clients, sids, answers, strict=True):
            acked = {k for k, a in per.items() if a["type"] == "ack"}
            stored = await full_history(server, customer, sid)
            assert {m["client_msg_id"] for m in stored} == acked
            # Retrying the refused ones (same client_msg_id) stores each once.
            for key in sorted(set(per) - acked):
                body = {"session_id": sid, "client_msg_id": key, "body": "again"}
                answer = await send_retrying(ws, body)
                assert answer["type"] == "ack", answer
            stored = await full_history(server, customer, sid)
            ids = [m["client_msg_id"] for m in stored]
            assert sorted(ids) == sorted(f"s{i}" for i in range(per_socket))
            assert [m["seq"] for m in stored] == list(range(1, per_socket + 1))
    assert (await load(server))["store_inflight"] == 0


async def test_overload_sheds_at_admission(limited: ServerProcess) -> None:
    """A burst of sends on one socket while the bound (1 here: HALOCHAT_STORE_MAX_INFLIGHT)
    is taken: the excess is refused `overloaded` as it is read, without waiting behind the
    admitted send (a refusal reaches the client before that send's ack), the admitted ones
    are acked and stored, the refused ones are not, and nothing stays counted as pending."""
    server = limited
    customer, mitra = make_pair(server, "-admit")
    sid = (await open_active_session(server, customer, mitra))["id"]
    burst = 20
    async with sockets(server, customer) as (ws,):
        # Back to back: the server reads the burst while the first send is being stored.
        for i in range(burst):
            body = {"session_id": sid, "client_msg_id": f"s{i}", "body": f"m{i}"}
            await ws.send({"type": "message.send", "id": f"s{i}", "data": body})
        answers = await ws.answers("s", burst)
        order = [a["type"] for a in answers.values()]  # in arrival order
        acked = {k for k, a in answers.items() if a["type"] == "ack"}
        refused = [a for a in answers.values() if a["type"] == "error"]
        assert acked and refused, order
        for a in refused:
            assert a["error"]["code"] == "overloaded", a
            assert a["error"]["details"] == {"retry_after": 1}
        assert order.index("error") < order.index("ack"), order
        stored = await full_history(server, customer, sid)
        assert {m["client_msg_id"] for m in stored} == acked
    state = await wait_until(lambda: _settled(server), timeout=30)
    assert state, await load(server)


def test_admission_bound_and_socket_share() -> None:
    """The bound's bookkeeping: room for `limit` sends, a quarter of it per socket while it is
    shrunk, and the refusal frame is the same `overloaded` error a late refusal carries."""
    admission = SendAdmission(target_seconds=0.05, max_limit=64)
    assert [admission.admit(n) for n in range(64)] == [True] * 64  # not shrunk: no share
    assert not admission.admit(0)
    admission.answered(0.01)
    assert admission.admit(0)
    # The bound follows the answers: slow ones shrink it to rate x target, quick ones let it
    # grow, an idle process opens it fully.
    admission = SendAdmission(target_seconds=0.05, max_limit=512)
    start = time.monotonic()
    for _ in range(200):
        assert admission.admit(0)
        admission.answered(0.2)  # four times the target
    admission.adjust(start + 0.5)  # 200 answers in 0.5 s: 400/s x 0.05 s
    assert 18 <= admission.limit <= 20
    assert not admission.admit(5), "under overload one socket holds a quarter of the bound"
    assert admission.admit(0)
    admission.answered(0.01)
    admission.adjust(start + 0.7)
    assert admission.limit > 18
    admission.adjust(start + 0.9)  # nothing under way, nothing answered
    assert admission.limit == 512
    tiny = SendAdmission(target_seconds=0.05, max_limit=1)  # HALOCHAT_STORE_MAX_INFLIGHT=1
    assert tiny.admit(0)
    tiny.answered(1.0)
    tiny.adjust(time.monotonic() + 1)
    assert tiny.limit == 1
    frame = json.loads(admission.refusal("f1"))
    assert frame == {"type": "error", "id": "f1", "error": overloaded().to_dict()}
    assert json.loads(admission.refusal(None))["id"] is None


async def _settled(server: ServerProcess) -> bool:
    now = await load(server)
    return now["sends_pending"] == 0 and now["store_inflight"] == 0
