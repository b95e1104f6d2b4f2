"""Foundation: health, OpenAPI, auth, the error shape, config round trip, devices."""

from datetime import timedelta

import httpx
import jwt
import pytest
from bson import ObjectId

from halochat.documents.common import utcnow
from tests.support.clients import Actor, api
from tests.support.server import JWT_SECRET, ServerProcess


def assert_error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


async def test_health_and_ready(server: ServerProcess) -> None:
    async with api(server.base_url) as http:
        live = (await http.get("/healthz")).json()
        assert live["status"] == "ok" and set(live["checks"].values()) <= {"ok", "not_used"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["database"] == "ok"


async def test_openapi_is_served(server: ServerProcess) -> None:
    async with api(server.base_url) as http:
        spec = (await http.get("/docs/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert "/v1/me" in spec["paths"]
    assert "/v1/admin/config" in spec["paths"] or "/v1/admin/config/" in spec["paths"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "auth_required"),
        ({"Authorization": "Basic abc"}, "auth_required"),
        ({"Authorization": "Bearer not-a-jwt"}, "invalid_token"),
    ],
)
async def test_missing_or_bad_token(server: ServerProcess, headers: dict, code: str) -> None:
    async with api(server.base_url) as http:
        assert_error(await http.get("/v1/me", headers=headers), 401, code)


async def test_expired_wrong_secret_and_unknown_user(server: ServerProcess) -> None:
    user = server.create_user("customer", "Ayu")
    now = utcnow()
    expired = jwt.encode(
        {
            "sub": user.id,
            "iss": "halochat",
            "iat": now - timedelta(hours=2),
            "exp": now - timedelta(hours=1),
        },
        JWT_SECRET,
        algorithm="HS256",
    )
    forged = jwt.encode(
        {"sub": user.id, "iss": "halochat", "exp": now + timedelta(hours=1)},
        "another-secret-of-sufficient-length-0123456789",
        algorithm="HS256",
    )
    ghost = jwt.encode(
        {"sub": str(ObjectId()), "iss": "halochat", "exp": now + timedelta(hours=1)},
        JWT_SECRET,
        algorithm="HS256",
    )
    async with api(server.base_url) as http:
        assert_error(
            await http.get("/v1/me", headers={"Authorization": f"Bearer {expired}"}),
            401,
            "token_expired",
        )
        assert_error(
            await http.get("/v1/me", headers={"Authorization": f"Bearer {forged}"}),
            401,
            "invalid_token",
        )
        assert_error(
            await http.get("/v1/me", headers={"Authorization": f"Bearer {ghost}"}),
            401,
            "user_not_found",
        )


async def test_me_returns_stored_role(server: ServerProcess) -> None:
    mitra = server.create_user("mitra", "Bestie Sari")
    async with api(server.base_url, mitra) as http:
        me = (await http.get("/v1/me")).json()
    assert me == {
        "id": mitra.id,
        "role": "mitra",
        "display_name": "Bestie Sari",
        "available": False,
        "created_at": me["created_at"],
    }


async def test_role_comes_from_the_stored_user(server: ServerProcess) -> None:
    customer = server.create_user("customer", "Ayu")
    # A role claim smuggled into the token is ignored.
    token = jwt.encode(
        {
            "sub": customer.id,
            "iss": "halochat",
            "role": "admin",
            "exp": utcnow() + timedelta(hours=1),
        },
        JWT_SECRET,
        algorithm="HS256",
    )
    async with api(server.base_url) as http:
        resp = await http.get("/v1/admin/config", headers={"Authorization": f"Bearer {token}"})
    assert_error(resp, 403, "wrong_role")


async def test_error_classes(server: ServerProcess, admin: Actor) -> None:
    async with api(server.base_url, admin) as http:
        assert_error(await http.get("/nope"), 404, "not_found")
        assert_error(await http.delete("/v1/me"), 405, "method_not_allowed")
        assert_error(await http.put("/v1/admin/config", content=b"{not json"), 400, "invalid_json")
        assert_error(await http.put("/v1/admin/config", content=b"[1,2]"), 400, "invalid_json")
        err = assert_error(
            await http.put("/v1/admin/config", json={"tiers": "many"}), 422, "validation_error"
        )
        assert any(f["field"] == "tiers" for f in err["details"]["fields"])
        big = b'{"tiers": "' + b"x" * (70 * 1024) + b'"}'
        assert_error(await http.put("/v1/admin/config", content=big), 413, "payload_too_large")


async def test_config_round_trip_and_validation(server: ServerProcess, admin: Actor) -> None:
    async with api(server.base_url, admin) as http:
        before = (await http.get("/v1/admin/config")).json()
        assert {t["id"] for t in before["tiers"]} >= {"15m", "30m", "60m", "test-1m"}
        assert before["free_trial_enabled"] is True
        new = {
            "tiers": [{"id": "20m", "label": "20 menit", "minutes": 20, "price": 20000}],
            "free_trial_enabled": False,
            "free_trial_minutes": 3,
            "pairing_timeout_seconds": 45,
        }
        after = (await http.put("/v1/admin/config", json=new)).json()
        assert after["tiers"][0]["id"] == "20m" and after["free_trial_enabled"] is False
        assert after["version"] == before["version"] + 1
        assert (await http.get("/v1/admin/config")).json() == after
        bad_bodies = [
            {**new, "tiers": []},
            {**new, "tiers": [new["tiers"][0], new["tiers"][0]]},
            {**new, "tiers": [{**new["tiers"][0], "minutes": 0}]},
            {**new, "tiers": [{**new["tiers"][0], "price": -5}]},
            {**new, "pairing_timeout_seconds": "soon"},
            {**new, "unexpected": 1},
        ]
        for body in bad_bodies:
            assert_error(await http.put("/v1/admin/config", json=body), 422, "validation_error")
        assert (await http.get("/v1/admin/config")).json() == after  # nothing changed
        # Restore the defaults for other tests in this module.
        restore = {
            k: before[k]
            for k in (
                "tiers",
                "free_trial_enabled",
                "free_trial_minutes",
                "pairing_timeout_seconds",
            )
        }
        assert (await http.put("/v1/admin/config", json=restore)).status_code == 200


async def test_admin_creates_users_with_tokens(server: ServerProcess, admin: Actor) -> None:
    async with api(server.base_url, admin) as http:
        created = await http.post(
            "/v1/admin/users", json={"role": "mitra", "display_name": "Bestie Nia"}
        )
        assert created.status_code == 201
        user = created.json()
        # Users without auth_uid do not collide on its unique sparse index.
        second = await http.post(
            "/v1/admin/users", json={"role": "customer", "display_name": "Ayu"}
        )
        assert second.status_code == 201, second.text
        assert second.json()["id"] != user["id"]
        assert_error(
            await http.post("/v1/admin/users", json={"role": "boss", "display_name": "x"}),
            422,
            "validation_error",
        )
    async with api(server.base_url) as http:
        me = await http.get("/v1/me", headers={"Authorization": f"Bearer {user['token']}"})
    assert me.json()["role"] == "mitra"


async def test_admin_lists_users_by_role_in_pages(server: ServerProcess, admin: Actor) -> None:
    made = [server.create_user("customer", f"Pager {i}") for i in range(3)]
    mitra = server.create_user("mitra", "Bestie Pager", available=True)
    server.db["users"].update_one({"_id": ObjectId(made[1].id)}, {"$set": {"auth_uid": "pg-1"}})
    async with api(server.base_url, admin) as http:
        seen: list[dict] = []
        after = None
        while True:
            params = {"role": "customer", "limit": 2} | ({"after": after} if after else {})
            page = await http.get("/v1/admin/users", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            assert set(body) == {"users", "next_after"} and len(body["users"]) <= 2
            seen += body["users"]
            after = body["next_after"]
            if after is None:
                break
            assert after == body["users"][-1]["id"]
        ids = [u["id"] for u in seen]
        assert len(ids) == len(set(ids)), "a page repeated a user"
        assert ids == sorted(ids), "users come in creation (id) order"
        assert {u["role"] for u in seen} == {"customer"}
        mine = [u for u in seen if u["id"] in {m.id for m in made}]
        assert [u["display_name"] for u in mine] == ["Pager 0", "Pager 1", "Pager 2"]
        assert mine[1]["auth_uid"] == "pg-1" and mine[0]["auth_uid"] is None
        assert all(u["disabled"] is False and "created_at" in u for u in mine)
        every = (await http.get("/v1/admin/users", params={"limit": 200})).json()["users"]
        assert {mitra.id, admin.id, made[0].id} <= {u["id"] for u in every}
        mitras = (await http.get("/v1/admin/users", params={"role": "mitra"})).json()["users"]
        assert mitra.id in {u["id"] for u in mitras} and {u["role"] for u in mitras} == {"mitra"}
        assert next(u for u in mitras if u["id"] == mitra.id)["available"] is True
        for bad in (
            {"limit": 0},
            {"limit": 201},
            {"limit": "x"},
            {"role": "boss"},
            {"after": "not-an-id"},
            {"sort": "name"},
        ):
            err = assert_error(
                await http.get("/v1/admin/users", params=bad), 422, "validation_error"
            )
            assert err["details"]["fields"], bad
    async with api(server.base_url, made[0]) as http:
        assert_error(await http.get("/v1/admin/users"), 403, "wrong_role")
    async with api(server.base_url) as http:
        assert_error(await http.get("/v1/admin/users"), 401, "auth_required")


async def test_admin_issues_a_token_for_an_existing_user(
    server: ServerProcess, admin: Actor
) -> None:
    customer = server.create_user("customer", "Token Taker")
    gone = server.create_user("mitra", "Bestie Gone")
    server.db["users"].update_one({"_id": ObjectId(gone.id)}, {"$set": {"disabled": True}})
    users_before = server.db["users"].count_documents({})
    async with api(server.base_url, admin) as http:
        issued = await http.post(f"/v1/admin/users/{customer.id}/token")
        assert issued.status_code == 200, issued.text
        body = issued.json()
        assert body["user"]["id"] == customer.id and body["user"]["role"] == "customer"
        assert_error(await http.post(f"/v1/admin/users/{ObjectId()}/token"), 404, "not_found")
        assert_error(await http.post("/v1/admin/users/nope/token"), 404, "not_found")
        err = assert_error(await http.post(f"/v1/admin/users/{gone.id}/token"), 409, "conflict")
        assert err["details"] == {"disabled": True}
        assert_error(
            await http.get(f"/v1/admin/users/{customer.id}/token"), 405, "method_not_allowed"
        )
    async with api(server.base_url) as http:
        headers = {"Authorization": f"Bearer {body['token']}"}
        me = await http.get("/v1/me", headers=headers)
        assert me.status_code == 200 and me.json()["id"] == customer.id
    async with api(server.base_url, customer) as http:
        assert_error(await http.post(f"/v1/admin/users/{customer.id}/token"), 403, "wrong_role")
    assert server.db["users"].count_documents({}) == users_before


async def test_no_tokens_from_halochat_in_firebase_mode() -> None:
    from halochat.config import Settings
    from halochat.constants import AuthMode
    from halochat.domain.users import token_for
    from halochat.errors import ApiError

    with pytest.raises(ApiError) as caught:
        await token_for(Settings(auth_mode=AuthMode.FIREBASE), ObjectId())
    assert caught.value.status == 409 and caught.value.details == {"auth_mode": "firebase"}


async def test_playground_is_off_by_default(server: ServerProcess) -> None:
    async with api(server.base_url) as http:
        for path in ("/playground", "/playground/", "/playground/index.html"):
            assert_error(await http.get(path), 404, "not_found")
        # Nor is the test clock's control (docs/testing.md): only a test server has it.
        assert_error(
            await http.post("/v1/test/clock", json={"advance_seconds": 60}), 404, "not_found"
        )
        spec = (await http.get("/docs/openapi.json")).json()
    assert "/v1/admin/users" in spec["paths"]
    assert "/v1/admin/users/{user_id}/token" in spec["paths"]
    assert not [p for p in spec["paths"] if p.startswith(("/playground", "/v1/test"))]


async def test_devices_register_list_delete(server: ServerProcess) -> None:
    user = server.create_user("customer", "Ayu")
    other = server.create_user("customer", "Budi")
    async with api(server.base_url, user) as http:
        r = await http.put("/v1/devices", json={"device_id": "phone-1", "fcm_token": "tok-a"})
        assert r.status_code == 200
        r = await http.put(
            "/v1/devices",
            json={"device_id": "phone-1", "fcm_token": "tok-b", "platform": "android"},
        )
        assert r.json()["platform"] == "android"
        listed = (await http.get("/v1/devices")).json()["devices"]
        assert [d["device_id"] for d in listed] == ["phone-1"]
        assert_error(
            await http.put("/v1/devices", json={"device_id": "bad id!", "fcm_token": "x"}),
            422,
            "validation_error",
        )
    # The same FCM token registered by another user moves to them.
    async with api(server.base_url, other) as http:
        await http.put("/v1/devices", json={"device_id": "tablet", "fcm_token": "tok-b"})
        assert_error(await http.delete("/v1/devices/phone-1"), 404, "not_found")
    assert server.db["devices"].count_documents({"fcm_token": "tok-b"}) == 1
    async with api(server.base_url, user) as http:
        assert (await http.get("/v1/devices")).json()["devices"] == []
