"""Control Center configuration (admin API) and the developer seed command."""

import asyncio
import io
import json
import os
from contextlib import redirect_stdout
from typing import Any
from unittest import mock

from pymongo import MongoClient

from halochat.auth import issue_token
from halochat.cli import seed
from tests.conftest import ServerFactory
from tests.support.clients import Actor, api
from tests.support.server import JWT_SECRET, ServerProcess

EDITABLE = ("tiers", "free_trial_enabled", "free_trial_minutes", "pairing_timeout_seconds")


def editable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in EDITABLE}


async def test_config_is_admin_only(server: ServerProcess) -> None:
    for role in ("customer", "mitra"):
        actor = server.create_user(role, f"Not admin {role}")
        async with api(server.base_url, actor) as http:
            for resp in (
                await http.get("/v1/admin/config"),
                await http.put("/v1/admin/config", json={"tiers": []}),
            ):
                assert resp.status_code == 403
                assert resp.json()["error"]["code"] == "wrong_role"


async def test_validation_names_fields_and_changes_nothing(
    server: ServerProcess, admin: Actor
) -> None:
    async with api(server.base_url, admin) as http:
        before = (await http.get("/v1/admin/config")).json()
        good = editable(before)
        tier = good["tiers"][0]
        cases: list[tuple[dict[str, Any], str]] = [
            ({**good, "tiers": []}, "tiers"),
            ({**good, "tiers": [tier, tier]}, "tiers"),
            ({**good, "tiers": [{**tier, "minutes": 0}]}, "tiers.0.minutes"),
            ({**good, "tiers": [{**tier, "minutes": -1}]}, "tiers.0.minutes"),
            ({**good, "tiers": [{**tier, "price": 0}]}, "tiers.0.price"),
            ({**good, "tiers": [{**tier, "price": -100}]}, "tiers.0.price"),
            ({**good, "tiers": [{**tier, "id": ""}]}, "tiers.0.id"),
            ({**good, "free_trial_minutes": 0}, "free_trial_minutes"),
            ({**good, "pairing_timeout_seconds": 0}, "pairing_timeout_seconds"),
            ({**good, "free_trial_enabled": "maybe"}, "free_trial_enabled"),
            ({k: v for k, v in good.items() if k != "tiers"}, "tiers"),
        ]
        for body, field in cases:
            resp = await http.put("/v1/admin/config", json=body)
            assert resp.status_code == 422, (body, resp.text)
            error = resp.json()["error"]
            assert error["code"] == "validation_error"
            assert field in [f["field"] for f in error["details"]["fields"]], (field, error)
        assert (await http.get("/v1/admin/config")).json() == before


async def test_changes_apply_at_once(server: ServerProcess, admin: Actor) -> None:
    customer = server.create_user("customer", "Fresh")
    async with api(server.base_url, admin) as a, api(server.base_url, customer) as c:
        before = editable((await a.get("/v1/admin/config")).json())
        new = {
            **before,
            "free_trial_enabled": True,
            "free_trial_minutes": 7,
        }
        assert (await a.put("/v1/admin/config", json=new)).status_code == 200
        assert (await c.get("/v1/chat/options")).json() == {
            "kind": "free_trial",
            "free_trial": {"minutes": 7},
        }
        tiers = [{"id": "45m", "label": "45 menit", "minutes": 45, "price": 40000}]
        new = {**new, "free_trial_enabled": False, "tiers": tiers}
        assert (await a.put("/v1/admin/config", json=new)).status_code == 200
        options = (await c.get("/v1/chat/options")).json()
        assert options["kind"] == "tiers"
        assert [(t["id"], t["minutes"], t["price"]) for t in options["tiers"]] == [
            ("45m", 45, 40000)
        ]
        assert (await a.put("/v1/admin/config", json=before)).status_code == 200


async def run_seed(proc: ServerProcess, *args: str) -> str:
    """`halochat seed` as a developer runs it next to `make run`: no MONGODB_URI, same data
    dir, so it must reuse the server's live embedded database. In-process, on a thread of its
    own (the command runs its own event loop); returns what it printed."""
    env = {
        "HALOCHAT_DATA_DIR": str(proc.workdir / "var"),
        "HALOCHAT_DB_NAME": proc.db_name,
        "HALOCHAT_JWT_SECRET": JWT_SECRET,
    }
    out = io.StringIO()

    def run() -> None:
        with redirect_stdout(out):
            seed.main(list(args))

    with mock.patch.dict(os.environ, env):
        for name in [n for n in os.environ if n.startswith("HALOCHAT_") and n not in env]:
            del os.environ[name]
        os.environ.pop("MONGODB_URI", None)
        await asyncio.to_thread(run)
    return out.getvalue()


def snapshot(db: Any) -> dict[str, Any]:
    return {
        name: sorted(
            db[name].find({}, {"updated_at": 0, "version": 0}), key=lambda d: str(d["_id"])
        )
        for name in ("users", "sessions", "messages", "transactions")
    }


async def test_seed_next_to_a_running_server(server_factory: ServerFactory) -> None:
    live = server_factory(own_db=True)  # its own embedded database, like `make run`
    state = json.loads((live.workdir / "var" / "db" / "server.json").read_text())
    client: MongoClient[dict[str, Any]] = MongoClient(state["uri"], tz_aware=True)
    try:
        db = client[live.db_name]
        # The server's own default configuration offers no developer test tier (issue 11).
        assert [t["id"] for t in db["app_config"].find_one()["tiers"]] == ["15m", "30m", "60m"]
        first = await run_seed(live)
        assert "token:" in first
        # Seeding is what adds it.
        tiers = [t["id"] for t in db["app_config"].find_one()["tiers"]]
        assert tiers == ["15m", "30m", "60m", "test-1m"]
        counts = {n: db[n].count_documents({}) for n in ("users", "app_config")}
        await run_seed(live)  # idempotent
        assert {n: db[n].count_documents({}) for n in ("users", "app_config")} == counts
        assert counts["users"] == 6 and counts["app_config"] == 1

        # Some data of the developer's that the tier commands must not touch.
        db["sessions"].insert_one({"customer_id": "x", "state": "COMPLETED", "note": "keep"})
        custom = {"id": "90m", "label": "90 menit", "minutes": 90, "price": 80000}
        db["app_config"].update_one(
            {}, {"$push": {"tiers": custom}, "$set": {"free_trial_minutes": 9}}
        )
        before = snapshot(db)

        await run_seed(live, "--remove-test-tiers", "--no-users")
        config = db["app_config"].find_one()
        assert [t["id"] for t in config["tiers"]] == ["15m", "30m", "60m", "90m"]
        assert config["free_trial_minutes"] == 9

        # A broken test tier is reset, not duplicated.
        db["app_config"].update_one(
            {},
            {"$push": {"tiers": {"id": "test-1m", "label": "old", "minutes": 5, "price": 1}}},
        )
        await run_seed(live, "--test-tiers", "--no-users")
        await run_seed(live, "--no-users")
        config = db["app_config"].find_one()
        assert [t["id"] for t in config["tiers"]] == ["15m", "30m", "60m", "90m", "test-1m"]
        test_tier = config["tiers"][-1]
        assert (test_tier["minutes"], test_tier["test"]) == (1, True)
        assert config["free_trial_minutes"] == 9
        assert snapshot(db) == before

        # The live server sees the new tiers at once, and still serves after the seed exits.
        seeded_admin = db["users"].find_one({"auth_uid": "seed-admin"})
        token = issue_token(live.settings(), seeded_admin["_id"])
        async with api(live.base_url) as http:
            resp = await http.get("/v1/admin/config", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200
        assert "test-1m" in [t["id"] for t in resp.json()["tiers"]]
    finally:
        client.close()
