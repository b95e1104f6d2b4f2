"""One error shape for every 4xx/5xx: {"error": {"code": ..., "message": ..., "details"?: ...}}."""

import asyncio
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.handlers import ErrorHandler
from sanic.response import HTTPResponse, json

from halochat.constants import ErrorCode

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A domain error with an HTTP status and a machine-readable code.

    Raised by domain functions; HTTP routes and WebSocket handlers both translate it.
    """

    def __init__(
        self, status: int, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class ErrorBody(BaseModel):
    """What went wrong: `code` for programs, `message` for people, `details` when useful."""

    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str
    details: dict[str, Any] = Field(
        default=None,  # type: ignore[assignment]
        description="sent only when there is something to add (fields, state, retry_after, ...)",
        json_schema_extra=lambda schema: schema.pop("default", None),  # absent, never null
    )


class ErrorEnvelope(BaseModel):
    """The body of every 4xx/5xx answer (the OpenAPI documents it with its codes)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorBody


# The HTTP status each code is answered with (4xx and 503 only; the OpenAPI lists them).
ERROR_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.AUTH_REQUIRED: 401,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.USER_NOT_FOUND: 401,
    ErrorCode.TOKEN_REVOKED: 401,
    ErrorCode.USER_DISABLED: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.WRONG_ROLE: 403,
    ErrorCode.NOT_PARTICIPANT: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.TIER_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_STATE: 409,
    ErrorCode.SESSION_ALREADY_OPEN: 409,
    ErrorCode.REQUEST_TAKEN: 409,
    ErrorCode.FREE_TRIAL_UNAVAILABLE: 409,
    ErrorCode.ALREADY_RESOLVED: 409,
    ErrorCode.ALREADY_SUBMITTED: 409,
    ErrorCode.DUPLICATE: 409,
    ErrorCode.SELF_LOCKOUT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.OVERLOADED: 503,
}


def not_found(message: str, code: ErrorCode = ErrorCode.NOT_FOUND) -> ApiError:
    return ApiError(404, code, message)


def conflict(
    message: str, code: ErrorCode = ErrorCode.CONFLICT, details: dict[str, Any] | None = None
) -> ApiError:
    return ApiError(409, code, message, details)


# An error answer stays small whatever the input: at most this many problems are listed,
# each text cut to this many characters (a frame full of unknown keys is one short answer).
MAX_ERROR_ITEMS = 10
MAX_ERROR_TEXT = 200


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def validation_error(exc: ValidationError) -> ApiError:
    """422 naming the offending fields (the first MAX_ERROR_ITEMS; `more` counts the rest),
    without echoing the (possibly huge) input."""
    problems = exc.errors(include_url=False, include_input=False, include_context=False)
    fields = [
        {
            "field": _cut(".".join(str(p) for p in err["loc"]) or "(body)"),
            "message": _cut(err["msg"]),
            "type": err["type"],
        }
        for err in problems[:MAX_ERROR_ITEMS]
    ]
    names = ", ".join(f["field"] for f in fields)
    details: dict[str, Any] = {"fields": fields}
    if len(problems) > MAX_ERROR_ITEMS:
        details["more"] = len(problems) - MAX_ERROR_ITEMS
        names += f" and {details['more']} more"
    return ApiError(422, ErrorCode.VALIDATION_ERROR, f"invalid field(s): {names}", details)


def duplicate_key(exc: DuplicateKeyError) -> ApiError:
    """A unique index refused a write that domain code did not expect to collide: the
    request conflicts with stored data (409); the refused write stored nothing."""
    fields = sorted((exc.details or {}).get("keyPattern") or {})
    return conflict("conflicts with existing data", ErrorCode.DUPLICATE, {"fields": fields})


def database_unavailable(exc: BaseException) -> ApiError | None:
    """503 service_unavailable when `exc` says the database could not be reached in time
    (pymongo's ConnectionFailure family: ServerSelectionTimeoutError, AutoReconnect,
    NetworkTimeout, ...; or any operation that ran out of its time limit); else None.
    Nothing was acknowledged, so the client may retry the same request."""
    if isinstance(exc, ConnectionFailure) or (isinstance(exc, PyMongoError) and exc.timeout):
        return ApiError(503, ErrorCode.UNAVAILABLE, "the database is unavailable; retry shortly")
    return None


_SANIC_STATUS_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.AUTH_REQUIRED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}


def retry_after(err: ApiError) -> int | None:
    """Seconds a client should wait before retrying (429 / 503 answers carry it)."""
    value = (err.details or {}).get("retry_after")
    return value if isinstance(value, int) else None


def error_response(err: ApiError) -> HTTPResponse:
    seconds = retry_after(err)
    headers = {"Retry-After": str(seconds)} if seconds is not None else None
    return json({"error": err.to_dict()}, status=err.status, headers=headers)


class JsonErrorHandler(ErrorHandler):
    """Renders every exception Sanic sees in the one error shape."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        if isinstance(exception, ApiError):
            return error_response(exception)
        if isinstance(exception, ValidationError):
            return error_response(validation_error(exception))
        if isinstance(exception, DuplicateKeyError):
            return error_response(duplicate_key(exception))
        if (unavailable := database_unavailable(exception)) is not None:
            log.warning(
                "database unavailable on %s %s: %s",
                request.method,
                request.path,
                type(exception).__name__,
            )
            return error_response(unavailable)
        if isinstance(exception, SanicException) and exception.status_code < 500:
            status = exception.status_code
            code = _SANIC_STATUS_CODES.get(status, ErrorCode.BAD_REQUEST)
            return error_response(ApiError(status, code, str(exception) or code.value))
        if isinstance(exception, asyncio.CancelledError):
            # The client went away mid-request (Sanic cancels the handler): nobody to answer.
            log.debug("request cancelled: %s %s", request.method, request.path)
        else:
            log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, ErrorCode.INTERNAL, "internal server error"))


def install_error_handler(app: Sanic) -> None:
    app.error_handler = JsonErrorHandler()
