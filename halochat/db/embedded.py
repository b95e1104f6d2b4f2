"""The embedded default database: a MongoDB-wire server (mongoeco on SQLite) on loopback.

See docs/embedded-db.md; the storage engine is halochat.db.mongoeco_flat's flat-cost variant.

Used when MONGODB_URI is unset. It runs in a child process so the app talks to it exactly as
to a real MongoDB (same pymongo.AsyncMongoClient, same URI form), and so its CPU work never
blocks the app's event loop. The child exits when its parent dies (it watches its stdin).

A second user of the same data directory (the seed or export script while `make run` serves)
reuses the live server recorded in `<data_dir>/server.json` instead of opening the SQLite file
twice.

    python -m halochat.db.embedded --data-dir var/db [--port 27999]
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pymongo import MongoClient

STATE_FILE = "server.json"
DB_FILE = "halochat.sqlite3"
READY_PREFIX = "READY "
START_TIMEOUT = 60.0
log = logging.getLogger(__name__)


def _uri(host: str, port: int) -> str:
    return f"mongodb://{host}:{port}/?directConnection=true"


def _ping(uri: str, timeout_ms: int = 1000) -> bool:
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except Exception:
        return False
    finally:
        client.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedMongo:
    """Starts (or reuses) the embedded server for `data_dir`; `start()` returns its URI."""

    def __init__(self, data_dir: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.uri: str | None = None
        self._proc: subprocess.Popen[str] | None = None

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    def _live_server(self) -> str | None:
        """The URI of a server another process already runs on this data dir, if any."""
        try:
            state = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        uri = state.get("uri")
        if not uri or not _pid_alive(int(state.get("pid", 0))):
            return None
        return uri if _ping(uri) else None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if (uri := self._live_server()) is not None:
            self.uri = uri
            return uri
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "halochat.db.embedded",
                "--data-dir",
                str(self.data_dir),
                "--host",
                self.host,
                "--port",
                str(self.port),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"embedded database exited ({self._proc.wait()})")
            if line.startswith(READY_PREFIX):
                self.uri = line[len(READY_PREFIX) :].strip()
                return self.uri
        self.stop()
        raise RuntimeError("embedded database did not start in time")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_engine(path: Path, *, inline: bool = False) -> object:
    """The storage engine behind the wire server: mongoeco's SQLiteEngine, with the
    flat-cost fixes of halochat.db.mongoeco_flat when the installed mongoeco is the version
    they were written for (see docs/embedded-db.md)."""
    from mongoeco import __version__ as installed
    from mongoeco.engines.sqlite import SQLiteEngine

    try:
        from halochat.db import mongoeco_flat
    except ImportError:  # mongoeco internals moved: another version
        mongoeco_flat = None
    if mongoeco_flat is not None and mongoeco_flat.patch_applies():
        if inline:  # the embedded child: a process of its own, so patching mongoeco is safe
            mongoeco_flat.install_batch_insert_command()
            mongoeco_flat.disable_change_publication()
            mongoeco_flat.share_immutable_values()
        return mongoeco_flat.FlatCostSQLiteEngine(str(path), inline=inline)
    log.warning(
        "mongoeco %s is not the version halochat.db.mongoeco_flat was written for: "
        "the embedded database will slow down as data grows",
        installed,
    )
    return SQLiteEngine(str(path))


async def _serve(data_dir: Path, host: str, port: int) -> None:
    from mongoeco.wire import AsyncMongoEcoProxyServer

    # inline: this process serves nothing else, so the engine runs its SQLite work on the loop.
    engine = make_engine(data_dir / DB_FILE, inline=True)
    server = AsyncMongoEcoProxyServer(engine=engine, host=host, port=port)
    address = await server.start()
    uri = _uri(address.host, address.port)
    state_path = data_dir / STATE_FILE
    state_path.write_text(json.dumps({"pid": os.getpid(), "uri": uri}))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_parent() -> None:
        # stdin reaches EOF when the parent exits, however it died.
        with contextlib.suppress(Exception):
            while sys.stdin.read(1024):
                pass
        loop.call_soon_threadsafe(stop.set)

    if not sys.stdin.isatty():
        threading.Thread(target=watch_parent, daemon=True).start()
    print(READY_PREFIX + uri, flush=True)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            if json.loads(state_path.read_text()).get("pid") == os.getpid():
                state_path.unlink()
        await server.close()


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description="halochat's embedded MongoDB-wire database"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("var/db"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(args.data_dir, args.host, args.port))


if __name__ == "__main__":
    main()
