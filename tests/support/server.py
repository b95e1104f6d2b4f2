"""Runs the real halochat server (`python -m halochat serve`) as a child process on a
loopback port, so tests exercise exactly what production runs, restarts and kills included."""

import signal
import subprocess
import time
import uuid
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

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def env(self) -> dict[str, str]:
        return child_env(
            port=self.port,
            db_name=self.db_name,
            data_dir=self.workdir / "var",
            jwt_secret=JWT_SECRET,
            mongodb_uri=self.mongodb_uri,
            extra=self.extra_env,
        )

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
