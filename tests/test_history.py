"""GET /v1/me/history and /v1/me/sessions/open."""

from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from tests.support.clients import Actor, api
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess
from tests.support.stored import session_doc

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def finished(customer: Actor, mitra: Actor, completed: datetime, **kw: Any) -> dict[str, Any]:
    return session_doc(
        completed - timedelta(minutes=20),
        **{
            "customer_id": ObjectId(customer.id),
            "customer_name": customer.name,
            "mitra_id": ObjectId(mitra.id),
            "mitra_name": mitra.name,
            "updated_at": completed,
            "started_at": completed - timedelta(minutes=19),
            "ended_at": completed - timedelta(minutes=4),
            "completed_at": completed,
            "closures": {
                "customer": {"text": "makasih", "at": completed},
                "mitra": {"text": "sama-sama", "at": completed},
            },
            **kw,
        },
    )


async def test_real_session_lands_in_both_histories(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, " H1")
    session = await open_active_session(server, customer, mitra)
    sid = session["id"]
    async with api(server.base_url, customer) as c, api(server.base_url, mitra) as m:
        open_c = (await c.get("/v1/me/sessions/open")).json()["sessions"]
        open_m = (await m.get("/v1/me/sessions/open")).json()["sessions"]
        assert [s["id"] for s in open_c] == [sid] and [s["id"] for s in open_m] == [sid]
        assert open_c[0]["other_party"]["name"] == mitra.name
        assert (await c.get("/v1/me/history")).json() == {"sessions": [], "next_cursor": None}

        assert (await c.post(f"/v1/sessions/{sid}/end")).status_code == 200
        r = await c.post(f"/v1/sessions/{sid}/closure", json={"text": "Makasih, Bestie!"})
        assert r.status_code == 200, r.text
        r = await m.post(f"/v1/sessions/{sid}/closure", json={"text": "Sama-sama 🙂"})
        assert r.status_code == 200, r.text

        hist_c = (await c.get("/v1/me/history")).json()
        hist_m = (await m.get("/v1/me/history")).json()
        assert (await c.get("/v1/me/sessions/open")).json()["sessions"] == []
    assert hist_c["next_cursor"] is None
    [item_c], [item_m] = hist_c["sessions"], hist_m["sessions"]
    assert item_c["id"] == item_m["id"] == sid and item_c["state"] == "COMPLETED"
    # The customer sees the Mitra's (bestie) name, the Mitra sees the customer's.
    assert item_c["other_party"] == {"id": mitra.id, "name": mitra.name, "role": "mitra"}
    assert item_m["other_party"] == {"id": customer.id, "name": customer.name, "role": "customer"}
    for item in (item_c, item_m):
        assert item["closures"]["customer"]["text"] == "Makasih, Bestie!"
        assert item["closures"]["mitra"]["text"] == "Sama-sama 🙂"
        assert item["tier"]["minutes"] == 15 and item["total_minutes"] == 15
        assert item["started_at"] and item["ended_at"] and item["completed_at"]


async def test_pagination_is_gapless_and_private(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, " P")
    other_customer, other_mitra = make_pair(server, " Q")
    # 45 finished sessions; groups of three share a completed_at to exercise the _id tiebreak.
    mine = [finished(customer, mitra, T0 + timedelta(minutes=i // 3)) for i in range(45)]
    noise = [
        finished(other_customer, other_mitra, T0 + timedelta(minutes=i)) for i in range(10)
    ] + [
        finished(customer, mitra, T0, state="CANCELLED"),
        finished(customer, mitra, T0, state="UNMATCHED"),
    ]
    server.db["sessions"].insert_many(mine + noise)
    expected = [
        str(d["_id"])
        for d in sorted(mine, key=lambda d: (d["completed_at"], d["_id"]), reverse=True)
    ]
    for actor in (customer, mitra):
        seen: list[str] = []
        cursor = None
        async with api(server.base_url, actor) as http:
            while True:
                params: dict[str, Any] = {"limit": 7}
                if cursor:
                    params["cursor"] = cursor
                page = (await http.get("/v1/me/history", params=params)).json()
                assert len(page["sessions"]) <= 7
                seen += [s["id"] for s in page["sessions"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        assert seen == expected, actor.role
    async with api(server.base_url, other_customer) as http:
        page = (await http.get("/v1/me/history", params={"limit": 100})).json()
    assert len(page["sessions"]) == 10
    assert all(s["customer"]["id"] == other_customer.id for s in page["sessions"])
    assert not set(s["id"] for s in page["sessions"]) & set(expected)


async def test_limits_cursor_and_roles(server: ServerProcess, admin: Actor) -> None:
    customer, mitra = make_pair(server, " L")
    server.db["sessions"].insert_many(
        [finished(customer, mitra, T0 + timedelta(minutes=i)) for i in range(25)]
    )
    async with api(server.base_url, customer) as http:
        default = (await http.get("/v1/me/history")).json()
        assert len(default["sessions"]) == 20 and default["next_cursor"]
        rest = (await http.get("/v1/me/history", params={"cursor": default["next_cursor"]})).json()
        assert len(rest["sessions"]) == 5 and rest["next_cursor"] is None
        for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"bogus": 1}):
            r = await http.get("/v1/me/history", params=params)
            assert r.status_code == 422, params
            assert r.json()["error"]["code"] == "validation_error"
        for bad in ("garbage!", "eyJ0IjogMX0", "e30"):
            r = await http.get("/v1/me/history", params={"cursor": bad})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    async with api(server.base_url, admin) as http:
        assert (await http.get("/v1/me/history")).status_code == 403
        assert (await http.get("/v1/me/sessions/open")).status_code == 403
    async with api(server.base_url) as http:
        assert (await http.get("/v1/me/history")).status_code == 401
