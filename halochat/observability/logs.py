"""Logging setup: plain text (default) or one JSON object per line (HALOCHAT_LOG_FORMAT=json),
with the request id / WebSocket connection id of whatever the line is about
(docs/operations.md "Logs").

The ids live in context variables: a Sanic request middleware sets `request_id` (from an
incoming X-Request-ID header or a fresh one, echoed in the response), the WebSocket endpoint
sets `conn_id`; tasks started while handling a request or connection inherit them.
"""

import contextvars
import logging
import re
import uuid
from datetime import UTC, datetime

import orjson

from halochat.constants import LogFormat

REQUEST_ID_HEADER = "X-Request-ID"
_INCOMING_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a caller's id is logged only if tame

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
conn_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("conn_id", default=None)

# Our loggers, the scheduler's and Sanic's: all of them get the configured format.
HALOCHAT_LOGGERS = ("halochat", "apscheduler")
SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.access", "sanic.server", "sanic.websockets")

# Attributes every LogRecord has; anything else was passed as `extra` and is kept.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def accept_request_id(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a fresh id."""
    return incoming if incoming and _INCOMING_ID.match(incoming) else new_id()


class JsonFormatter(logging.Formatter):
    """time (ISO-8601 UTC), level, logger, message, request_id / conn_id when set, the
    record's extra fields, and the traceback as `exc_info`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (rid := request_id.get()) is not None:
            entry["request_id"] = rid
        if (cid := conn_id.get()) is not None:
            entry["conn_id"] = cid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class ContextTextFormatter(logging.Formatter):
    """The plain format, with the ids in brackets when set."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{k}={v}" for k, v in (("req", request_id.get()), ("conn", conn_id.get())) if v]
        return f"{line} [{' '.join(ids)}]" if ids else line


def configure(fmt: LogFormat) -> None:
    """Our loggers and the scheduler's; in JSON mode Sanic's too (in text mode Sanic keeps
    its own format). Call after the Sanic app exists (it installs its handlers then)."""
    handler = logging.StreamHandler()
    if fmt == LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            ContextTextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    names = HALOCHAT_LOGGERS + (SANIC_LOGGERS if fmt == LogFormat.JSON else ())
    for name in names:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        if name in HALOCHAT_LOGGERS:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
