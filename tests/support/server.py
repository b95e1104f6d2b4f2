"""Runs the real halochat server (`python -m halochat serve`) as a child process on a
loopback port, so tests exercise exactly what production runs, restarts and kills included."""

import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from bson import ObjectId
from pymongo import MongoClient

from halochat.auth import issue_token
from halochat.config import Settings
from halochat.documents.app_config import CONFIG_KEY
from halochat.domain.app_config import TEST_TIERS
from halochat.launch import SERVE_COMMAND, child_env, free_port
from tests.support.clients import Actor

JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """One halochat server. `env` overrides HALOCHAT_* settings (timings, limits, ...).

    With `mongodb_uri` it uses that database (shared by the test session); without it, the
    server starts its own embedded database under `data_dir`, as `make run` does. `db_uri`:
    the tests' own direct access goes there instead (the server's may pass a cuttable proxy).

    `test_tiers`: once started on a shared database, the developer test tiers (`test-1m`) are
    added to its configuration, as `halochat seed` does for a developer; the server's own
    default configuration has none.

    `clock`: the server runs on the test clock (docs/testing.md "The test clock"): `advance()`
    moves it forward and returns once the timers that fell due have run; `now()` is the
    server's time. A restart keeps the clock where it was.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        mongodb_uri: str | None,
        env: dict[str, str] | None = None,
        db_name: str | None = None,
        test_tiers: bool = True,
        db_uri: str | None = None,
        clock: bool = False,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mongodb_uri = mongodb_uri
        self.db_uri = db_uri or mongodb_uri
        self.db_name = db_name or f"t_{uuid.uuid4().hex[:12]}"
        self.port = free_port()
        self.extra_env = env or {}
        self.test_tiers = test_tiers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"
        self._db_client: MongoClient[dict[str, Any]] | None = None
        self.clock_offset: float | None = 0.0 if clock else None
        self._clock_admin: Actor | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def env(self) -> dict[str, str]:
        extra = dict(self.extra_env)
        if self.clock_offset is not None:
            extra["HALOCHAT_TEST_CLOCK_OFFSET_SECONDS"] = repr(self.clock_offset)
            extra["HALOCHAT_DEV_MODE"] = "1"  # the settings check refuses a test clock without
        return child_env(
            port=self.port,
            db_name=self.db_name,
            data_dir=self.workdir / "var",
            jwt_secret=JWT_SECRET,
            mongodb_uri=self.mongodb_uri,
            extra=extra,
        )

    # The test clock.
    def now(self) -> datetime:
        """The server's time (its test clock's, when it runs on one)."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset or 0.0)

    async def advance(self, seconds: float) -> datetime:
        """Moves the server's test clock forward; returns (the server's new time) once the
        timers that fell due have run."""
        if self.clock_offset is None:
            raise RuntimeError("this server does not run on the test clock (clock=True)")
        if self._clock_admin is None:
            self._clock_admin = self.create_user("admin", "Clock")
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self._clock_admin.headers, timeout=60.0
        ) as http:
            resp = await http.post("/v1/test/clock", json={"advance_seconds": seconds})
        assert resp.status_code == 200, resp.text
        self.clock_offset = resp.json()["offset_seconds"]
        return datetime.fromisoformat(resp.json()["now"])

    async def advance_past(self, when: datetime | str, margin: float = 1.0) -> datetime:
        """Advances the test clock to `margin` seconds after `when` (an API time or a stored
        one); returns once what fell due by then has run."""
        if isinstance(when, str):
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        if when.tzinfo is None:  # stored times come back naive from some clients
            when = when.replace(tzinfo=UTC)
        return await self.advance(max(0.0, (when - self.now()).total_seconds()) + margin)

    def time_passes_while_down(self, seconds: float) -> None:
        """A stopped or killed server on the test clock starts again `seconds` later."""
        assert self.clock_offset is not None and (self.proc is None or self.proc.poll() is not None)
        self.clock_offset += seconds

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(SERVE_COMMAND),
            cwd=REPO_ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=5.0).status_code == 200:
                    if self.test_tiers and self.mongodb_uri:
                        self.add_test_tiers()
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> "ServerProcess":
        self.stop()
        return self.start()

    # Direct database access for fixtures and for checking "nothing stored changed".
    @property
    def db(self) -> Any:
        if self._db_client is None:
            if not self.db_uri:
                raise RuntimeError("direct DB access needs a shared mongodb_uri")
            self._db_client = MongoClient(self.db_uri, tz_aware=True)
        return self._db_client[self.db_name]

    def settings(self) -> Settings:
        return Settings(jwt_secret=JWT_SECRET)

    def add_test_tiers(self) -> None:
        """The server made its default configuration before it was ready; requests read the
        configuration fresh, so the tiers apply at once."""
        ids = [t.id for t in TEST_TIERS]
        self.db["app_config"].update_one(
            {"key": CONFIG_KEY, "tiers.id": {"$nin": ids}},
            {"$push": {"tiers": {"$each": [t.model_dump(mode="json") for t in TEST_TIERS]}}},
        )

    def create_user(self, role: str, name: str, *, available: bool = False) -> Actor:
        doc = {
            "_id": ObjectId(),
            "role": role,
            "display_name": name,
            "available": available,
            "disabled": False,
        }
        self.db["users"].insert_one(doc)
        token = issue_token(self.settings(), doc["_id"])
        return Actor(id=str(doc["_id"]), role=role, name=name, token=token)

    def close(self) -> None:
        self.stop()
        if self._db_client is not None:
            self._db_client.close()
