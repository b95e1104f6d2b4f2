"""Helpers that keep routes thin: body/query parsing into pydantic models, id parsing."""

from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from sanic import Request
from sanic.response import HTTPResponse, raw

from halochat.constants import ErrorCode
from halochat.errors import ApiError, validation_error
from halochat.inputs import object_id as object_id  # shared with ws/frames
from halochat.json_input import load_object


def parse_body[M: BaseModel](request: Request, model: type[M]) -> M:
    """Malformed JSON -> 400 invalid_json; wrong shape or types -> 422 naming the fields."""
    if not request.body:
        raise ApiError(400, ErrorCode.INVALID_JSON, "a JSON object body is required")
    data = load_object(request.body, "body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def parse_query[M: BaseModel](
    request: Request, model: type[M], context: dict[str, Any] | None = None
) -> M:
    """`context` carries limits from settings to the model's validators."""
    data = {k: v[-1] if isinstance(v, list) else v for k, v in request.args.items()}
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def json_response(data: Any, status: int = 200) -> HTTPResponse:
    """orjson handles datetimes (ISO 8601, UTC offset) and is fast."""
    return raw(
        orjson.dumps(data, default=str),
        status=status,
        content_type="application/json",
    )
