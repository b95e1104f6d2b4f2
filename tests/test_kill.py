"""Crash test: SIGKILL the server while two clients exchange messages, restart it on the same
data, and check nothing acknowledged is lost or doubled, resync has no gap and no duplicate,
and sessions whose timers fell due while it was down are reconciled (DESIGN.md).

The server runs on the test clock (docs/testing.md): deadlines fall when the test advances
the clock, and the time the server is down is added to its clock when it starts again."""

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from tests.support.clients import Actor, WsClient
from tests.support.flows import full_history, make_pair, open_active_session, session_view
from tests.support.server import ServerProcess

KILL_AFTER_ACKS = 30
SENDERS_PER_SIDE = 2  # concurrent in-flight sends per client at the moment of the kill

ENV = {  # seconds of the test clock: the test tier "test-1m" lasts 10 minutes
    "HALOCHAT_MINUTE_SECONDS": "600",
    "HALOCHAT_WARNING_LEAD_SECONDS": "60",
    "HALOCHAT_GRACE_SECONDS": "1800",  # A is still EXPIRED right after the restart
}


@dataclass
class Side:
    """One chat client's view: what it sent, what was acked, which seqs it has seen."""

    actor: Actor
    ws: WsClient
    sent: dict[str, str] = field(default_factory=dict)  # client_msg_id -> body
    acked: dict[str, int] = field(default_factory=dict)  # client_msg_id -> seq

    def seen_seqs(self) -> set[int]:
        live = {f["data"]["message"]["seq"] for f in self.ws.pending("message.new")}
        return live | set(self.acked.values())

    def contiguous_seq(self) -> int:
        """The last seq up to which this client has every message: what hello reports."""
        seen, k = self.seen_seqs(), 0
        while k + 1 in seen:
            k += 1
        return k


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


async def stream(
    side: Side,
    session_id: str,
    counter: itertools.count,
    enough: asyncio.Event,
    acked_total: list[int],
) -> None:
    """Sends messages one after another until the connection dies under it."""
    while True:
        cmid = f"{side.actor.role}-{next(counter)}"
        body = f"message {cmid}"
        side.sent[cmid] = body
        try:
            answer = await side.ws.request(
                "message.send", {"session_id": session_id, "client_msg_id": cmid, "body": body}
            )
        except Exception:  # the server died with this send in flight
            return
        assert answer["type"] == "ack", answer
        side.acked[cmid] = answer["data"]["message"]["seq"]
        acked_total[0] += 1
        if acked_total[0] >= KILL_AFTER_ACKS:
            enough.set()


@pytest.fixture(scope="module")
def kill_server(server_factory: Any) -> ServerProcess:
    return server_factory(env=ENV, clock=True)


async def test_sigkill_mid_stream_loses_nothing_and_reconciles_timers(
    kill_server: ServerProcess,
) -> None:
    server = kill_server
    # B: a short session that expires while the server is up; its grace runs out while down.
    cust_b, mitra_b = make_pair(server, "B")
    ws_b = await WsClient.open(server.ws_url, cust_b)
    session_b = await open_active_session(server, cust_b, mitra_b, tier_id="test-1m")

    # The chat: both sides stream messages concurrently.
    customer, mitra = make_pair(server, "Chat")
    chat = await open_active_session(server, customer, mitra, tier_id="60m")
    sid = chat["id"]
    sides = [
        Side(customer, await WsClient.open(server.ws_url, customer)),
        Side(mitra, await WsClient.open(server.ws_url, mitra)),
    ]
    enough, acked_total, counter = asyncio.Event(), [0], itertools.count(1)
    streams = [
        asyncio.create_task(stream(side, sid, counter, enough, acked_total))
        for side in sides
        for _ in range(SENDERS_PER_SIDE)
    ]
    await asyncio.wait_for(enough.wait(), 60)
    await kill_server.advance_past(session_b["ends_at"])
    await ws_b.wait_for("session.expired", session_id=session_b["id"])
    await ws_b.close()

    # A: a short session whose expiry falls due while the server is down.
    cust_a, mitra_a = make_pair(server, "A")
    session_a = await open_active_session(server, cust_a, mitra_a, tier_id="test-1m")

    server.kill()  # mid-stream: sends are in flight on both sides
    await asyncio.wait_for(asyncio.gather(*streams), 30)
    stored_a = server.db["sessions"].find_one({"_id": ObjectId(session_a["id"])})
    assert stored_a["state"] == "ACTIVE"
    stored_b = server.db["sessions"].find_one({"_id": ObjectId(session_b["id"])})
    assert stored_b["state"] == "EXPIRED"
    # Down until A's expiry and B's grace deadline have passed (within A's grace).
    resume_at = max(stored_a["ends_at"], stored_b["grace_deadline"]) + timedelta(seconds=1)
    server.time_passes_while_down((resume_at - server.now()).total_seconds())
    server.start()

    # Timers that fell due while down are reconciled at start-up, before serving.
    ws_a = await WsClient.open(server.ws_url, cust_a)
    after_a = await session_view(server, cust_a, session_a["id"])
    assert after_a["state"] == "EXPIRED", after_a
    assert after_a["ended_at"] is not None
    # Its grace timer was re-armed: it completes when the clock reaches the deadline.
    await server.advance_past(after_a["grace_deadline"])
    await ws_a.wait_for("session.completed", session_id=session_a["id"])
    after_a = await session_view(server, cust_a, session_a["id"])
    assert after_a["state"] == "COMPLETED"
    await ws_a.close()
    after_b = await session_view(server, cust_b, session_b["id"])
    assert after_b["state"] == "COMPLETED", after_b
    assert parse_time(after_b["completed_at"]) >= stored_b["grace_deadline"]

    # Every acked message is stored exactly once, with its acked seq, in seq order, no gap.
    history = await full_history(server, customer, sid)
    seqs = [m["seq"] for m in history]
    assert seqs == list(range(1, len(history) + 1))
    by_cmid = {m["client_msg_id"]: m for m in history}
    assert len(by_cmid) == len(history), "a client_msg_id stored twice"
    for side in sides:
        assert side.acked, "the stream had not started on this side"
        for cmid, seq in side.acked.items():
            assert by_cmid[cmid]["seq"] == seq
            assert by_cmid[cmid]["body"] == side.sent[cmid]
    last_seq = len(history)
    assert (await session_view(server, customer, sid))["last_seq"] == last_seq

    # Reconnect + hello: exactly the missed seqs, in order, nothing twice.
    for side in sides:
        since = side.contiguous_seq()
        with contextlib.suppress(Exception):
            await side.ws.close()
        side.ws = await WsClient.open(server.ws_url, side.actor)
        await side.ws.wait_for("ready")
        hello = await side.ws.request("hello", {"sessions": {sid: since}})
        assert hello["type"] == "ack", hello
        await side.ws.wait_for("sync")
        # Frames of one socket are ordered: the pong follows the whole replay.
        assert (await side.ws.request("ping"))["type"] == "pong"
        replayed = [f["data"]["message"]["seq"] for f in side.ws.pending("message.new")]
        assert replayed == list(range(since + 1, last_seq + 1)), (since, replayed)

    # Unacked sends are retried with the same client_msg_id: stored once, whatever happened.
    for side in sides:
        for cmid in [c for c in side.sent if c not in side.acked]:
            answer = await side.ws.request(
                "message.send",
                {"session_id": sid, "client_msg_id": cmid, "body": side.sent[cmid]},
            )
            assert answer["type"] == "ack", answer
            side.acked[cmid] = answer["data"]["message"]["seq"]
    history = await full_history(server, customer, sid)
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    assert sorted(m["client_msg_id"] for m in history) == sorted(
        cmid for side in sides for cmid in side.sent
    )

    # Live chat works again, numbered after the rest.
    nxt = await sides[0].ws.request(
        "message.send", {"session_id": sid, "client_msg_id": "after-restart", "body": "hi again"}
    )
    assert nxt["data"]["message"]["seq"] == len(history) + 1
    got = await sides[1].ws.wait_for("message.new", session_id=sid)
    while got["data"]["message"]["client_msg_id"] != "after-restart":
        got = await sides[1].ws.wait_for("message.new", session_id=sid)
    assert got["data"]["message"]["seq"] == len(history) + 1
    for side in sides:
        await side.ws.close()
