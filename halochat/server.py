"""Runs halochat: the embedded database when MONGODB_URI is unset, then the Sanic server."""

import contextlib
import logging
from collections.abc import Iterator

from halochat.app import create_app
from halochat.config import Settings
from halochat.observability import logs

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


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    logs.configure(settings.log_format)
    with database_uri(settings) as resolved:
        app = create_app(resolved)
        logs.configure(settings.log_format)  # again: the Sanic app installed its loggers
        log.info("serving on http://%s:%s (OpenAPI at /docs)", resolved.host, resolved.port)
        # One process: the WebSocket hub and timers are in-process state (docs/operations.md).
        app.run(
            host=resolved.host,
            port=resolved.port,
            single_process=True,
            access_log=resolved.access_log,
            motd=False,
        )
