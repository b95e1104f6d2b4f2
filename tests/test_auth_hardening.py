"""Authentication hardening (issue 11, items 4, 6, 13): no start with a forgeable JWT secret,
sockets that end with their token or their account, admin disable / enable / revoke, and an
access log without tokens. One server for the module, its access log on."""

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from bson import ObjectId

from halochat.auth import issue_token
from halochat.cli import seed
from halochat.config import DEV_JWT_SECRET, MIN_JWT_SECRET_BYTES, Settings
from halochat.launch import SERVE_COMMAND, child_env, free_port
from halochat.settings_check import UnsafeSettings, check_settings
from tests.conftest import ServerFactory
from tests.support.clients import Actor, WsClient, api
from tests.support.flows import make_pair, open_active_session
from tests.support.server import JWT_SECRET, REPO_ROOT, ServerProcess

TOKEN_TTL_SECONDS = 3  # the short-lived tokens of the expiry tests


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory({"HALOCHAT_ACCESS_LOG": "true"})


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code, resp.text


def short_token(user: Actor) -> str:
    return issue_token(Settings(jwt_secret=JWT_SECRET, jwt_ttl_seconds=TOKEN_TTL_SECONDS), user.id)


async def closed_with(client: WsClient, code: int, error_code: str) -> None:
    """The server sent one error frame with `error_code`, then closed with `code`."""
    error = await client.wait_for("error", timeout=15)
    assert error["error"]["code"] == error_code, error
    await asyncio.wait_for(client.conn.wait_closed(), 15)
    assert client.conn.close_code == code
    assert client.conn.close_reason == error_code


async def refused_socket(server: ServerProcess, token: str, code: int, error_code: str) -> None:
    client = await WsClient.open(server.ws_url, query=f"token={token}")
    try:
        await closed_with(client, code, error_code)
        assert not client.pending("ready")
    finally:
        await client.close()


# --- item 4: the development secret and short secrets -------------------------------------


def test_refuses_to_start_with_the_development_secret(tmp_path: Path) -> None:
    """HALOCHAT_JWT_SECRET unset (the secret in the source): `python -m halochat serve` exits
    2 with a message that says what to set, before any database or port is opened."""
    env = child_env(port=free_port(), db_name="refused", data_dir=tmp_path, jwt_secret="")
    del env["HALOCHAT_JWT_SECRET"]
    out = subprocess.run(
        list(SERVE_COMMAND), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out
    text = out.stdout + out.stderr
    assert "refusing to start" in text and "development secret" in text, text
    assert "HALOCHAT_JWT_SECRET" in text and "HALOCHAT_DEV_MODE" in text, text
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("secret", ["x", "s" * (MIN_JWT_SECRET_BYTES - 1), DEV_JWT_SECRET])
def test_short_or_development_secrets_need_dev_mode(secret: str) -> None:
    with pytest.raises(UnsafeSettings, match="HALOCHAT_JWT_SECRET"):
        check_settings(Settings(jwt_secret=secret))
    # `make run` and `make seed` set HALOCHAT_DEV_MODE: allowed there, with a warning.
    warning = check_settings(Settings(jwt_secret=secret, dev_mode=True))
    assert warning and "accepted because HALOCHAT_DEV_MODE is set" in warning
    assert check_settings(Settings(jwt_secret="s" * MIN_JWT_SECRET_BYTES)) is None  # 32 bytes
    # Firebase mode takes no local tokens, so the JWT secret is not used there.
    firebase = Settings(jwt_secret=secret, auth_mode="firebase", firebase_project_id="p")
    assert check_settings(firebase) is None
    with pytest.raises(UnsafeSettings, match="HALOCHAT_FIREBASE_PROJECT_ID"):
        check_settings(Settings(auth_mode="firebase"))


def test_the_seed_script_prints_no_forgeable_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """It checks the secret as the server does (`make seed` sets HALOCHAT_DEV_MODE)."""
    for name in ("HALOCHAT_JWT_SECRET", "HALOCHAT_DEV_MODE", "HALOCHAT_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exited:
        seed.main([])
    assert "development secret" in str(exited.value.code)


async def test_a_token_signed_with_the_development_secret_is_no_admin(
    server: ServerProcess, admin: Actor
) -> None:
    """The review's attack: a token for a real admin id signed with the secret from the
    source tries to create an admin and to price a tier at 1."""
    forged = issue_token(Settings(jwt_secret=DEV_JWT_SECRET), admin.id)
    headers = {"Authorization": f"Bearer {forged}"}
    admins_before = server.db["users"].count_documents({"role": "admin"})
    config_before = server.db["app_config"].find_one({}, {"_id": 0})
    async with api(server.base_url) as http:
        config = (await http.get("/v1/admin/config/", headers=admin.headers)).json()
        config = {k: v for k, v in config.items() if k not in ("version", "updated_at")}
        config["tiers"][0]["price"] = 1
        assert_error(
            await http.post(
                "/v1/admin/users",
                json={"role": "admin", "display_name": "Mallory"},
                headers=headers,
            ),
            401,
            "invalid_token",
        )
        assert_error(
            await http.put("/v1/admin/config/", json=config, headers=headers),
            401,
            "invalid_token",
        )
    assert server.db["users"].count_documents({"role": "admin"}) == admins_before
    assert server.db["app_config"].find_one({}, {"_id": 0}) == config_before


# --- item 6: sockets end with their token or their account --------------------------------


async def test_a_socket_closes_when_its_token_expires(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, "Expiry")
    session = await open_active_session(server, customer, mitra)
    token = short_token(customer)
    client = await WsClient.open(server.ws_url, query=f"token={token}")
    try:
        await client.wait_for("ready")
        sent = await client.request(
            "message.send", {"session_id": session["id"], "client_msg_id": "e1", "body": "hi"}
        )
        assert sent["type"] == "ack", sent
        # The client sends nothing more: the server closes at expiry on its own.
        await closed_with(client, 4401, "token_expired")
    finally:
        await client.close()
    async with api(server.base_url) as http:
        me = await http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert_error(me, 401, "token_expired")
    await refused_socket(server, token, 4401, "token_expired")


async def test_disabling_a_user_closes_their_sockets_and_refuses_their_tokens(
    server: ServerProcess, admin: Actor
) -> None:
    customer, mitra = make_pair(server, "Disable")
    session = await open_active_session(server, customer, mitra)
    by_header = await WsClient.open(server.ws_url, mitra)
    by_frame = await WsClient.open(server.ws_url, mitra, auth_frame=True)
    try:
        for client in (by_header, by_frame):
            await client.wait_for("ready")
        sent = await by_header.request(
            "message.send", {"session_id": session["id"], "client_msg_id": "d1", "body": "hi"}
        )
        assert sent["type"] == "ack", sent
        async with api(server.base_url, admin) as http:
            r = await http.post(f"/v1/admin/users/{mitra.id}/disable")
            assert r.status_code == 200, r.text
            assert r.json()["disabled"] is True
        for client in (by_header, by_frame):
            await closed_with(client, 4403, "user_disabled")
    finally:
        await by_header.close()
        await by_frame.close()
    async with api(server.base_url, mitra) as http:
        assert_error(await http.get("/v1/me"), 403, "user_disabled")
        assert_error(await http.get(f"/v1/sessions/{session['id']}/messages"), 403, "user_disabled")
    await refused_socket(server, mitra.token, 4403, "user_disabled")
    # Disabling twice is harmless; re-enabling lets the same token in again.
    async with api(server.base_url, admin) as http:
        assert (await http.post(f"/v1/admin/users/{mitra.id}/disable")).status_code == 200
        r = await http.post(f"/v1/admin/users/{mitra.id}/enable")
        assert r.status_code == 200 and r.json()["disabled"] is False, r.text
    await accepted(server, mitra)


async def accepted(server: ServerProcess, actor: Actor) -> None:
    """The actor's token works again, over HTTP and for a new socket."""
    async with api(server.base_url, actor) as http:
        assert (await http.get("/v1/me")).status_code == 200
    client = await WsClient.open(server.ws_url, actor)
    try:
        await client.wait_for("ready")
    finally:
        await client.close()


async def test_revoking_tokens_closes_their_sockets_and_later_tokens_work(
    server: ServerProcess, admin: Actor
) -> None:
    customer = server.create_user("customer", "Revoked")
    client = await WsClient.open(server.ws_url, customer)
    try:
        await client.wait_for("ready")
        async with api(server.base_url, admin) as http:
            r = await http.post(f"/v1/admin/users/{customer.id}/revoke-tokens")
            assert r.status_code == 200, r.text
            assert r.json()["tokens_valid_after"]
        await closed_with(client, 4401, "token_revoked")
    finally:
        await client.close()
    async with api(server.base_url, customer) as http:
        assert_error(await http.get("/v1/me"), 401, "token_revoked")
    await refused_socket(server, customer.token, 4401, "token_revoked")
    # Tokens carry whole seconds: one issued in a later second than the revocation works.
    revoked_at = server.db["users"].find_one({"display_name": "Revoked"})["tokens_valid_after"]
    await asyncio.sleep(max(0.0, int(revoked_at.timestamp()) + 1 - time.time()))
    fresh = Actor(customer.id, "customer", "Revoked", issue_token(server.settings(), customer.id))
    await accepted(server, fresh)


async def test_admin_user_endpoints_refuse_bad_callers_and_ids(
    server: ServerProcess, admin: Actor
) -> None:
    customer = server.create_user("customer", "Bystander")
    before = server.db["users"].find_one({"display_name": "Bystander"})
    async with api(server.base_url, customer) as http:
        for action in ("disable", "enable", "revoke-tokens"):
            assert_error(
                await http.post(f"/v1/admin/users/{customer.id}/{action}"), 403, "wrong_role"
            )
        assert_error(await http.get(f"/v1/admin/users/{customer.id}"), 403, "wrong_role")
    async with api(server.base_url, admin) as http:
        for bad in ("nope", "0" * 24, "6b06aea06daab44acc2ea3f"):
            assert_error(await http.post(f"/v1/admin/users/{bad}/disable"), 404, "not_found")
            assert_error(await http.get(f"/v1/admin/users/{bad}"), 404, "not_found")
        # An admin cannot lock themselves out; another admin could.
        for action in ("disable", "revoke-tokens"):
            assert_error(
                await http.post(f"/v1/admin/users/{admin.id}/{action}"), 409, "self_lockout"
            )
        assert (await http.get("/v1/me")).status_code == 200
        shown = (await http.get(f"/v1/admin/users/{customer.id}")).json()
        assert shown["disabled"] is False and shown["tokens_valid_after"] is None
    assert server.db["users"].find_one({"display_name": "Bystander"}) == before
    me = server.db["users"].find_one({"_id": ObjectId(admin.id)})
    assert me["disabled"] is False and "tokens_valid_after" not in me


# --- item 13: no token in the access log ---------------------------------------------------


async def test_the_access_log_never_shows_a_token(server: ServerProcess) -> None:
    user = server.create_user("customer", "Logged")
    marker = f"m{int(time.time() * 1000)}"
    for query in (
        f"token={user.token}&device_id={marker}",
        f"device_id={marker}&%74oken={user.token}",
    ):
        client = await WsClient.open(server.ws_url, query=query)
        try:
            await client.wait_for("ready")
        finally:
            await client.close()
    async with api(server.base_url) as http:
        await http.get(f"/readyz?token={user.token}&device_id={marker}")

    def logged() -> list[str]:
        """The access lines of these three URLs (the socket's own "connected ... device"
        line names the device id but no URL)."""
        lines = server.log_tail(5000).splitlines()
        return [line for line in lines if f"device_id={marker}" in line]

    deadline = time.monotonic() + 15
    while len(logged()) < 3 and time.monotonic() < deadline:  # noqa: ASYNC110  (a log file)
        await asyncio.sleep(0.1)
    lines = logged()
    assert len(lines) >= 3, server.log_tail()
    assert all("=[redacted]" in line for line in lines), lines
    assert user.token not in server.log_path.read_text(errors="replace")
    # Only the token is hidden: the rest of the URL stays readable.
    assert any(f"device_id={marker}" in line for line in lines)
