"""Operators and support: Prometheus metrics and the admin's session timeline."""

from beanie import PydanticObjectId
from bson.errors import InvalidId
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.constants import ErrorCode, Role
from halochat.documents import ChatSession
from halochat.domain.access import session_not_found
from halochat.errors import ApiError
from halochat.observability import metrics, timeline
from halochat.routes.common import json_response
from halochat.routes.openapi_docs import ROLE, answers, errors
from halochat.views import SessionTimeline

bp = Blueprint("observability")


@bp.get("/metrics")
@openapi.summary("Prometheus metrics (text exposition format; docs/operations.md)")
@openapi.response(200, {"text/plain": str}, "the metrics")
async def prometheus_metrics(request: Request) -> HTTPResponse:
    body, content_type = await metrics.exposition(request.headers.get("accept"))
    return raw(body, content_type=content_type)


def _session_id(value: str) -> PydanticObjectId:
    """A malformed id is a bad request here (422): support pasted the wrong thing."""
    try:
        return PydanticObjectId(value)
    except (InvalidId, TypeError) as exc:
        raise ApiError(
            422,
            ErrorCode.VALIDATION_ERROR,
            "session_id must be a 24-hex-digit id",
            {"fields": [{"field": "session_id", "message": "not a session id"}]},
        ) from exc


@bp.get("/v1/admin/sessions/<session_id:str>/timeline")
@openapi.summary("A session's timeline for support, oldest first (admin; docs/support.md)")
@answers(200, SessionTimeline, "the events, oldest first")
@errors(*ROLE, ErrorCode.VALIDATION_ERROR, ErrorCode.SESSION_NOT_FOUND)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def session_timeline(request: Request, session_id: str) -> HTTPResponse:
    sid = _session_id(session_id)
    exists = await ChatSession.get_pymongo_collection().find_one({"_id": sid}, {"_id": 1})
    if exists is None:
        raise session_not_found()
    events = await timeline.session_timeline(sid)
    answer = SessionTimeline.model_validate({"session_id": str(sid), "events": events})
    return json_response(answer.dump())
