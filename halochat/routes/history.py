from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.constants import ErrorCode, Role
from halochat.domain.history import (
    HISTORY_DEFAULT_LIMIT,
    HISTORY_MAX_LIMIT,
    history_page,
    open_sessions,
)
from halochat.routes.common import json_response, parse_query
from halochat.routes.openapi_docs import ROLE, answers, errors
from halochat.views import HistoryPage, SessionList

bp = Blueprint("history", url_prefix="/v1/me")


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=HISTORY_DEFAULT_LIMIT, ge=1, le=HISTORY_MAX_LIMIT)
    cursor: str | None = Field(default=None, min_length=1, max_length=200)


@bp.get("/history")
@openapi.summary("The caller's finished (COMPLETED) sessions, newest first, keyset-paginated")
@openapi.parameter(
    "limit", openapi.Integer(minimum=1, maximum=HISTORY_MAX_LIMIT), description="default 20"
)
@openapi.parameter("cursor", str, description="next_cursor of the previous page")
@answers(200, HistoryPage, "one page of finished sessions")
@errors(*ROLE, ErrorCode.VALIDATION_ERROR, ErrorCode.BAD_REQUEST)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER, Role.MITRA)
async def history(request: Request) -> HTTPResponse:
    query = parse_query(request, HistoryQuery)
    items, next_cursor = await history_page(request.ctx.user, query.limit, query.cursor)
    page = HistoryPage.model_validate({"sessions": items, "next_cursor": next_cursor})
    return json_response(page.dump())


@bp.get("/sessions/open")
@openapi.summary("The caller's open sessions (pairing, active, expired, closing, ...)")
@answers(200, SessionList, "the open sessions, newest first")
@errors(*ROLE)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER, Role.MITRA)
async def open_list(request: Request) -> HTTPResponse:
    sessions = SessionList.model_validate({"sessions": await open_sessions(request.ctx.user)})
    return json_response(sessions.dump())
