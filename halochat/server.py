"""Runs halochat: the embedded database when MONGODB_URI is unset, then the Sanic server."""

import contextlib
import logging
import sys
from collections.abc import Iterator

from halochat.app import create_app
from halochat.cluster.membership import ExitCode, StartRefused
from halochat.config import Settings

log = logging.getLogger("halochat")


@contextlib.contextmanager
def database_uri(settings: Settings) -> Iterator[Settings]:
    """Yields settings with a MongoDB URI: the configured one, or an embedded server's."""
    if settings.mongodb_uri:
        yield settings
        return
    from halochat.db.embedded import EmbeddedMongo

    db = EmbeddedMongo(settings.data_dir / "db")
    uri = db.start()
    log.info("embedded MongoDB-wire database at %s (data in %s)", uri, settings.data_dir / "db")
    try:
        yield settings.model_copy(update={"mongodb_uri": uri})
    finally:
        db.stop()


def _configure_logging() -> None:
    """Our loggers and the scheduler's; Sanic configures its own (no duplicate lines)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("halochat", "apscheduler"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
    # A refusal to start is explained by one log line, not by Sanic's traceback of it.
    logging.getLogger("sanic.error").addFilter(_not_a_refusal)


def _not_a_refusal(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], StartRefused))


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    _configure_logging()
    with database_uri(settings) as resolved:
        app = create_app(resolved)
        log.info("serving on http://%s:%s (OpenAPI at /docs)", resolved.host, resolved.port)
        # One process: the WebSocket hub and timers are in-process state, and a lease in the
        # database keeps any other process off it (docs/scaling.md).
        try:
            app.run(
                host=resolved.host,
                port=resolved.port,
                single_process=True,
                access_log=resolved.access_log,
                motd=False,
            )
        except StartRefused as refused:
            log.critical("%s", refused)
            sys.exit(refused.exit_code)
        if app.ctx.membership.lost:
            sys.exit(ExitCode.LEASE_LOST)
