"""How tests and benchmarks start a server as a child process (`python -m halochat serve`)."""

import os
import random
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
    """A loopback port nothing listens on right now, outside the kernel's ephemeral range.

    A server keeps its port across a restart in the tests; a port from the ephemeral range
    could meanwhile be handed to an outgoing connection or to the embedded database's
    child (which binds port 0) and the restart would fail with "address already in use"."""
    low, high = _ephemeral_range()
    candidates = [p for p in range(10_000, 65_535) if not low <= p <= high]
    for port in random.sample(candidates, 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port outside the ephemeral range")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default
