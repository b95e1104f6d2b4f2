"""Operators and support: /metrics moves by exact amounts after a scripted session, the
admin's session timeline lists every step in order with its actor, the export includes it,
and HALOCHAT_LOG_FORMAT=json writes one JSON object per line with request / connection ids.
One server for the module, on the test clock (docs/testing.md): a tier "minute" is 10
minutes, the warning comes 60 s before the end, and the timers fire when a test advances the
clock."""

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from beanie import PydanticObjectId
from prometheus_client.parser import text_string_to_metric_families

from halochat.cli import export
from tests.support.clients import Actor, WsClient, api, sockets
from tests.support.fake_fcm import DEAD_PREFIX, FakeFcm
from tests.support.flows import make_pair, open_active_session
from tests.support.server import REPO_ROOT, ServerProcess

LEAD = 60
ENV = {
    "HALOCHAT_MINUTE_SECONDS": "600",
    "HALOCHAT_WARNING_LEAD_SECONDS": str(LEAD),
    "HALOCHAT_GRACE_SECONDS": "36000",  # never runs out during a test: closures complete
    "HALOCHAT_LOG_FORMAT": "json",
    "HALOCHAT_ACCESS_LOG": "true",
}
ONE_MINUTE = "test-1m"  # 10 minutes here
LONG = "15m"  # 150 minutes here

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerProcess:
    return server_factory(env=ENV, clock=True)


async def run_out(server: ServerProcess, session: dict[str, Any]) -> None:
    """The test clock to the session's warning, then past its end: both timers fire."""
    ends_at = datetime.fromisoformat(session["ends_at"].replace("Z", "+00:00"))
    await server.advance_past(ends_at - timedelta(seconds=LEAD), margin=0.05)
    await server.advance_past(ends_at)


async def scrape(server: ServerProcess) -> Samples:
    async with api(server.base_url) as http:
        resp = await http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def eventually[T](
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 15.0
) -> T:
    """Polls `probe` until `ok` holds (generous timeout: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if ok(got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


async def register_device(server: ServerProcess, actor: Actor, token: str) -> None:
    async with api(server.base_url, actor) as http:
        resp = await http.put("/v1/devices", json={"device_id": token, "fcm_token": token})
    assert resp.status_code == 200, resp.text


async def post(server: ServerProcess, actor: Actor, path: str, body: Any = None) -> httpx.Response:
    async with api(server.base_url, actor) as http:
        return await http.post(path, json=body)


def state_count(server: ServerProcess, state: str) -> int:
    return server.db["sessions"].count_documents({"state": state})


async def test_metrics_move_by_exact_amounts(server: ServerProcess, fake_fcm: FakeFcm) -> None:
    chat_c, chat_m = make_pair(server, "metrics-chat")
    timed_c, timed_m = make_pair(server, "metrics-timed")
    await register_device(server, chat_c, "metrics-chat-c")
    await register_device(server, chat_m, f"{DEAD_PREFIX}metrics-chat-m")
    before = await scrape(server)

    async with sockets(server.ws_url, chat_c, chat_m) as (cws, mws):
        live = await eventually(
            lambda: scrape(server), lambda s: value(s, "halochat_ws_connections") == 2
        )
        assert value(live, "halochat_ws_connections") == 2
        chat = await open_active_session(server, chat_c, chat_m, tier_id=LONG)
        timed = await open_active_session(server, timed_c, timed_m, tier_id=ONE_MINUTE)
        sid = chat["id"]
        for i in (1, 2):
            ack = await mws.request(
                "message.send", {"session_id": sid, "client_msg_id": f"m{i}", "body": f"hi {i}"}
            )
            assert ack["type"] == "ack", ack
        retry = await mws.request(
            "message.send", {"session_id": sid, "client_msg_id": "m2", "body": "hi 2"}
        )
        assert retry["data"]["replayed"] is True  # stored once: not counted again
        await cws.wait_for("message.new", session_id=sid)
        receipt = await cws.request("receipt", {"session_id": sid, "kind": "delivered", "seq": 2})
        assert receipt["type"] == "ack", receipt
        again = await cws.request("receipt", {"session_id": sid, "kind": "read", "seq": 2})
        assert again["type"] == "ack", again  # read: the delivered watermark does not move
        # The customer goes to the background: the third message is pushed to the device.
        await cws.request("app.state", {"state": "background"})
        ack = await mws.request(
            "message.send", {"session_id": sid, "client_msg_id": "m3", "body": "hi 3"}
        )
        assert ack["type"] == "ack", ack
        await asyncio.to_thread(fake_fcm.wait_for, "metrics-chat-c", 1, 15.0, type="chat_message")
        # The customer answers; the Mitra is offline for pushes only through a dead token.
        await mws.request("app.state", {"state": "background"})
        ack = await cws.request(
            "message.send", {"session_id": sid, "client_msg_id": "c1", "body": "halo"}
        )
        assert ack["type"] == "ack", ack
        # Refused frames, counted by error code.
        assert (await mws.request("no.such.frame"))["error"]["code"] == "unknown_frame"
        bad = await mws.request("message.send", {"session_id": sid})
        assert bad["error"]["code"] == "validation_error"

        # The timed session runs out: its warning and expiry timers fire.
        await run_out(server, timed)

        async def expired() -> dict[str, Any]:
            async with api(server.base_url, timed_c) as http:
                return (await http.get(f"/v1/sessions/{timed['id']}")).json()["session"]

        assert (await eventually(expired, lambda s: s["state"] == "EXPIRED"))["state"] == (
            "EXPIRED"
        )

        def settled(s: Samples) -> bool:
            return (
                delta(before, s, "halochat_pushes_failed_total", type="chat_message",
                      reason="invalid_token") >= 1
                and delta(before, s, "halochat_pushes_sent_total", type="chat_message") >= 1
                and delta(before, s, "halochat_timer_lateness_seconds_count", kind="expiry") >= 1
            )

        after = await eventually(lambda: scrape(server), settled)

    assert delta(before, after, "halochat_messages_stored_total") == 4
    assert delta(before, after, "halochat_messages_delivered_total") == 2
    assert delta(before, after, "halochat_send_ack_seconds_count") == 5  # the retry is acked
    assert delta(before, after, "halochat_session_transitions_total", trigger="accept",
                 to="ACTIVE") == 2
    assert delta(before, after, "halochat_session_transitions_total", trigger="time_up",
                 to="EXPIRED") == 1
    for kind in ("warning", "expiry"):
        assert delta(before, after, "halochat_timer_lateness_seconds_count", kind=kind) == 1
        assert delta(before, after, "halochat_timer_lateness_seconds_bucket", kind=kind,
                     le="+Inf") == 1
    assert delta(before, after, "halochat_pushes_sent_total", type="chat_message") == 1
    assert delta(before, after, "halochat_pushes_failed_total", type="chat_message",
                 reason="invalid_token") == 1
    assert delta(before, after, "halochat_ws_refused_frames_total", code="unknown_frame") == 1
    assert delta(before, after, "halochat_ws_refused_frames_total", code="validation_error") == 1
    # Database commands were timed (their number is the driver's business, not exact here).
    assert delta(before, after, "halochat_db_command_seconds_count", command="findAndModify") > 0
    assert delta(before, after, "halochat_db_command_seconds_count", command="insert") > 0

    # Sessions by state are counted in the database: the gauge matches it (after its cache).
    async def gauges() -> tuple[Samples, dict[str, int]]:
        truth = {s: state_count(server, s) for s in ("ACTIVE", "EXPIRED", "COMPLETED")}
        return await scrape(server), truth

    scraped, truth = await eventually(
        gauges,
        lambda got: all(value(got[0], "halochat_sessions", state=s) == n
                        for s, n in got[1].items()),
    )
    for state, n in truth.items():
        assert value(scraped, "halochat_sessions", state=state) == n
    assert truth["ACTIVE"] >= 1 and truth["EXPIRED"] >= 1

    closed = await eventually(
        lambda: scrape(server), lambda s: value(s, "halochat_ws_connections") == 0
    )
    assert value(closed, "halochat_ws_connections") == 0


# --- the session timeline ------------------------------------------------------------------


async def read_timeline(server: ServerProcess, admin: Actor, sid: str) -> dict[str, Any]:
    async with api(server.base_url, admin) as http:
        resp = await http.get(f"/v1/admin/sessions/{sid}/timeline")
    assert resp.status_code == 200, resp.text
    return resp.json()


def steps(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Everything but pushes (sent concurrently), as (kind, actor role, actor id, detail)."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        data, kind = e["data"], e["kind"]
        if kind.startswith("push_"):
            continue
        detail: Any = None
        if kind == "state_changed":
            detail = (data["from"], data["to"], data["trigger"])
        elif kind == "timer_fired":
            detail = data["kind"]
        elif kind == "extension_answered":
            detail = (data["accepted"], data["status"])
        elif kind == "closure_submitted":
            detail = (data["role"], data["text"])
        out.append((kind, e["actor"]["role"], e["actor"]["id"], detail))
    return out


async def test_timeline_through_expiry_extension_reject_and_closure(
    server: ServerProcess, admin: Actor, fake_fcm: FakeFcm, tmp_path: Path
) -> None:
    """The customer is away (pushes to a device); the Mitra is on the WebSocket."""
    customer, mitra = make_pair(server, "timeline")
    await register_device(server, customer, "timeline-c")
    async with sockets(server.ws_url, mitra) as (mws,):
        session = await open_active_session(server, customer, mitra, tier_id=ONE_MINUTE)
        sid = session["id"]
        await run_out(server, session)
        await mws.wait_for("session.one_minute_left", session_id=sid)
        await mws.wait_for("session.expired", session_id=sid)
        resp = await post(server, customer, f"/v1/sessions/{sid}/extension",
                          {"tier_id": ONE_MINUTE})
        assert resp.status_code == 200, resp.text
        ext = resp.json()["extension"]
        resp = await post(server, mitra, f"/v1/sessions/{sid}/extension/answer",
                          {"extension_id": ext["id"], "accept": False})
        assert resp.status_code == 200, resp.text
        for actor, text in ((customer, "terima kasih"), (mitra, "sama-sama")):
            resp = await post(server, actor, f"/v1/sessions/{sid}/closure", {"text": text})
            assert resp.status_code == 200, resp.text
        await mws.wait_for("session.completed", session_id=sid)

    c, m = (customer.role, customer.id), (mitra.role, mitra.id)
    system = ("system", None)
    expected = [
        ("session_created", *c, None),
        ("state_changed", *m, ("PAIRING", "ACTIVE", "accept")),
        ("timer_fired", *system, "warning"),
        ("timer_fired", *system, "expiry"),
        ("state_changed", *system, ("ACTIVE", "EXPIRED", "time_up")),
        ("state_changed", *c, ("EXPIRED", "EXTENSION_PENDING", "request_extension")),
        ("extension_requested", *c, None),
        ("state_changed", *m, ("EXTENSION_PENDING", "CLOSING", "extension_rejected")),
        ("extension_answered", *m, (False, "rejected")),
        ("closure_submitted", *c, ("customer", "terima kasih")),
        ("closure_submitted", *m, ("mitra", "sama-sama")),
        ("state_changed", *m, ("CLOSING", "COMPLETED", "closures_done")),
    ]
    # Pushes to the customer's device, one per event the app would have shown.
    pushes = ["pairing_result", "one_minute_left", "session_expired", "extension_answer",
              "session_ended", "session_ended"]

    def complete(body: dict[str, Any]) -> bool:
        kinds = [e["kind"] for e in body["events"]]
        return len(steps(body["events"])) >= len(expected) and kinds.count("push_sent") >= 6

    body = await eventually(lambda: read_timeline(server, admin, sid), complete)
    assert body["session_id"] == sid
    events = body["events"]
    assert steps(events) == expected
    ats = [datetime.fromisoformat(e["at"]) for e in events]
    assert ats == sorted(ats) and all(a.utcoffset() == timedelta(0) for a in ats)

    sent = [e for e in events if e["kind"] == "push_sent"]
    # Pushes are sent concurrently: two events at one moment may land in either order.
    assert sorted(e["data"]["type"] for e in sent) == sorted(pushes)
    for e in sent:
        assert e["actor"] == {"role": "system", "id": None}
        assert e["data"]["role"] == "customer"
        assert e["data"]["reason"] is None and e["data"]["devices"] == 1
    assert len(fake_fcm.sent_to("timeline-c")) == 6

    by_kind = {e["kind"]: e for e in events}
    requested = by_kind["extension_requested"]["data"]
    assert requested == {"extension_id": ext["id"], "tier_id": ONE_MINUTE, "minutes": 1,
                         "price": ext["price"], "currency": ext["currency"]}
    assert by_kind["extension_answered"]["data"]["extension_id"] == ext["id"]
    created = by_kind["session_created"]["data"]
    assert (created["kind"], created["tier_id"], created["minutes"]) == ("tier", ONE_MINUTE, 1)
    timers = [e for e in events if e["kind"] == "timer_fired"]
    for timer in timers:
        assert timer["data"]["lateness_ms"] >= 0
        assert datetime.fromisoformat(timer["at"]) >= datetime.fromisoformat(
            timer["data"]["due_at"]
        )
    expiry_due = timers[1]["data"]["due_at"]
    assert expiry_due == session["ends_at"]

    # The export includes it, in the same order.
    exported = run_export(server, tmp_path, "--session", sid, "--timeline")
    lines = [json.loads(line) for line in exported.splitlines()]
    assert lines[0]["record"] == "session"
    timeline_lines = [line for line in lines if line["record"] == "timeline"]
    assert [(t["kind"], t["at"]) for t in timeline_lines] == [(e["kind"], e["at"]) for e in events]
    assert all(t["session_id"] == sid for t in timeline_lines)


async def test_timeline_access_and_bad_ids(server: ServerProcess, admin: Actor) -> None:
    customer, mitra = make_pair(server, "timeline-access")
    session = await open_active_session(server, customer, mitra, tier_id=LONG)
    path = f"/v1/admin/sessions/{session['id']}/timeline"
    for who, code in ((customer, "wrong_role"), (mitra, "wrong_role")):
        async with api(server.base_url, who) as http:
            resp = await http.get(path)
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["code"] == code
    async with api(server.base_url) as http:
        assert (await http.get(path)).status_code == 401
    async with api(server.base_url, admin) as http:
        missing = await http.get(f"/v1/admin/sessions/{PydanticObjectId()}/timeline")
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["code"] == "session_not_found"
        malformed = await http.get("/v1/admin/sessions/not-an-id/timeline")
        assert malformed.status_code == 422, malformed.text
        assert malformed.json()["error"]["code"] == "validation_error"
        ok = await http.get(path)
        assert ok.status_code == 200 and ok.json()["session_id"] == session["id"]


def test_export_timeline_needs_jsonl(capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before any database is touched (in-process: no interpreter start-up)."""
    with pytest.raises(SystemExit) as exited:
        export.main(["--format", "csv", "--timeline"])
    assert exited.value.code == 2
    assert "--timeline needs --format jsonl" in capsys.readouterr().err


def run_export(server: ServerProcess, tmp_path: Path, *args: str) -> str:
    """`halochat export` in-process, on the server's database (a subprocess would prove
    nothing more: tests/test_export.py and tests/test_cli.py cover the command itself)."""
    output = tmp_path / "export.jsonl"
    env = {"MONGODB_URI": server.mongodb_uri or "", "HALOCHAT_DB_NAME": server.db_name}
    with mock.patch.dict(os.environ, env):
        export.main([*args, "--output", str(output)])
    return output.read_text(encoding="utf-8")


# --- JSON logs -----------------------------------------------------------------------------


async def test_json_logs_carry_request_and_connection_ids(server: ServerProcess) -> None:
    customer = server.create_user("customer", "LogCustomer")
    async with api(server.base_url, customer) as http:
        resp = await http.get("/v1/me/history", headers={"X-Request-ID": "support-ticket-42"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Request-ID"] == "support-ticket-42"
        fresh = await http.get("/healthz")
        generated = fresh.headers["X-Request-ID"]
        assert len(generated) == 16
    ws = await WsClient.open(server.ws_url, customer)
    await ws.wait_for("ready")
    await ws.close()

    gone_line = f"disconnected: user {customer.id}"

    async def lines() -> list[dict[str, Any]]:
        text = server.log_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    entries = await eventually(lines, lambda got: any(e["message"] == gone_line for e in got))
    for e in entries:  # every line of the log is one JSON object with these fields
        assert {"time", "level", "logger", "message"} <= e.keys(), e
        assert e["time"].endswith("+00:00")
    access = [e for e in entries if e["logger"] == "sanic.access"]
    tagged = [e for e in access if e.get("request_id") == "support-ticket-42"]
    assert tagged and "/v1/me/history" in json.dumps(tagged[0])
    assert any(e.get("request_id") == generated for e in access)
    connected = [e for e in entries if e["message"].startswith("connected: user " + customer.id)]
    assert len(connected) == 1 and connected[0]["conn_id"]
    conn = connected[0]["conn_id"]
    gone = [e for e in entries if e["message"] == gone_line]
    assert [e["conn_id"] for e in gone] == [conn]
    assert any(e["logger"].startswith("halochat") for e in entries)


async def test_dashboard_uses_served_metrics(server: ServerProcess) -> None:
    """docs/grafana-dashboard.json only queries metrics /metrics declares; a scraper asking
    for OpenMetrics gets it."""
    dashboard = json.loads((REPO_ROOT / "docs" / "grafana-dashboard.json").read_text())
    queried = {
        re.sub(r"_bucket$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"halochat_\w+", target["expr"])
    }
    async with api(server.base_url) as http:
        text = (await http.get("/metrics")).text
        scraper = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"}
        open_metrics = await http.get("/metrics", headers=scraper)
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")
    declared = set(re.findall(r"^# HELP (halochat_\w+)", text, re.MULTILINE))
    assert len(queried) >= 10
    assert queried <= declared, queried - declared
