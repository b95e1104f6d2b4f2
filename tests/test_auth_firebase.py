"""HALOCHAT_AUTH_MODE=firebase end to end (issue 11, item 5), through firebase-admin's own
verify_id_token: its supported emulator mode (FIREBASE_AUTH_EMULATOR_HOST, where it accepts
unsigned ID tokens with the right aud/iss/sub), and without it, with Google's key fetch
failing (a proxy on a closed loopback port), which answers 503."""

import asyncio
import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from bson import ObjectId

from halochat.launch import free_port
from tests.conftest import ServerFactory
from tests.support.clients import WsClient, api
from tests.support.server import ServerProcess

PROJECT = "halochat-auth-test"
ISSUER = f"https://securetoken.google.com/{PROJECT}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def id_token(uid: str, *, signed_look: bool = False, **overrides: Any) -> str:
    """A Firebase ID token's shape. Unsigned (alg none) for the emulator; `signed_look`
    gives it an RS256 header and a key id, so the real path goes on to fetch Google's keys."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": PROJECT,
        "iss": ISSUER,
        "sub": uid,
        "iat": now,
        "auth_time": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    header = {"alg": "RS256", "kid": "k1", "typ": "JWT"} if signed_look else {"alg": "none"}
    signature = _b64(b"not-a-signature") if signed_look else ""
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{signature}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_user(server: ServerProcess, role: str, uid: str) -> str:
    doc = {"_id": ObjectId(), "role": role, "display_name": uid, "auth_uid": uid}
    server.db["users"].insert_one({**doc, "available": False, "disabled": False})
    return str(doc["_id"])


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code, resp.text


@pytest.fixture(scope="module")
def servers(server_factory: ServerFactory) -> dict[str, ServerProcess]:
    """Both servers of the module, started side by side."""
    closed = f"http://127.0.0.1:{free_port()}"
    made = {
        # The emulator host is never contacted: verify_id_token (no revocation check) is local.
        "emulated": server_factory(
            {
                "HALOCHAT_AUTH_MODE": "firebase",
                "HALOCHAT_FIREBASE_PROJECT_ID": PROJECT,
                "FIREBASE_AUTH_EMULATOR_HOST": f"127.0.0.1:{free_port()}",
            },
            start=False,
        ),
        # No emulator: Google's keys are fetched through a proxy on a closed loopback port.
        "offline": server_factory(
            {
                "HALOCHAT_AUTH_MODE": "firebase",
                "HALOCHAT_FIREBASE_PROJECT_ID": PROJECT,
                "FIREBASE_AUTH_EMULATOR_HOST": "",
                **{name: closed for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY")},
                "NO_PROXY": "",
                "no_proxy": "",
            },
            start=False,
        ),
    }
    with ThreadPoolExecutor(len(made)) as pool:
        list(pool.map(ServerProcess.start, made.values()))
    return made


@pytest.fixture(scope="module")
def server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["emulated"]


async def test_firebase_id_tokens_authenticate_by_auth_uid(server: ServerProcess) -> None:
    add_user(server, "customer", "fb-customer")
    # A socket whose token expires in 2 s: it closes with 4401 at expiry, as in local mode.
    short = id_token("fb-customer", exp=int(time.time()) + 2)
    client = await WsClient.open(server.ws_url, query=f"token={short}")
    try:
        ready = await client.wait_for("ready")
        assert ready["data"]["role"] == "customer"
        async with api(server.base_url) as http:
            me = await http.get("/v1/me", headers=bearer(id_token("fb-customer")))
            assert me.status_code == 200, me.text
            assert me.json()["display_name"] == "fb-customer"
            # Unknown uid; a token of another project; an expired one (checked by halochat:
            # the emulator mode does not); a local HS256 token (not accepted in this mode).
            unknown = await http.get("/v1/me", headers=bearer(id_token("nobody")))
            assert_error(unknown, 401, "user_not_found")
            other_aud = id_token("fb-customer", aud="another-project")
            assert_error(await http.get("/v1/me", headers=bearer(other_aud)), 401, "invalid_token")
            expired = id_token("fb-customer", exp=int(time.time()) - 10)
            assert_error(await http.get("/v1/me", headers=bearer(expired)), 401, "token_expired")
            local = server.create_user("customer", "Local")
            assert_error(await http.get("/v1/me", headers=local.headers), 401, "invalid_token")
        error = await client.wait_for("error", timeout=15)
        assert error["error"]["code"] == "token_expired"
        await asyncio.wait_for(client.conn.wait_closed(), 15)
        assert client.conn.close_code == 4401
    finally:
        await client.close()
    # The library's own reason is logged; the token never is.
    log = server.log_path.read_text(errors="replace")
    assert 'incorrect "aud" (audience) claim' in log
    assert other_aud not in log and short not in log


async def test_admin_api_and_revocation_in_firebase_mode(server: ServerProcess) -> None:
    add_user(server, "admin", "fb-admin")
    admin = bearer(id_token("fb-admin"))
    async with api(server.base_url) as http:
        created = await http.post(
            "/v1/admin/users",
            json={"role": "mitra", "display_name": "Bestie Fb", "auth_uid": "fb-mitra"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        assert "token" not in created.json()  # Firebase issues the tokens in this mode
        mitra_id = created.json()["id"]
        signed_in = id_token("fb-mitra")
        assert (await http.get("/v1/me", headers=bearer(signed_in))).status_code == 200
        revoked = await http.post(f"/v1/admin/users/{mitra_id}/revoke-tokens", headers=admin)
        assert revoked.status_code == 200, revoked.text
        # Revocation goes by the sign-in time: a refreshed token of the old sign-in (new
        # iat, same auth_time) is refused too; a new sign-in is accepted.
        old_auth_time = json.loads(base64.urlsafe_b64decode(signed_in.split(".")[1] + "=="))[
            "auth_time"
        ]
        refreshed = id_token("fb-mitra", iat=int(time.time()) + 5, auth_time=old_auth_time)
        for token in (signed_in, refreshed):
            assert_error(await http.get("/v1/me", headers=bearer(token)), 401, "token_revoked")
        new_sign_in = id_token("fb-mitra", auth_time=old_auth_time + 2, iat=old_auth_time + 2)
        assert (await http.get("/v1/me", headers=bearer(new_sign_in))).status_code == 200
        # Disabled: refused whatever the token.
        r = await http.post(f"/v1/admin/users/{mitra_id}/disable", headers=admin)
        assert r.status_code == 200, r.text
        assert_error(await http.get("/v1/me", headers=bearer(new_sign_in)), 403, "user_disabled")


async def test_an_unreachable_key_server_answers_503(servers: dict[str, ServerProcess]) -> None:
    """No emulator: verify_id_token fetches Google's public keys, here through a proxy on a
    closed loopback port, so the fetch fails at once: 503, the cause logged."""
    offline = servers["offline"]
    add_user(offline, "customer", "fb-offline")
    token = id_token("fb-offline", signed_look=True)
    async with api(offline.base_url) as http:
        started = time.monotonic()
        assert_error(await http.get("/v1/me", headers=bearer(token)), 503, "service_unavailable")
        assert time.monotonic() - started < 10
        # What can be refused without the keys still is: 401, not 503.
        unsigned = id_token("fb-offline")
        assert_error(await http.get("/v1/me", headers=bearer(unsigned)), 401, "invalid_token")
    client = await WsClient.open(offline.ws_url, query=f"token={token}")
    try:
        error = await client.wait_for("error", timeout=15)
        assert error["error"]["code"] == "service_unavailable"
        await asyncio.wait_for(client.conn.wait_closed(), 15)
        assert client.conn.close_code == 1013  # try again later: the token may be good
    finally:
        await client.close()
    log = offline.log_path.read_text(errors="replace")
    assert "cannot verify Firebase ID tokens: CertificateFetchError" in log
    assert token not in log
