"""One write per message (halochat/db/group_commit.py, halochat/domain/live_sessions.py):
concurrent inserts of many sessions leave as one unordered insert_many, the seq counter of an
ACTIVE session lives in memory and is stored when the session leaves ACTIVE (or repaired
from the stored messages at start-up). Checked end to end: the embedded store's wire batch
insert keeps MongoDB's per-document errors, bursts over many sessions stay gap-free with
retries and clashes in the same batches, ending / expiring with sends in flight stores the
exact counter, and a kill or a stop followed by a restart numbers on without gap. The
server runs on the test clock (docs/testing.md): a session expires when a test advances the
clock past its end."""

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import BulkWriteError

from halochat.documents import Message
from tests.conftest import ServerFactory
from tests.support.clients import WsClient, api, sockets
from tests.support.flows import full_history, make_pair, open_active_session, session_view
from tests.support.server import ServerProcess
from tests.support.stored import stored_chat

ENV = {"HALOCHAT_MINUTE_SECONDS": "60", "HALOCHAT_WARNING_LEAD_SECONDS": "10"}
ONE_MINUTE = "test-1m"  # 60 s of the test clock
LONG = "60m"  # an hour: never runs out during a test
SESSIONS = 8
PER_SIDE = 10
IN_FLIGHT = 4  # frames a client has sent and awaits answers for, per socket


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(env=ENV, clock=True)


async def send(ws: WsClient, session_id: str, cmid: str, body: str | None = None) -> Any:
    data = {"session_id": session_id, "client_msg_id": cmid, "body": body or f"body {cmid}"}
    return await ws.request("message.send", data)


def assert_gap_free(msgs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Stored messages are seq 1..n, each client_msg_id once; returns them by client_msg_id."""
    assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
    by_cmid = {m["client_msg_id"]: m for m in msgs}
    assert len(by_cmid) == len(msgs), "a client_msg_id stored twice"
    return by_cmid


def new_messages(ws: WsClient, session_id: str, sender_role: str) -> list[int]:
    """Seqs of the message.new frames this socket got for the session from `sender_role`."""
    return [
        f["data"]["message"]["seq"]
        for f in ws.pending("message.new")
        if f["data"]["session_id"] == session_id
        and f["data"]["message"]["sender_role"] == sender_role
    ]


# --- 1. the embedded store's wire batch insert ---------------------------------------------


@pytest.fixture
def scratch(mongodb_uri: str) -> Iterator[Any]:
    """A scratch collection with the messages collection's unique indexes, dropped afterwards."""
    with MongoClient(mongodb_uri, tz_aware=True) as client:
        db = client[f"t_{ObjectId()}"]
        collection = db["scratch_batch_insert"]
        collection.create_indexes(Message.Settings.indexes)
        try:
            yield collection
        finally:
            collection.drop()
            client.drop_database(db.name)


def msg(session_id: ObjectId, seq: Any, client_msg_id: str) -> dict[str, Any]:
    return {"_id": ObjectId(), "session_id": session_id, "seq": seq, "client_msg_id": client_msg_id}


def insert_batch(collection: Any, docs: list[dict[str, Any]], *, ordered: bool) -> Any:
    """insert_many that must fail: returns (BulkWriteError details, the _ids it reports
    inserted: all but the failed ones, or for ordered only those before the first failure)."""
    with pytest.raises(BulkWriteError) as caught:
        collection.insert_many(docs, ordered=ordered)
    details = caught.value.details
    failed = [e["index"] for e in details["writeErrors"]]
    upto = min(failed) if ordered else len(docs)
    reported = {d["_id"] for i, d in enumerate(docs[:upto]) if i not in failed}
    assert details["nInserted"] == len(reported), details
    return details, reported


def test_wire_batch_insert_reports_each_duplicate_like_mongodb(scratch: Any) -> None:
    s, other = ObjectId(), ObjectId()
    first = msg(s, 1, "c1")
    scratch.insert_one(first)
    expected = {first["_id"]}

    def stored_ids() -> set[ObjectId]:
        return {d["_id"] for d in scratch.find({}, {"_id": 1})}

    # Unordered: two duplicates among 4 (a seq taken in the same batch, compared by value;
    # a client_msg_id already stored) fail alone, the other two are stored.
    docs = [msg(s, 2, "c2"), msg(s, 2.0, "c3"), msg(other, 2, "c2"), msg(s, 3, "c1")]
    details, reported = insert_batch(scratch, docs, ordered=False)
    assert details["nInserted"] == 2, details
    errors = details["writeErrors"]
    assert [(e["index"], e["code"]) for e in errors] == [(1, 11000), (3, 11000)], details
    assert [e["keyValue"] for e in errors] == [
        {"session_id": s, "seq": 2},
        {"session_id": s, "client_msg_id": "c1"},
    ], details
    assert reported == {docs[0]["_id"], docs[2]["_id"]}
    expected |= reported
    assert stored_ids() == expected

    # Ordered: stops at the first duplicate; only the documents before it are stored.
    docs = [msg(s, 3, "c3"), msg(s, 4, "c4"), msg(s, 4, "c5"), msg(s, 5, "c6")]
    details, reported = insert_batch(scratch, docs, ordered=True)
    assert details["nInserted"] == 2, details
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(2, 11000)], details
    expected |= reported
    assert stored_ids() == expected

    details, reported = insert_batch(scratch, [msg(s, 1, "x"), msg(s, 9, "y")], ordered=True)
    assert details["nInserted"] == 0 and reported == set(), details
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(0, 11000)], details

    # A batch without conflicts is stored whole.
    docs = [msg(s, 5, "c5"), msg(s, 6, "c6")]
    assert scratch.insert_many(docs, ordered=False).inserted_ids == [d["_id"] for d in docs]
    expected |= {d["_id"] for d in docs}
    assert stored_ids() == expected
    seqs = [(d["seq"], d["client_msg_id"]) for d in scratch.find({"session_id": s}).sort("seq", 1)]
    assert seqs == [(1, "c1"), (2, "c2"), (3, "c3"), (4, "c4"), (5, "c5"), (6, "c6")]


# --- 2. many sessions at once ----------------------------------------------------------------


async def test_bursts_over_many_sessions_stay_gap_free(server: ServerProcess) -> None:
    pairs = [make_pair(server, f"-burst{i}") for i in range(SESSIONS)]
    async with sockets(server, *[a for pair in pairs for a in pair]) as socks:
        sids = [(await open_active_session(server, c, m, tier_id=LONG))["id"] for c, m in pairs]

        async def burst(i: int) -> dict[str, Any]:
            """Both parties of session i send PER_SIDE messages, IN_FLIGHT at a time; the
            customer also sends one id twice at once (WS + HTTP), the Mitra reuses one of the
            customer's ids."""
            customer, _ = pairs[i]
            cws, mws = socks[2 * i], socks[2 * i + 1]
            sid, retry_id, taken_id = sids[i], f"{i}-retry", f"{i}-c-0"
            taken_acked = asyncio.Event()

            async def one(ws: WsClient, window: asyncio.Semaphore, cmid: str) -> Any:
                async with window:
                    answer = await send(ws, sid, cmid)
                if cmid == taken_id:
                    taken_acked.set()
                return answer

            async def retry_over_http() -> Any:
                async with api(server.base_url, customer) as http:
                    return await http.post(
                        f"/v1/sessions/{sid}/messages",
                        json={"client_msg_id": retry_id, "body": f"body {retry_id}"},
                    )

            async def reuse() -> Any:
                await taken_acked.wait()
                return await send(mws, sid, taken_id, "not yours")

            cwin, mwin = asyncio.Semaphore(IN_FLIGHT), asyncio.Semaphore(IN_FLIGHT)
            cids = [retry_id] + [f"{i}-c-{k}" for k in range(PER_SIDE)]
            mids = [f"{i}-m-{k}" for k in range(PER_SIDE)]
            results = await asyncio.gather(
                retry_over_http(),
                reuse(),
                *(one(cws, cwin, c) for c in cids),
                *(one(mws, mwin, m) for m in mids),
            )
            http_retry, clash, *answers = results
            return {
                "http_retry": http_retry,
                "clash": clash,
                "acks": dict(zip(cids + mids, answers, strict=True)),
            }

        outcomes = await asyncio.gather(*(burst(i) for i in range(SESSIONS)))
        # Frames of one socket are ordered: after a pong, every message.new is in.
        for ws in socks:
            assert (await ws.request("ping"))["type"] == "pong"

        n = 2 * PER_SIDE + 1  # the retried id is one message
        for i, (sid, outcome) in enumerate(zip(sids, outcomes, strict=True)):
            customer, mitra = pairs[i]
            cws, mws = socks[2 * i], socks[2 * i + 1]
            acks = outcome["acks"]
            for cmid, answer in acks.items():
                assert answer["type"] == "ack", (cmid, answer)
            seqs = [a["data"]["message"]["seq"] for a in acks.values()]
            assert sorted(seqs) == list(range(1, n + 1)), (sid, sorted(seqs))

            # The retried id: one message, both answers show it, exactly one is the replay.
            ws_retry = acks[f"{i}-retry"]["data"]
            resp = outcome["http_retry"]
            assert resp.status_code in (200, 201), resp.text
            http_retry = resp.json()
            assert http_retry["message"] == ws_retry["message"]
            assert {ws_retry["replayed"], http_retry["replayed"]} == {True, False}
            assert http_retry["replayed"] == (resp.status_code == 200)
            # The Mitra reusing the customer's id is refused.
            clash = outcome["clash"]
            assert clash["type"] == "error" and clash["error"]["code"] == "duplicate", clash

            msgs, _ = stored_chat(server, sid)
            by_cmid = assert_gap_free(msgs)
            assert len(msgs) == n
            for cmid, answer in acks.items():
                acked = answer["data"]["message"]
                assert str(by_cmid[cmid]["_id"]) == acked["id"], (cmid, acked)
                assert by_cmid[cmid]["seq"] == acked["seq"], (cmid, acked)
            assert by_cmid[f"{i}-c-0"]["sender_role"] == "customer"
            assert by_cmid[f"{i}-c-0"]["body"] == f"body {i}-c-0"
            history = await full_history(server, customer, sid)
            assert [(m["seq"], m["id"]) for m in history] == [
                (m["seq"], str(m["_id"])) for m in msgs
            ]
            assert (await session_view(server, mitra, sid))["last_seq"] == n

            # Each receiver got every message of the other party once, in seq order.
            by_role = {
                role: [m["seq"] for m in msgs if m["sender_role"] == role]
                for role in ("customer", "mitra")
            }
            assert new_messages(mws, sid, "customer") == by_role["customer"]
            assert new_messages(cws, sid, "mitra") == by_role["mitra"]
            # The customer's socket sees its own message only when the HTTP send stored it.
            own = new_messages(cws, sid, "customer")
            assert own == ([] if ws_retry["replayed"] is False else [ws_retry["message"]["seq"]])

            # Receipts follow the live counter: up to n, not beyond.
            ok = await cws.request("receipt", {"session_id": sid, "kind": "read", "seq": n})
            assert ok["type"] == "ack" and ok["data"]["read"] == n, ok
            beyond = await cws.request("receipt", {"session_id": sid, "kind": "read", "seq": n + 1})
            assert beyond["type"] == "error", beyond
            assert beyond["error"]["code"] == "validation_error", beyond
            assert beyond["error"]["details"]["last_seq"] == n, beyond


# --- 3 and 4. leaving ACTIVE with sends in flight --------------------------------------------


@dataclass
class Sent:
    cmid: str
    answer: dict[str, Any] | None  # None: the connection died before the answer
    after_end: bool  # sent once the client knew the session had left ACTIVE


@dataclass
class Streams:
    """Clients sending one message after another on their sockets until one is refused."""

    session_id: str
    log: list[Sent]
    acked: int = 0

    def start(
        self,
        sockets_: list[WsClient],
        ended: Callable[[WsClient], bool],
        enough: asyncio.Event,
        enough_at: int,
        *,
        per_socket: int = 2,
        prefix: str = "",
    ) -> list[asyncio.Task[None]]:
        counter = itertools.count()

        async def stream(ws: WsClient) -> None:
            while True:
                cmid = f"{prefix}s{next(counter)}"
                known_ended = ended(ws)
                try:
                    answer = await send(ws, self.session_id, cmid)
                except Exception:  # the server died with this send in flight
                    self.log.append(Sent(cmid, None, known_ended))
                    return
                self.log.append(Sent(cmid, answer, known_ended))
                if answer["type"] != "ack":
                    return
                self.acked += 1
                if self.acked >= enough_at:
                    enough.set()

        return [asyncio.create_task(stream(ws)) for ws in sockets_ for _ in range(per_socket)]


def check_left_active(server: ServerProcess, session_id: str, log: list[Sent], state: str) -> int:
    """Every acked send stored under its seq, every other one refused with invalid_state and
    not stored, sends after the client knew of the end refused; the stored last_seq is the
    number of stored messages. Returns that number."""
    msgs, doc = stored_chat(server, session_id)
    by_cmid = assert_gap_free(msgs)
    assert doc["state"] == state, doc
    assert doc["last_seq"] == len(msgs), (doc["last_seq"], len(msgs))
    acked = set()
    for sent in log:
        answer = sent.answer
        assert answer is not None, sent
        if answer["type"] == "ack":
            assert not sent.after_end, f"acked after the client saw the end: {sent}"
            message = answer["data"]["message"]
            assert by_cmid[sent.cmid]["seq"] == message["seq"], sent
            assert str(by_cmid[sent.cmid]["_id"]) == message["id"], sent
            acked.add(sent.cmid)
        else:
            assert answer["type"] == "error", sent
            assert answer["error"]["code"] == "invalid_state", sent
            assert answer["error"]["details"]["state"] == state, sent
            assert sent.cmid not in by_cmid, sent
    assert acked == set(by_cmid), "stored messages nobody got an ack for"
    return len(msgs)


async def test_ending_early_with_sends_in_flight_stores_the_counter(
    server: ServerProcess,
) -> None:
    customer, mitra = make_pair(server, "-end")
    async with sockets(server, customer, mitra) as (cws, mws):
        sid = (await open_active_session(server, customer, mitra, tier_id=LONG))["id"]
        streams, enough, ended = Streams(sid, []), asyncio.Event(), asyncio.Event()
        tasks = streams.start([cws, mws], lambda _ws: ended.is_set(), enough, enough_at=20)
        await asyncio.wait_for(enough.wait(), 30)
        async with api(server.base_url, mitra) as http:  # sends are in flight on both sides
            resp = await http.post(f"/v1/sessions/{sid}/end")
        assert resp.status_code == 200, resp.text
        ended.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for role, ws in (("customer", cws), ("mitra", mws)):
            after = await send(ws, sid, f"after-{role}")
            streams.log.append(Sent(f"after-{role}", after, True))
    n = check_left_active(server, sid, streams.log, "CLOSING")
    assert n >= 20
    view = await session_view(server, customer, sid)
    assert view["state"] == "CLOSING" and view["last_seq"] == n
    assert resp.json()["session"]["last_seq"] == n  # the transition's own answer


async def test_expiry_with_sends_in_flight_stores_the_counter(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, "-expiry")
    async with sockets(server, customer, mitra) as (cws, mws):
        session = await open_active_session(server, customer, mitra, tier_id=ONE_MINUTE)
        sid = session["id"]

        def expired(ws: WsClient) -> bool:
            return any(f["data"]["session_id"] == sid for f in ws.pending("session.expired"))

        streams, enough = Streams(sid, []), asyncio.Event()
        tasks = streams.start([cws, mws], expired, enough, enough_at=20)
        await asyncio.wait_for(enough.wait(), 30)
        await server.advance_past(session["ends_at"])  # sends are in flight on both sides
        await asyncio.wait_for(asyncio.gather(*tasks), 30)  # each ends at its first refusal
        for role, ws in (("customer", cws), ("mitra", mws)):
            await ws.wait_for("session.expired", session_id=sid)
            after = await send(ws, sid, f"after-{role}")
            streams.log.append(Sent(f"after-{role}", after, True))
    n = check_left_active(server, sid, streams.log, "EXPIRED")
    assert n >= 20
    view = await session_view(server, customer, sid)
    assert view["state"] == "EXPIRED" and view["last_seq"] == n


# --- 5. restart ------------------------------------------------------------------------------


async def test_restart_repairs_the_counter_and_numbers_on(server: ServerProcess) -> None:
    """Kills and restarts the module's server: the module's last test."""
    customer, mitra = make_pair(server, "-restart")
    sid = (await open_active_session(server, customer, mitra, tier_id="15m"))["id"]
    log: list[Sent] = []
    n = 0
    for how in ("kill", "stop"):
        cws, mws = [await WsClient.open(server.ws_url, a) for a in (customer, mitra)]
        streams, enough = Streams(sid, log), asyncio.Event()
        tasks = streams.start([cws, mws], lambda _ws: False, enough, enough_at=20, prefix=how)
        await asyncio.wait_for(enough.wait(), 30)
        if how == "kill":
            server.kill()  # sends are in flight on both sides
        else:
            await asyncio.to_thread(server.stop)  # graceful: in-flight sends finish or fail
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for ws in (cws, mws):
            with contextlib.suppress(Exception):
                await ws.close()
        msgs, doc = stored_chat(server, sid)
        assert doc["state"] == "ACTIVE"
        assert doc["last_seq"] <= len(msgs)  # may trail: only stored when leaving ACTIVE

        server.start()
        msgs, doc = stored_chat(server, sid)
        by_cmid = assert_gap_free(msgs)
        n = len(msgs)
        assert doc["last_seq"] == n, (doc["last_seq"], n)  # repaired at start-up
        for sent in log:  # every ack is stored under its seq; nothing was refused
            if sent.answer is not None:
                assert sent.answer["type"] == "ack", sent
                assert by_cmid[sent.cmid]["seq"] == sent.answer["data"]["message"]["seq"]
        assert (await session_view(server, customer, sid))["last_seq"] == n
        async with api(server.base_url, mitra) as http:
            url = f"/v1/sessions/{sid}/receipts"
            ok = await http.post(url, json={"kind": "delivered", "seq": n})
            assert ok.status_code == 200, ok.text
            beyond = await http.post(url, json={"kind": "delivered", "seq": n + 1})
            assert beyond.status_code == 422 and beyond.json()["error"]["details"] == {
                "last_seq": n
            }, beyond.text

        # Resync from a few back, then the next send takes the next seq.
        async with sockets(server, customer, mitra) as (cws, mws):
            hello = await mws.request("hello", {"sessions": {sid: n - 3}})
            assert hello["type"] == "ack", hello
            assert (await mws.request("ping"))["type"] == "pong"
            replayed = [
                f["data"]["message"]["seq"]
                for f in mws.pending("message.new")
                if f["data"]["session_id"] == sid
            ]
            assert replayed == [n - 2, n - 1, n], replayed
            nxt = await send(cws, sid, f"next-{how}")
            assert nxt["type"] == "ack" and nxt["data"]["message"]["seq"] == n + 1, nxt
            got = await mws.wait_for("message.new", session_id=sid)
            while got["data"]["message"]["seq"] <= n:  # the replayed ones
                got = await mws.wait_for("message.new", session_id=sid)
            assert got["data"]["message"]["client_msg_id"] == f"next-{how}"
            log.append(Sent(f"next-{how}", nxt, False))
            assert (await session_view(server, mitra, sid))["last_seq"] == n + 1
        n += 1
    msgs, _ = stored_chat(server, sid)
    assert len(assert_gap_free(msgs)) == n
