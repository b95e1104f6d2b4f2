"""The browser playground (/playground, docs/playground.md) driven in headless Chromium.

Debian's `chromium` through Playwright's Python package (never `playwright install`: the
browser comes from apt-get, see .ci/run). One server for the module, with tier minutes shrunk
so the 1-minute test tier lasts a few seconds; demo users from the seed script, whose admin
token the page is given, as a developer does after `make run`. Screenshots of every step are
saved under var/test-artifacts/playground/. Every test fails if a pane's frame log (or the
admin's request log) shows an error that the test did not expect, or the page throws.
"""

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from tests.conftest import ServerFactory
from tests.support.server import JWT_SECRET, REPO_ROOT, ServerProcess

CHROMIUM = "/usr/bin/chromium"
# The machine's network is closed: without these Chromium keeps trying to reach Google.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HAVE_CHROMIUM = Path(CHROMIUM).exists()
ARTIFACTS = REPO_ROOT / "var" / "test-artifacts" / "playground"
MINUTE_SECONDS = 5  # the 1-minute test tier lasts 5 s
WARNING_LEAD_SECONDS = 2  # "1 minute left" comes 2 s before the end
WAIT_MS = 20_000  # generous: the machine is shared

PLAYGROUND_ENV = {
    "HALOCHAT_PLAYGROUND": "true",
    "HALOCHAT_MINUTE_SECONDS": str(MINUTE_SECONDS),
    "HALOCHAT_WARNING_LEAD_SECONDS": str(WARNING_LEAD_SECONDS),
    "HALOCHAT_GRACE_SECONDS": "60",
}


@pytest.fixture(scope="module")
def started(server_factory: ServerFactory) -> Iterator[tuple[ServerProcess, subprocess.Popen[str]]]:
    """The server, and `halochat seed` creating the demo users beside it (in parallel with
    the server's and the browser's start-up: the seed prints the admin token the page is
    given, as a developer copies it after `make run`)."""
    server = server_factory(PLAYGROUND_ENV, start=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALOCHAT_")}
    env.update(
        {
            "MONGODB_URI": server.mongodb_uri or "",
            "HALOCHAT_DB_NAME": server.db_name,
            "HALOCHAT_JWT_SECRET": JWT_SECRET,
        }
    )
    seed = subprocess.Popen(
        [sys.executable, "-m", "halochat", "seed"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server.start()
        yield server, seed
    finally:
        if seed.poll() is None:
            seed.kill()
        seed.communicate()


@pytest.fixture(scope="module")
def pg_server(started: tuple[ServerProcess, subprocess.Popen[str]]) -> ServerProcess:
    return started[0]


@pytest_asyncio.fixture(scope="module")
async def browser(started: object) -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
def admin_token(started: tuple[ServerProcess, subprocess.Popen[str]], browser: Browser) -> str:
    seed = started[1]
    out, err = seed.communicate(timeout=90)
    assert seed.returncode == 0, err
    found = re.search(r"^admin\s+Admin\s+id=\S+.*\n\s+token: (\S+)", out, re.M)
    assert found, out
    return found.group(1)


class Playground:
    """The page plus what the assertions need: panes, screenshots, the error check."""

    def __init__(self, page: Page, name: str) -> None:
        self.page = page
        self.name = name
        self.shots = 0
        self.page_errors: list[str] = []
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.customer = page.locator("#pane-customer")
        self.mitra = page.locator("#pane-mitra")

    async def shot(self, step: str, *, full_page: bool = False) -> None:
        """The viewport holds both panes and the admin bar; full_page for the timeline."""
        self.shots += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{self.shots:02d}-{step}.png"
        await self.page.screenshot(path=str(path), full_page=full_page)

    async def open(self, base_url: str, admin_token: str) -> None:
        await self.page.goto(f"{base_url}/playground")  # redirects to /playground/
        await self.page.fill("#admin-token", admin_token)
        await self.page.click("#admin-form button[type=submit]")
        await expect(self.page.locator("#admin-status")).to_have_attribute("data-state", "ok")
        await self.online()

    async def online(self) -> None:
        for pane in (self.customer, self.mitra):
            await expect(pane.locator(".conn")).to_have_attribute("data-conn", "open")

    async def choose_users(self, customer: str, mitra: str) -> None:
        for pane, name in ((self.customer, customer), (self.mitra, mitra)):
            await pane.locator(".user-select").select_option(label=name)
        await self.online()
        # The hello/sync round trip is done once the options (customer) and the request
        # list (Mitra) have been read.
        await expect(self.customer.locator(".option").first).to_be_visible()
        await expect(
            self.mitra.locator(".log-entry[data-type='GET /v1/mitra/requests']")
        ).to_have_count(1)

    async def set_free_trial(self, on: bool) -> None:
        toggle = self.page.locator("#free-trial-toggle")
        if await toggle.is_checked() == on:
            return
        await toggle.click()
        await expect(self.page.locator("#admin-status")).to_contain_text(
            "free trial offered" if on else "free trial not offered"
        )

    async def state(self, state: str) -> None:
        for pane in (self.customer, self.mitra):
            await expect(pane).to_have_attribute("data-state", state)

    async def send(self, pane: Locator, text: str) -> None:
        await pane.locator(".composer-input").fill(text)
        await pane.locator(".composer-input").press("Enter")

    async def errors(self) -> list[dict[str, Any]]:
        """Every flagged entry of the frame logs and the admin's request log."""
        return await self.page.eval_on_selector_all(
            ".log-entry[data-error='true']",
            """els => els.map(e => ({log: e.closest('[data-role]')?.dataset.role,
                type: e.dataset.type, code: e.dataset.code,
                text: e.querySelector('.log-json').textContent}))""",
        )

    async def assert_clean(self, expected: list[tuple[str, str]] | None = None) -> None:
        """No error in any log except the (log, code) pairs expected, and no page error."""
        found = await self.errors()
        unexpected = [e for e in found if (e["log"], e["code"]) not in (expected or [])]
        assert not unexpected, f"unexpected errors in the frame logs: {unexpected}"
        assert not self.page_errors, self.page_errors

    async def logged(self, pane: Locator, frame_type: str) -> int:
        return await pane.locator(f".log-entry[data-type='{frame_type}']").count()


@pytest_asyncio.fixture
async def playground(request: pytest.FixtureRequest, browser: Browser) -> AsyncIterator[Playground]:
    context = await browser.new_context(viewport={"width": 1440, "height": 1160})
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    expect.set_options(timeout=WAIT_MS)
    pg = Playground(page, request.node.name.removeprefix("test_"))
    failed_before = request.session.testsfailed
    try:
        yield pg
    finally:
        if request.session.testsfailed > failed_before:  # the call failed: where it stopped
            await pg.shot("failed", full_page=True)
        await context.close()


def test_the_page_is_static_files_outside_the_api(pg_server: ServerProcess) -> None:
    with httpx.Client(base_url=pg_server.base_url) as http:
        moved = http.get("/playground")
        assert moved.status_code == 302 and moved.headers["location"].endswith("/playground/")
        page = http.get("/playground/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "halochat playground" in page.text
        script = http.get("/playground/client.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        for outside in ("/playground/../pyproject.toml", "/playground/%2e%2e/app.py"):
            assert http.get(outside).status_code == 404, outside
        paths = http.get("/docs/openapi.json").json()["paths"]
    assert not [p for p in paths if "playground" in p]


async def test_a_whole_session_from_tier_choice_to_history(
    playground: Playground, pg_server: ServerProcess, admin_token: str
) -> None:
    pg = playground
    customer, mitra = pg.customer, pg.mitra
    await pg.open(pg_server.base_url, admin_token)
    await pg.choose_users("Rina", "Bestie Sari")
    # A new customer is offered the free trial only; with it off, the tiers.
    await pg.set_free_trial(False)
    test_tier = customer.locator(".option.tier[data-tier-id='test-1m']")
    await expect(test_tier).to_be_visible()
    await pg.shot("tiers")

    await test_tier.click()
    accept = mitra.locator(".request .accept")
    await expect(accept).to_be_visible()
    await expect(mitra.locator(".request")).to_contain_text("Rina")
    await pg.shot("offer")
    await accept.click()
    await pg.state("ACTIVE")
    await expect(customer.locator(".partner-name")).to_have_text("Bestie Sari")
    await expect(mitra.locator(".partner-name")).to_have_text("Rina")

    # Ticks: read while the Mitra's app shows the chat, delivered while it is in the
    # background, read again when it comes back.
    await pg.send(customer, "Halo Bestie!")
    await expect(mitra.locator(".msg.theirs", has_text="Halo Bestie!")).to_be_visible()
    await expect(customer.locator(".msg.mine[data-seq='1']")).to_have_attribute(
        "data-status", "read"
    )
    await mitra.locator(".fg-toggle").uncheck()
    await pg.send(customer, "Kamu di sana?")
    second = customer.locator(".msg.mine[data-seq='2']")
    await expect(second).to_have_attribute("data-status", "delivered")
    await mitra.locator(".fg-toggle").check()
    await expect(second).to_have_attribute("data-status", "read")
    # Typing, then the Mitra's reply.
    await mitra.locator(".composer-input").press_sequentially("Hai Rina")
    await expect(customer.locator(".typing")).to_contain_text("Bestie Sari is typing")
    await mitra.locator(".composer-input").press("Enter")
    await expect(customer.locator(".msg.theirs", has_text="Hai Rina")).to_be_visible()
    await expect(customer.locator(".typing")).to_be_hidden()
    await expect(mitra.locator(".msg.mine[data-seq='3']")).to_have_attribute("data-status", "read")
    await pg.shot("chat")

    # The "1 minute left" countdown, then expiry and the extension dialog.
    for pane in (customer, mitra):
        await expect(pane.locator(".banner")).to_contain_text("1 minute left")
    await pg.shot("one-minute-left")
    extend = customer.locator(".extend-tier[data-tier-id='test-1m']")
    await expect(extend).to_be_visible()
    await pg.state("EXPIRED")
    await expect(mitra.locator(".dialog")).to_contain_text("Waiting for Rina")
    await pg.shot("expired")
    await extend.click()
    await expect(customer.locator(".dialog")).to_contain_text("Menunggu konfirmasi Bestie")
    await expect(mitra.locator(".accept-extension")).to_be_visible()
    await pg.shot("extension-requested")
    await mitra.locator(".accept-extension").click()
    await pg.state("ACTIVE")
    await expect(customer.locator(".note", has_text="Extension accepted")).to_be_visible()

    # Second expiry: this time the Mitra rejects, and both write a closing message.
    await expect(extend).to_be_visible()
    await extend.click()
    await mitra.locator(".reject-extension").click()
    await pg.state("CLOSING")
    await customer.locator(".closure-input").fill("Terima kasih, Bestie!")
    await customer.locator(".closure-form button[type=submit]").click()
    await expect(customer.locator(".dialog")).to_contain_text("Waiting for Bestie Sari")
    await expect(mitra.locator(".closure-card[data-role='customer']")).to_contain_text(
        "Terima kasih, Bestie!"
    )
    await pg.shot("closing")
    await mitra.locator(".closure-input").fill("Sama-sama, Rina. Semangat ya!")
    await mitra.locator(".closure-form button[type=submit]").click()
    await pg.state("COMPLETED")
    await expect(customer.locator(".closure-card[data-role='mitra']")).to_contain_text(
        "Sama-sama, Rina"
    )
    await pg.shot("completed")

    # History: partner names and both closing messages, on both sides.
    for pane, partner in ((customer, "Bestie Sari"), (mitra, "Rina")):
        await pane.locator(".tabs button[data-tab='history']").click()
        item = pane.locator(".history-item").first
        await expect(item.locator(".history-partner")).to_have_text(partner)
        await expect(item.locator(".closure[data-role='customer']")).to_contain_text(
            "Terima kasih, Bestie!"
        )
        await expect(item.locator(".closure[data-role='mitra']")).to_contain_text("Sama-sama, Rina")
        await expect(item).to_contain_text("2 min")  # the tier plus the accepted extension
    await pg.shot("history")
    await customer.locator(".history-item").first.click()
    await expect(customer.locator(".transcript .msg")).to_have_count(3)

    # The frame logs show what was exchanged, both ways, and no unexpected error.
    for pane in (customer, mitra):
        for frame in ("auth", "ready", "hello", "sync", "session.one_minute_left"):
            assert await pg.logged(pane, frame) >= 1, frame
        assert await pg.logged(pane, "session.expired") == 2
    assert await pg.logged(mitra, "session.extension_requested") == 2
    await pg.assert_clean()


async def test_admin_timeline_of_a_free_trial_session(
    playground: Playground, pg_server: ServerProcess, admin_token: str
) -> None:
    """Needs GET /v1/admin/sessions/<id>/timeline (issue 14, item 3)."""
    pg = playground
    customer, mitra = pg.customer, pg.mitra
    await pg.open(pg_server.base_url, admin_token)
    await pg.set_free_trial(True)
    await pg.choose_users("Budi", "Bestie Dewi")
    await customer.locator(".option.free-trial").click()
    await mitra.locator(".request .accept").click()
    await pg.state("ACTIVE")
    await pg.send(customer, "Halo, boleh cerita?")
    await expect(customer.locator(".msg.mine[data-seq='1']")).to_have_attribute(
        "data-status", "read"
    )
    # A reload is an app restart: the panes sign in again (token and users kept in the
    # browser), `sync` names the open session, a second `hello` with 0 replays its messages.
    await pg.page.reload()
    await pg.online()
    await pg.state("ACTIVE")
    await expect(customer.locator(".msg.mine[data-seq='1']")).to_have_attribute(
        "data-status", "read"
    )
    await expect(mitra.locator(".msg.theirs[data-seq='1']")).to_have_text(
        re.compile(re.escape("Halo, boleh cerita?"))
    )
    for pane in (customer, mitra):
        await expect(pane.locator(".log-entry[data-type='hello']")).to_have_count(2)
    await customer.locator(".composer .end").click()
    await pg.state("CLOSING")
    await customer.locator(".closure-input").fill("Makasih!")
    await customer.locator(".closure-form button[type=submit]").click()
    await mitra.locator(".closure-input").fill("Sampai jumpa, Budi")
    await mitra.locator(".closure-form button[type=submit]").click()
    await pg.state("COMPLETED")
    session_id = await customer.get_attribute("data-session-id")

    await pg.page.locator("#timeline-session").select_option(value=session_id)
    await pg.page.click("#timeline-load")
    summary = pg.page.locator("#timeline-summary")
    await expect(summary).not_to_have_text("loading…")
    assert await summary.get_attribute("data-error") is None, await summary.text_content()
    await expect(summary).to_contain_text(session_id)
    await pg.shot("timeline", full_page=True)
    events = await pg.page.eval_on_selector_all(
        "#timeline .tl-event",
        """els => els.map(e => ({kind: e.dataset.kind, actor: e.dataset.actor,
            title: e.querySelector('.tl-title').textContent}))""",
    )
    expected = [
        ("state_changed", "mitra", "PAIRING → ACTIVE"),
        ("state_changed", "customer", "ACTIVE → CLOSING"),
        ("closure_submitted", "customer", None),
        ("closure_submitted", "mitra", None),
        ("state_changed", None, "CLOSING → COMPLETED"),
    ]
    at = 0
    for event in events:
        kind, actor, title = expected[at]
        if (
            event["kind"] == kind
            and actor in (None, event["actor"])
            and (title is None or event["title"].startswith(title))
        ):
            at += 1
            if at == len(expected):
                break
    assert at == len(expected), f"missing {expected[at:]} in order, in {events}"
    await pg.assert_clean()
