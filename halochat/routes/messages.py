"""Chat over HTTP (fallback for the WebSocket, and history): messages and receipts."""

from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.config import Settings
from halochat.constants import ErrorCode, ReceiptKind, Role
from halochat.domain import messaging
from halochat.domain.messaging import Sender
from halochat.inputs import INT64_MAX, Line, Text
from halochat.routes.common import json_response, object_id, parse_body, parse_query
from halochat.routes.openapi_docs import BODY, ROLE, answers, errors, json_body
from halochat.views import MessagePage, MessageSent, MessageView, ReceiptAnswer

bp = Blueprint("messages", url_prefix="/v1/sessions")

DEFAULT_MAX_LIMIT: int = Settings.model_fields["history_max_limit"].default


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    client_msg_id: Line = Field(max_length=64)
    body: Text  # 1..message_max_chars after trimming (checked in the domain)


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ReceiptKind
    seq: int = Field(strict=True, ge=1, le=INT64_MAX)


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after_seq: int | None = Field(default=None, ge=0, le=INT64_MAX)
    before_seq: int | None = Field(default=None, ge=1, le=INT64_MAX)
    # Up to HALOCHAT_HISTORY_MAX_LIMIT (the validation context's max_limit): more is a 422.
    limit: int | None = Field(default=None, ge=1, le=INT64_MAX)

    @field_validator("limit")
    @classmethod
    def _at_most_max_limit(cls, limit: int | None, info: ValidationInfo) -> int | None:
        max_limit = (info.context or {}).get("max_limit")
        if limit is not None and max_limit is not None and limit > max_limit:
            raise PydanticCustomError(
                "less_than_equal",
                "Input should be less than or equal to {le}",
                {"le": max_limit},
            )
        return limit


def _session_id(value: str) -> PydanticObjectId:
    return object_id(value, ErrorCode.SESSION_NOT_FOUND, "session")


@bp.get("/<session_id:str>/messages")
@openapi.summary("Messages of a session by seq range, chronological (status as the sender sees)")
@openapi.parameter("after_seq", openapi.Integer(minimum=0, maximum=INT64_MAX))
@openapi.parameter("before_seq", openapi.Integer(minimum=1, maximum=INT64_MAX))
@openapi.parameter(
    "limit",
    openapi.Integer(minimum=1, maximum=DEFAULT_MAX_LIMIT),
    description="default 50; at most HALOCHAT_HISTORY_MAX_LIMIT (200): more is a 422",
)
@answers(200, MessagePage, "the messages, oldest first")
@errors(*ROLE, ErrorCode.VALIDATION_ERROR, ErrorCode.SESSION_NOT_FOUND)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER, Role.MITRA)
async def list_messages(request: Request, session_id: str) -> HTTPResponse:
    settings = request.app.ctx.services.settings
    query = parse_query(request, HistoryQuery, context={"max_limit": settings.history_max_limit})
    limit = query.limit or settings.history_default_limit
    session, messages, has_more = await messaging.history(
        Sender.of_user(request.ctx.user),
        _session_id(session_id),
        after_seq=query.after_seq,
        before_seq=query.before_seq,
        limit=limit,
    )
    page = MessagePage(messages=[MessageView.of(m, session) for m in messages], has_more=has_more)
    return json_response(page.dump())


@bp.post("/<session_id:str>/messages")
@openapi.summary("Send a message (same rules as the WebSocket message.send)")
@json_body(MessageIn)
@answers(201, MessageSent, "stored now")
@answers(200, MessageSent, "already stored under this client_msg_id (replayed: true)")
@errors(
    *ROLE,
    *BODY,
    ErrorCode.SESSION_NOT_FOUND,
    ErrorCode.INVALID_STATE,
    ErrorCode.DUPLICATE,
    ErrorCode.OVERLOADED,
)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER, Role.MITRA)
async def send_message(request: Request, session_id: str) -> HTTPResponse:
    body = parse_body(request, MessageIn)
    result = await messaging.send_message(
        request.app.ctx.services,
        Sender.of_user(request.ctx.user),
        _session_id(session_id),
        body.client_msg_id,
        body.body,
    )
    sent = MessageSent(message=MessageView.of(result.message), replayed=result.replayed)
    return json_response(sent.dump(), status=200 if result.replayed else 201)


@bp.post("/<session_id:str>/receipts")
@openapi.summary("Move this party's delivered/read watermark forward")
@json_body(ReceiptIn)
@answers(200, ReceiptAnswer, "this party's watermarks now")
@errors(*ROLE, *BODY, ErrorCode.SESSION_NOT_FOUND, ErrorCode.INVALID_STATE)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER, Role.MITRA)
async def post_receipt(request: Request, session_id: str) -> HTTPResponse:
    body = parse_body(request, ReceiptIn)
    data = await messaging.receipt(
        request.app.ctx.services,
        Sender.of_user(request.ctx.user),
        _session_id(session_id),
        body.kind,
        body.seq,
    )
    return json_response(ReceiptAnswer.model_validate({"receipt": data}).dump())
