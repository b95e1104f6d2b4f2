"""Runs halochat: the embedded database when MONGODB_URI is unset, then the Sanic server."""

import contextlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from urllib.parse import unquote_plus

from halochat.cluster.membership import ExitCode, StartRefused
from halochat.cluster.workers import local_nats, reuse_port_socket, run_workers
from halochat.config import Settings
from halochat.db.embedded import DataDirInUse, EmbeddedMongo
from halochat.observability import logs
from halochat.settings_check import UnsafeSettings, check_settings

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


# A query parameter in a logged URL: `?name=value` or `&name=value`.
_QUERY_PARAM = re.compile(r"(?P<sep>[?&])(?P<name>[^=&#\s]*)=(?P<value>[^&#\s]*)")
SECRET_QUERY_PARAMS = frozenset({"token"})  # the WebSocket's ?token= (docs/protocol.md)


def redact_url(text: str) -> str:
    """`text` with the values of secret query parameters replaced (names compared decoded, as
    the server reads them, so `%74oken=` is caught too)."""

    def repl(m: re.Match[str]) -> str:
        if unquote_plus(m["name"]).lower() in SECRET_QUERY_PARAMS:
            return f"{m['sep']}{m['name']}=[redacted]"
        return m[0]

    return _QUERY_PARAM.sub(repl, text)


class RedactTokens(logging.Filter):
    """On Sanic's access logger: the request line it logs (`extra["request"]`) carries the
    full URL, ?token= included."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        if isinstance(request, str):
            record.request = redact_url(request)
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = redact_url(record.msg)
        return True


def _configure_logging(settings: Settings) -> None:
    """Handlers and format (halochat.observability.logs; again once the Sanic app exists,
    since it installs its own), and the filters on Sanic's loggers."""
    logs.configure(settings.log_format)
    access = logging.getLogger("sanic.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
    # A refusal to start is explained by one log line, not by Sanic's traceback of it.
    error = logging.getLogger("sanic.error")
    if _not_a_refusal not in error.filters:
        error.addFilter(_not_a_refusal)


def _not_a_refusal(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], StartRefused))


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    _configure_logging(settings)
    try:
        if warning := check_settings(settings):
            log.warning("%s", warning)
    except UnsafeSettings as exc:
        log.critical("refusing to start: %s", exc)
        sys.exit(2)
    database_lost = threading.Event()
    if settings.workers > 1:
        _serve_workers(settings)
        return

    def give_up() -> None:  # from the supervisor thread: stop serving, then exit non-zero
        database_lost.set()
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        with resolve_database(settings, server=True) as (resolved, embedded):
            # Imported once the data directory is ours: a refused start is quick.
            from halochat.app import create_app

            app = create_app(resolved)
            _configure_logging(resolved)  # again: the Sanic app installed its loggers
            app.ctx.embedded_db = embedded  # /healthz reports whether its child runs
            if embedded is not None:
                embedded.supervise(give_up)
            log.info("serving on http://%s:%s (OpenAPI at /docs)", resolved.host, resolved.port)
            if resolved.playground:
                log.info(
                    "playground at http://%s:%s/playground (paste the admin token the seed "
                    "printed)",
                    resolved.host,
                    resolved.port,
                )
            # One process: the WebSocket hub and timers are in-process state, and a lease in
            # the database keeps any other process off it (docs/scaling.md).
            # A worker of HALOCHAT_WORKERS shares its port with the others (SO_REUSEPORT).
            sock = reuse_port_socket(resolved.host, resolved.port) if resolved.reuse_port else None
            app.run(
                host=None if sock else resolved.host,
                port=None if sock else resolved.port,
                sock=sock,
                single_process=True,
                access_log=resolved.access_log,
                motd=False,
            )
    except DataDirInUse as exc:
        log.error("not starting: %s", exc)
        raise SystemExit(EXIT_DATA_DIR_IN_USE) from None
    except StartRefused as refused:
        log.critical("%s", refused)
        raise SystemExit(refused.exit_code) from None
    if database_lost.is_set():
        log.critical("exiting: the embedded database could not be kept running")
        raise SystemExit(EXIT_DATABASE_LOST)
    if app.ctx.membership.lost:
        raise SystemExit(ExitCode.LEASE_LOST)


def _serve_workers(settings: Settings) -> None:
    """HALOCHAT_WORKERS > 1: the shared database and bus, then the workers (cluster mode)."""
    try:
        with (
            resolve_database(settings, server=True) as (resolved, _),
            local_nats(resolved) as nats_url,
        ):
            log.info(
                "serving on http://%s:%s with %d workers (cluster mode, bus %s)",
                resolved.host,
                resolved.port,
                resolved.workers,
                nats_url,
            )
            status = run_workers(resolved, resolved.mongodb_uri or "", nats_url)
    except DataDirInUse as exc:
        log.error("not starting: %s", exc)
        raise SystemExit(EXIT_DATA_DIR_IN_USE) from None
    if status:
        raise SystemExit(status)
