"""Shared fixtures: one embedded database per test session (or TEST_MONGODB_URI), a fake
FCM endpoint, and real halochat servers on loopback ports."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.clients import Actor
from tests.support.fake_fcm import PROJECT_ID, FakeFcm
from tests.support.server import ServerProcess

# Short product timings for tests; individual modules override what they exercise.
FAST_ENV: dict[str, str] = {
    "HALOCHAT_MINUTE_SECONDS": "60",
    "HALOCHAT_PAIRING_TIMEOUT_SECONDS": "30",
    "HALOCHAT_TYPING_MIN_INTERVAL_SECONDS": "1",
    # Rate limits out of the way of tests that reuse one user; tests/test_limits.py sets them.
    "HALOCHAT_CHAT_REQUEST_RATE": "10000/minute",
    "HALOCHAT_CHAT_CANCEL_RATE": "10000/minute",
    "HALOCHAT_HTTP_WRITE_RATE": "100000/minute",
    "HALOCHAT_FREE_TRIAL_COOLDOWN_SECONDS": "0",
    # The shared test machine stalls for seconds: shedding only where a test asks for it.
    "HALOCHAT_STORE_WAIT_SECONDS": "60",
    "HALOCHAT_SEND_ADMIT_SECONDS": "60",  # (admission at read time: ws/admission.py)
}


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """TEST_MONGODB_URI runs the suite against a real MongoDB; else the embedded server."""
    if uri := os.environ.get("TEST_MONGODB_URI"):
        yield uri
        return
    from halochat.db.embedded import EmbeddedMongo

    db = EmbeddedMongo(tmp_path_factory.mktemp("embedded-db"))
    try:
        yield db.start()
    finally:
        db.stop()


@pytest.fixture(scope="session")
def fake_fcm() -> Iterator[FakeFcm]:
    fcm = FakeFcm().start()
    yield fcm
    fcm.stop()


@pytest.fixture(scope="session")
def fcm_env(fake_fcm: FakeFcm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    creds = fake_fcm.write_credentials(tmp_path_factory.mktemp("fcm") / "service-account.json")
    return {
        "HALOCHAT_FCM_CREDENTIALS_FILE": str(creds),
        "HALOCHAT_FCM_PROJECT_ID": PROJECT_ID,
        "HALOCHAT_FCM_ENDPOINT": fake_fcm.url,
    }


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def server_factory(
    mongodb_uri: str, fcm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Starts servers with FAST_ENV + FCM + overrides; all are stopped after the module."""
    started: list[ServerProcess] = []

    def make(
        env: dict[str, str] | None = None,
        *,
        own_db: bool = False,
        start: bool = True,
        test_tiers: bool = True,
        clock: bool = False,
    ) -> ServerProcess:
        workdir: Path = tmp_path_factory.mktemp("server")
        proc = ServerProcess(
            workdir,
            mongodb_uri=None if own_db else mongodb_uri,
            env={**FAST_ENV, **fcm_env, **(env or {})},
            test_tiers=test_tiers,
            clock=clock,
        )
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.close()


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with the default test settings, shared by a test module."""
    return server_factory()


@pytest.fixture
def admin(server: ServerProcess) -> Actor:
    return server.create_user("admin", "Admin")
