"""Input validation across HTTP routes and WebSocket frames (issue 11, items 11 and 15-17):
integers beyond int64 or a documented maximum, free text that is empty, whitespace-only,
made of control or invisible characters, and a partial config PUT. Each is a 422
`validation_error` naming the field, and nothing stored changes. One server for the module."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from halochat.constants import ErrorCode
from halochat.inputs import INT64_MAX, Line, Text
from tests.support.clients import WsClient, api, sockets
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess
from tests.test_fuzz_http import db_snapshot, snapshot_diff

# 2^64 - 1 is the largest integer the JSON decoder reads; past it a body is 400 invalid_json.
BEYOND_INT64 = [INT64_MAX + 1, 2**64 - 1]
BLANK_LINES = [
    "",
    "   ",
    "\t\n ",
    "\u200b\u200c\u200d\ufeff",  # zero-width only
    "\u3164\u3164",  # Hangul filler: renders blank
    "\u0301",  # a lone combining mark
    "\u202e",  # a bidi override alone
]
CONTROL_LINES = ["Bob\x00", "a\x07b", "x\x1b[31m", "two\nlines", "a\u2028b"]
EDITABLE = ("tiers", "free_trial_enabled", "free_trial_minutes", "pairing_timeout_seconds")


class LineModel(BaseModel):
    value: Line


class TextModel(BaseModel):
    value: Text


# ---------------------------------------------------------------- the shared string type


@pytest.mark.parametrize("raw", BLANK_LINES + CONTROL_LINES)
def test_a_line_refuses_blank_invisible_and_control_text(raw: str) -> None:
    with pytest.raises(ValidationError) as info:
        LineModel(value=raw)
    assert info.value.errors()[0]["type"] in (
        "string_too_short",
        "blank_text",
        "control_character",
    )


@pytest.mark.parametrize("raw", [*BLANK_LINES, "hi\x00", "\x7f", "a\ud800"])
def test_a_text_refuses_blank_invisible_and_control_text(raw: str) -> None:
    with pytest.raises(ValidationError):
        TextModel(value=raw)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("  Rina  ", "Rina"),
        ("\u200bRina\ufeff", "Rina"),
        ("Cafe\u0301", "Café"),  # NFC
        ("👩\u200d💻", "👩\u200d💻"),  # a ZWJ sequence is visible
        ("🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f", None),  # tag flag
    ],
)
def test_a_line_is_normalised(raw: str, stored: str | None) -> None:
    assert LineModel(value=raw).value == (stored if stored is not None else raw)


def test_a_text_keeps_lines_and_tabs() -> None:
    assert TextModel(value="\r\n line one\r\n\tline two \n").value == "line one\n\tline two"


# ------------------------------------------------------------------------- live server


@pytest.fixture(scope="module")
def world(server: ServerProcess) -> dict[str, Any]:
    import asyncio

    customer, mitra = make_pair(server, " validation")
    session = asyncio.run(open_active_session(server, customer, mitra))
    admin = server.create_user("admin", "Admin validation")
    return {"customer": customer, "mitra": mitra, "admin": admin, "session": session["id"]}


class Stored:
    """'Nothing stored changed' between two points of a test."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.before = db_snapshot(server)

    def unchanged(self) -> None:
        diff = snapshot_diff(self.before, db_snapshot(self.server))
        assert not diff, diff


def assert_422(resp: Any, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == ErrorCode.VALIDATION_ERROR, error
    fields = [f["field"] for f in error["details"]["fields"]]
    if field is not None:
        assert field in fields, (field, error)
    return error


def assert_frame_422(answer: dict[str, Any], field: str) -> None:
    assert answer["type"] == "error", answer
    error = answer["error"]
    assert error["code"] == ErrorCode.VALIDATION_ERROR, error
    assert field in [f["field"] for f in error["details"]["fields"]], error


@pytest.fixture
async def customer_ws(server: ServerProcess, world: dict[str, Any]) -> AsyncIterator[WsClient]:
    async with sockets(server, world["customer"]) as (ws,):
        yield ws


async def test_integers_beyond_int64_are_422_over_http(
    server: ServerProcess, world: dict[str, Any]
) -> None:
    sid, customer, admin = world["session"], world["customer"], world["admin"]
    stored = Stored(server)
    async with api(server.base_url, customer) as http:
        for big in BEYOND_INT64:
            resp = await http.post(
                f"/v1/sessions/{sid}/receipts", json={"kind": "read", "seq": big}
            )
            assert_422(resp, "seq")
        for big in [*BEYOND_INT64, 10**30]:
            for name in ("after_seq", "before_seq", "limit"):
                resp = await http.get(f"/v1/sessions/{sid}/messages", params={name: str(big)})
                assert_422(resp, name)
    async with api(server.base_url, admin) as http:
        config = (await http.get("/v1/admin/config")).json()
        tier = {**config["tiers"][0], "price": 2**63}
        resp = await http.put("/v1/admin/config", json={**editable(config), "tiers": [tier]})
        assert_422(resp, "tiers.0.price")
        resp = await http.patch("/v1/admin/config", json={"tiers": [tier]})
        assert_422(resp, "tiers.0.price")
        # A sensible maximum too, far inside int64.
        resp = await http.patch("/v1/admin/config", json={"tiers": [{**tier, "price": 10**12}]})
        assert_422(resp, "tiers.0.price")
    stored.unchanged()


async def test_integers_beyond_int64_are_422_over_the_websocket(
    server: ServerProcess, world: dict[str, Any], customer_ws: WsClient
) -> None:
    sid = world["session"]
    stored = Stored(server)
    for big in BEYOND_INT64:
        answer = await customer_ws.request(
            "receipt", {"session_id": sid, "kind": "read", "seq": big}
        )
        assert_frame_422(answer, "seq")
        answer = await customer_ws.request("hello", {"sessions": {sid: big}})
        assert_frame_422(answer, f"sessions.{sid}")
    answer = await customer_ws.request("hello", {"sessions": {sid: -1}})
    assert_frame_422(answer, f"sessions.{sid}")
    stored.unchanged()


async def test_history_limit_over_the_maximum_is_refused(
    server: ServerProcess, world: dict[str, Any]
) -> None:
    async with api(server.base_url, world["customer"]) as http:
        url = f"/v1/sessions/{world['session']}/messages"
        error = assert_422(await http.get(url, params={"limit": 201}), "limit")
        assert "200" in error["details"]["fields"][0]["message"]
        assert (await http.get(url, params={"limit": 200})).status_code == 200
        assert_422(await http.get("/v1/me/history", params={"limit": 101}), "limit")


async def test_blank_or_control_text_is_422_and_stores_nothing(
    server: ServerProcess, world: dict[str, Any], customer_ws: WsClient
) -> None:
    sid, customer, admin = world["session"], world["customer"], world["admin"]
    stored = Stored(server)
    async with api(server.base_url, admin) as http:
        for name in BLANK_LINES + CONTROL_LINES:
            resp = await http.post(
                "/v1/admin/users", json={"role": "customer", "display_name": name}
            )
            assert_422(resp, "display_name")
        config = (await http.get("/v1/admin/config")).json()
        for label in ("  ", "\u200b", "a\x00"):
            tier = {**config["tiers"][0], "label": label}
            assert_422(
                await http.patch("/v1/admin/config", json={"tiers": [tier]}), "tiers.0.label"
            )
    async with api(server.base_url, customer) as http:
        for bad in [*BLANK_LINES, "id\x07", "new\nline"]:
            resp = await http.post(
                f"/v1/sessions/{sid}/messages", json={"client_msg_id": bad, "body": "hi"}
            )
            assert_422(resp, "client_msg_id")
        for bad in [*BLANK_LINES, "hi\x00", "\x1b"]:
            resp = await http.post(
                f"/v1/sessions/{sid}/messages", json={"client_msg_id": "v-1", "body": bad}
            )
            assert_422(resp, "body")
        for bad in ("", "  ", "\u200b\u200b", "ok\x00"):
            resp = await http.put(
                "/v1/devices/", json={"device_id": "d1", "fcm_token": "t", "platform": bad}
            )
            assert_422(resp, "platform")
    for bad in BLANK_LINES:
        data = {"session_id": sid, "client_msg_id": "v-2", "body": bad}
        assert_frame_422(await customer_ws.request("message.send", data), "body")
        data = {"session_id": sid, "client_msg_id": bad, "body": "hi"}
        assert_frame_422(await customer_ws.request("message.send", data), "client_msg_id")
    stored.unchanged()


async def test_text_is_stored_normalised(server: ServerProcess, world: dict[str, Any]) -> None:
    async with api(server.base_url, world["admin"]) as http:
        resp = await http.post(
            "/v1/admin/users", json={"role": "customer", "display_name": "\u200b  Sinta \ufeff"}
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["display_name"] == "Sinta"
    async with api(server.base_url, world["customer"]) as http:
        resp = await http.post(
            f"/v1/sessions/{world['session']}/messages",
            json={"client_msg_id": " norm-1 ", "body": " 👩\u200d💻\r\nok "},
        )
        assert resp.status_code == 201, resp.text
        message = resp.json()["message"]
        assert (message["client_msg_id"], message["body"]) == ("norm-1", "👩\u200d💻\nok")


async def test_closure_text_must_be_visible(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, " closure")
    session = await open_active_session(server, customer, mitra)
    sid = session["id"]
    async with api(server.base_url, customer) as http:
        assert (await http.post(f"/v1/sessions/{sid}/end")).status_code == 200
        stored = Stored(server)
        for bad in [*BLANK_LINES, "bye\x00"]:
            resp = await http.post(f"/v1/sessions/{sid}/closure", json={"text": bad})
            assert_422(resp, "text")
        stored.unchanged()
        resp = await http.post(f"/v1/sessions/{sid}/closure", json={"text": " Terima kasih! "})
        assert resp.status_code == 200, resp.text


# ------------------------------------------------------------- config: PUT and PATCH


def editable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in EDITABLE}


async def test_a_partial_put_is_refused_and_patch_merges(
    server: ServerProcess, world: dict[str, Any]
) -> None:
    async with api(server.base_url, world["admin"]) as http:
        before = (await http.get("/v1/admin/config")).json()
        stored = Stored(server)
        # The attack: PUT with tiers only used to reset the other settings to defaults.
        error = assert_422(await http.put("/v1/admin/config", json={"tiers": before["tiers"]}))
        missing = {f["field"] for f in error["details"]["fields"] if f["type"] == "missing"}
        assert missing == {"free_trial_enabled", "free_trial_minutes", "pairing_timeout_seconds"}
        for body in (
            {"free_trial_minutes": None},
            {"tiers": None},
            {"free_trial_enabled": "yes"},
            {"pairing_timeout_seconds": 2**63},
            {"tiers": []},
            {"unknown": 1},
        ):
            assert_422(await http.patch("/v1/admin/config", json=body))
        stored.unchanged()

        resp = await http.patch("/v1/admin/config", json={"pairing_timeout_seconds": 77})
        assert resp.status_code == 200, resp.text
        after = resp.json()
        assert after["pairing_timeout_seconds"] == 77
        assert after["version"] == before["version"] + 1
        assert editable(after) == {**editable(before), "pairing_timeout_seconds": 77}
        # An empty merge changes nothing.
        same = (await http.patch("/v1/admin/config", json={})).json()
        assert same["version"] == after["version"]
        resp = await http.put("/v1/admin/config", json=editable(before))
        assert resp.status_code == 200, resp.text
        assert editable(resp.json()) == editable(before)


async def test_openapi_marks_every_put_field_required(server: ServerProcess) -> None:
    async with api(server.base_url) as http:
        spec = (await http.get("/docs/openapi.json")).json()
    item = spec["paths"]["/v1/admin/config"]
    put = item["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(put["required"]) == set(EDITABLE)
    patch = item["patch"]["requestBody"]["content"]["application/json"]["schema"]
    assert not patch.get("required")
    limit = next(
        p
        for p in spec["paths"]["/v1/sessions/{session_id}/messages"]["get"]["parameters"]
        if p["name"] == "limit"
    )
    assert limit["schema"].get("maximum") == 200, limit
