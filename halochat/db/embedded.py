"""The embedded default database: a MongoDB-wire server (mongoeco on SQLite) on loopback.

See docs/embedded-db.md; the storage engine is halochat.db.mongoeco_flat's flat-cost variant.

Used when MONGODB_URI is unset. It runs in a child process so the app talks to it exactly as
to a real MongoDB (same pymongo.AsyncMongoClient, same URI form), and so its CPU work never
blocks the app's event loop. The child exits when its parent dies (it watches its stdin).

Ownership: one process owns a data directory's database, the one holding the exclusive lock
on `<data_dir>/owner.lock` (flock: released by the kernel however the owner dies). Only the
owner starts (and supervises, restarting it on the same data and port) the child. Another
user of the same data directory (the seed or export script while `make run` serves) is a
client of the owner's live server, recorded in `<data_dir>/server.json`, and never opens the
SQLite file twice; a second *server* (`exclusive=True`) refuses to start (DataDirInUse).

    python -m halochat.db.embedded --data-dir var/db [--port 27999]
"""

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from pymongo import MongoClient

from halochat.processes import pid_alive

STATE_FILE = "server.json"
LOCK_FILE = "owner.lock"
DB_FILE = "halochat.sqlite3"
READY_PREFIX = "READY "
START_TIMEOUT = 60.0
ORPHAN_EXIT_TIMEOUT = 10.0  # a dead owner's child exits at once (stdin EOF); wait this long
# The supervisor gives up (and the server exits for its own supervisor) when the child died
# more than MAX_RESTARTS times within RESTART_WINDOW seconds.
MAX_RESTARTS = 5
RESTART_WINDOW = 300.0
log = logging.getLogger(__name__)


class DataDirInUse(RuntimeError):
    """Another process owns this data directory's embedded database."""


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


class EmbeddedMongo:
    """Starts (as owner) or joins (as a client of the owner) the embedded server for
    `data_dir`; `start()` returns its URI.

    `exclusive=True` (the server): owning the data directory is required, DataDirInUse
    otherwise. Without it (the scripts): a live owner's server is used, else this process
    becomes the owner for as long as it runs."""

    def __init__(
        self,
        data_dir: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        exclusive: bool = False,
        restart_delay: float = 0.5,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.exclusive = exclusive
        self.restart_delay = restart_delay
        self.uri: str | None = None
        self.restarts = 0  # children started again after dying
        self._proc: subprocess.Popen[str] | None = None
        self._ready: subprocess.Popen[str] | None = None  # the child that said READY
        self._lock_fd: int | None = None
        self._stopping = threading.Event()
        self._guard = threading.Lock()  # spawn vs stop, across the supervisor thread

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def lock_path(self) -> Path:
        return self.data_dir / LOCK_FILE

    @property
    def owner(self) -> bool:
        return self._lock_fd is not None

    @property
    def alive(self) -> bool:
        """This process's child serves (False while it is dead or being restarted)."""
        proc = self._proc
        return proc is not None and proc is self._ready and proc.poll() is None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None else proc.pid

    def _live_server(self) -> tuple[str, int] | None:
        """URI and pid of the server recorded in server.json, if it is alive and answers."""
        try:
            state = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        uri, pid = state.get("uri"), int(state.get("pid", 0))
        if not uri or not pid_alive(pid):
            return None
        return (uri, pid) if _ping(uri) else None

    def _take_ownership(self) -> bool:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        return True

    def _release_ownership(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def owner_pid(self) -> int | None:
        try:
            return int(self.lock_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _in_use(self) -> DataDirInUse:
        return DataDirInUse(
            f"the embedded database in {self.data_dir} is owned by another halochat process "
            f"(pid {self.owner_pid() or 'unknown'}); stop it, or give this server another "
            "HALOCHAT_DATA_DIR (or a MONGODB_URI)"
        )

    def _orphan_pid(self) -> int | None:
        """The pid of a child left by a previous owner that is still running, if any:
        recorded in server.json and, where /proc tells, running this module (a pid reused by
        something else does not count); elsewhere, one that answers a ping."""
        try:
            pid = int(json.loads(self.state_path.read_text()).get("pid", 0))
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        if pid <= 0 or not pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None if (live := self._live_server()) is None else live[1]
        except OSError:
            return None
        return pid if b"halochat.db.embedded" in cmdline else None

    def _wait_orphan_gone(self) -> None:
        """A child whose owner just died exits at stdin EOF (once its current operation is
        done); wait for it, so that two servers never open the SQLite file at once."""
        if (pid := self._orphan_pid()) is None:
            return
        deadline = time.monotonic() + ORPHAN_EXIT_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            log.warning("embedded database pid %s outlived its owner; stopping it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + ORPHAN_EXIT_TIMEOUT
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._take_ownership():
            if self.exclusive:
                raise self._in_use()
            if (live := self._live_server()) is not None:  # a client of the owner
                self.uri = live[0]
                return self.uri
            if time.monotonic() > deadline:  # the owner is up but does not serve
                raise self._in_use()
            time.sleep(0.1)  # the owner is starting its child
        try:
            self._wait_orphan_gone()
            return self._spawn()
        except BaseException:
            self._release_ownership()
            raise

    def _spawn(self) -> str:
        """Starts the child (on self.port, the first one's port on restarts)."""
        with self._guard:
            if self._stopping.is_set():
                raise RuntimeError("embedded database is stopping")
            self._proc = proc = subprocess.Popen(
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
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"embedded database exited ({proc.wait()})")
            if line.startswith(READY_PREFIX):
                self.uri = line[len(READY_PREFIX) :].strip()
                self.port = urlsplit(self.uri).port or self.port
                self._ready = proc
                return self.uri
        self._terminate(proc)
        raise RuntimeError("embedded database did not start in time")

    def supervise(self, on_give_up: Callable[[], None]) -> None:
        """Watches the owned child from a thread: one that dies is started again on the
        same data and port (clients reconnect by themselves), after restart_delay, doubling
        with each death; past MAX_RESTARTS deaths in RESTART_WINDOW it calls `on_give_up`
        (the server then exits non-zero for its own supervisor)."""
        if not self.owner:
            return
        threading.Thread(
            target=self._watch, args=(on_give_up,), name="embedded-db-supervisor", daemon=True
        ).start()

    def _watch(self, on_give_up: Callable[[], None]) -> None:
        deaths: list[float] = []
        while (proc := self._proc) is not None:
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("embedded database (pid %s) died (exit %s)", proc.pid, code)
            while True:
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < RESTART_WINDOW] + [now]
                if len(deaths) > MAX_RESTARTS:
                    log.critical(
                        "embedded database died %d times in %.0f s; giving up",
                        len(deaths),
                        RESTART_WINDOW,
                    )
                    on_give_up()
                    return
                if self._stopping.wait(self.restart_delay * 2 ** (len(deaths) - 1)):
                    return
                try:
                    self._spawn()
                except Exception as exc:
                    log.error("restarting the embedded database failed: %s", exc)
                    continue
                self.restarts += 1
                log.warning("embedded database restarted (pid %s) at %s", self.pid, self.uri)
                break

    @staticmethod
    def _terminate(proc: subprocess.Popen[str]) -> None:
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        self._stopping.set()
        with self._guard:
            proc, self._proc = self._proc, None
        if proc is not None:
            self._terminate(proc)
        self._release_ownership()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_engine(path: Path, *, plain: bool = False) -> object:
    """The storage engine behind the wire server: mongoeco's SQLiteEngine as adapted by
    halochat.db.mongoeco_flat (docs/embedded-db.md), or as shipped with `plain`. Exits
    with the reason (the child stops, halochat does not start) when the installed mongoeco
    is not the one the adaptation was checked against."""
    from mongoeco.engines.sqlite import SQLiteEngine

    if plain:
        return SQLiteEngine(str(path))
    try:
        from halochat.db import mongoeco_flat
    except ImportError as exc:  # an internal module moved: another mongoeco
        raise SystemExit(
            f"halochat embedded database: cannot import mongoeco's internals ({exc}); install "
            "the mongoeco version pyproject.toml pins, or set MONGODB_URI"
        ) from exc
    try:
        return mongoeco_flat.adapted_engine(str(path))
    except mongoeco_flat.MongoecoInternalsChanged as exc:
        raise SystemExit(f"halochat embedded database: {exc}") from exc


async def _serve(data_dir: Path, host: str, port: int, *, plain: bool = False) -> None:
    from mongoeco.wire import AsyncMongoEcoProxyServer

    # This process serves nothing else: the adapted engine runs its SQLite work on the loop.
    engine = make_engine(data_dir / DB_FILE, plain=plain)
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
    parser.add_argument(
        "--plain", action="store_true", help="mongoeco's engine as shipped (for comparisons)"
    )
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(args.data_dir, args.host, args.port, plain=args.plain))


if __name__ == "__main__":
    main()
