"""Multi-step flows over the real API that many tests need (pairing a session, ...)."""

from typing import Any

from tests.support.clients import Actor, api
from tests.support.server import ServerProcess


def make_pair(server: ServerProcess, tag: str = "") -> tuple[Actor, Actor]:
    """A fresh customer and a fresh available Mitra."""
    customer = server.create_user("customer", f"Customer{tag}")
    mitra = server.create_user("mitra", f"Bestie{tag}", available=True)
    return customer, mitra


async def request_and_accept(
    customer_server: ServerProcess,
    mitra_server: ServerProcess,
    customer: Actor,
    mitra: Actor,
    tier_id: str = "15m",
) -> str:
    """Customer requests a chat for `tier_id` on one server, `mitra` accepts it on another
    (or the same); returns the session id."""
    async with api(customer_server.base_url, customer) as http:
        created = await http.post("/v1/sessions", json={"choice": "tier", "tier_id": tier_id})
        assert created.status_code == 201, created.text
        session_id = created.json()["session"]["id"]
    async with api(mitra_server.base_url, mitra) as http:
        accepted = await http.post(f"/v1/sessions/{session_id}/accept")
        assert accepted.status_code == 200, accepted.text
    return session_id


async def open_active_session(
    server: ServerProcess, customer: Actor, mitra: Actor, *, tier_id: str = "15m"
) -> dict[str, Any]:
    """Customer requests a chat for `tier_id`, `mitra` accepts it; returns the ACTIVE
    session as the customer's GET /v1/sessions/<id> shows it."""
    session_id = await request_and_accept(server, server, customer, mitra, tier_id)
    async with api(server.base_url, customer) as http:
        session = (await http.get(f"/v1/sessions/{session_id}")).json()["session"]
    assert session["state"] == "ACTIVE", session
    return session


async def session_view(server: ServerProcess, actor: Actor, session_id: str) -> dict[str, Any]:
    """GET /v1/sessions/<id> as `actor` (the API view: last_seq includes the live counter)."""
    async with api(server.base_url, actor) as http:
        r = await http.get(f"/v1/sessions/{session_id}")
        assert r.status_code == 200, r.text
        return r.json()["session"]


async def full_history(server: ServerProcess, actor: Actor, session_id: str) -> list[dict]:
    """Every message of the session, oldest first, paged through GET /v1/sessions/<id>/messages."""
    out: list[dict[str, Any]] = []
    async with api(server.base_url, actor) as http:
        while True:
            after = out[-1]["seq"] if out else 0
            r = await http.get(
                f"/v1/sessions/{session_id}/messages", params={"after_seq": after, "limit": 200}
            )
            assert r.status_code == 200, r.text
            page = r.json()
            out += page["messages"]
            if not page["has_more"]:
                return out
