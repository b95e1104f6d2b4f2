"""How tests and benchmarks start a server as a child process (`python -m halochat serve`)."""

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

SERVE_COMMAND = (sys.executable, "-m", "halochat", "serve")


def child_env(
    *,
    port: int,
    db_name: str,
    data_dir: Path,
    jwt_secret: str,
    mongodb_uri: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a `SERVE_COMMAND` child (tests, benchmarks): this process's
    environment without its HALOCHAT_* settings and MONGODB_URI, then exactly these
    (`extra` last: HALOCHAT_* timings and limits)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALOCHAT_")}
    env.pop("MONGODB_URI", None)
    env.update(
        {
            "HALOCHAT_PORT": str(port),
            "HALOCHAT_DB_NAME": db_name,
            "HALOCHAT_DATA_DIR": str(data_dir),
            "HALOCHAT_JWT_SECRET": jwt_secret,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if mongodb_uri:
        env["MONGODB_URI"] = mongodb_uri
    env.update(extra or {})
    return env


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
