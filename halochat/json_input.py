"""Decoding untrusted JSON (HTTP bodies, WebSocket frames) into an object, or a 400."""

from typing import Any

import orjson

from halochat.constants import ErrorCode
from halochat.errors import ApiError


def load_object(data: str | bytes, what: str) -> dict[str, Any]:
    """`what` names the input in the error ("body", "frame")."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, ErrorCode.INVALID_JSON, f"{what} is not valid JSON") from exc
    if not isinstance(raw, dict):
        raise ApiError(400, ErrorCode.INVALID_JSON, f"{what} must be a JSON object")
    return raw
