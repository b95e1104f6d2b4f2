"""Runs halochat: the embedded database when MONGODB_URI is unset, then the Sanic server."""

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

from halochat.config import Settings
from halochat.db.embedded import DataDirInUse, EmbeddedMongo

log = logging.getLogger("halochat")

# Exit statuses of `python -m halochat serve` besides 0 (docs/operations.md).
EXIT_DATA_DIR_IN_USE = 3  # refused to start: another halochat process owns the embedded DB
EXIT_DATABASE_LOST = 5  # the embedded database kept dying: restart the whole server


@contextlib.contextmanager
def resolve_database(
    settings: Settings, *, server: bool = False
) -> Iterator[tuple[Settings, EmbeddedMongo | None]]:
    """Yields settings with a MongoDB URI (the configured one, or an embedded server's) and
    the EmbeddedMongo behind it, if any. `server`: this process must own the data directory
    (DataDirInUse otherwise); else (the scripts) an owner's live server is used."""
    if settings.mongodb_uri:
        yield settings, None
        return
    db = EmbeddedMongo(
        settings.data_dir / "db",
        exclusive=server,
        restart_delay=settings.embedded_restart_delay_seconds,
    )
    uri = db.start()
    log.info("embedded MongoDB-wire database at %s (data in %s)", uri, settings.data_dir / "db")
    try:
        yield settings.model_copy(update={"mongodb_uri": uri}), db
    finally:
        db.stop()


@contextlib.contextmanager
def database_uri(settings: Settings) -> Iterator[Settings]:
    """For the scripts: settings with a MongoDB URI (a running server's embedded database
    is shared, see resolve_database)."""
    with resolve_database(settings) as (resolved, _):
        yield resolved


def _configure_logging() -> None:
    """Our loggers and the scheduler's; Sanic configures its own (no duplicate lines)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("halochat", "apscheduler"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    _configure_logging()
    database_lost = threading.Event()

    def give_up() -> None:  # from the supervisor thread: stop serving, then exit non-zero
        database_lost.set()
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        with resolve_database(settings, server=True) as (resolved, embedded):
            # Imported once the data directory is ours: a refused start is quick.
            from halochat.app import create_app

            app = create_app(resolved)
            app.ctx.embedded_db = embedded  # /healthz reports whether its child runs
            if embedded is not None:
                embedded.supervise(give_up)
            log.info("serving on http://%s:%s (OpenAPI at /docs)", resolved.host, resolved.port)
            # One process: the WebSocket hub and timers are in-process state
            # (docs/operations.md).
            app.run(
                host=resolved.host,
                port=resolved.port,
                single_process=True,
                access_log=resolved.access_log,
                motd=False,
            )
    except DataDirInUse as exc:
        log.error("not starting: %s", exc)
        raise SystemExit(EXIT_DATA_DIR_IN_USE) from None
    if database_lost.is_set():
        log.critical("exiting: the embedded database could not be kept running")
        raise SystemExit(EXIT_DATABASE_LOST)
