"""Lifecycle over HTTP: extension request / answer / decline, end early, closing message.

Every endpoint answers {"session": {...}} as the caller sees it (docs/lifecycle.md)."""

from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.constants import ErrorCode, Role
from halochat.domain import closing, extension, pairing
from halochat.inputs import Line, Text
from halochat.routes.common import json_response, object_id, parse_body
from halochat.routes.openapi_docs import BODY, ROLE, WRITE, answers, errors, json_body
from halochat.views import (
    ExtensionAnswered,
    ExtensionRequested,
    ExtensionView,
    SessionEnvelope,
    SessionView,
    TransactionView,
)

bp = Blueprint("lifecycle", url_prefix="/v1/sessions")

SESSION_NOT_FOUND = ErrorCode.SESSION_NOT_FOUND

PARTIES = (Role.CUSTOMER, Role.MITRA)


class ExtensionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier_id: Line = Field(max_length=64)


class ExtensionAnswerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    extension_id: Line = Field(max_length=64)
    accept: StrictBool


class ClosureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The 1..closure_max_chars rule (after trimming) is checked by the domain.
    text: Text


def _sid(value: str) -> PydanticObjectId:
    return object_id(value, ErrorCode.SESSION_NOT_FOUND, "session")


@bp.post("/<session_id:str>/extension")
@openapi.summary("Ask to extend an EXPIRED session with a tier (customer)")
@json_body(ExtensionIn)
@answers(200, ExtensionRequested, "the session (EXTENSION_PENDING) and the request")
@errors(*ROLE, *BODY, SESSION_NOT_FOUND, ErrorCode.TIER_NOT_FOUND, ErrorCode.INVALID_STATE)
@openapi.secured("bearer")
@authenticated(*PARTIES)
async def request_extension(request: Request, session_id: str) -> HTTPResponse:
    body = parse_body(request, ExtensionIn)
    session = await extension.request_extension(
        request.app.ctx.services, request.ctx.user, _sid(session_id), body.tier_id
    )
    assert session.extension is not None
    answer = ExtensionRequested(
        session=SessionView.of(session, Role.CUSTOMER),
        extension=ExtensionView.model_validate(session.extension.model_dump(mode="json")),
    )
    return json_response(answer.dump())


@bp.post("/<session_id:str>/extension/answer")
@openapi.summary("Accept or reject the pending extension request (Mitra)")
@json_body(ExtensionAnswerIn)
@answers(200, ExtensionAnswered, "the session; accepted: ACTIVE again, with its transaction")
@errors(
    *ROLE,
    *BODY,
    SESSION_NOT_FOUND,
    ErrorCode.INVALID_STATE,
    ErrorCode.ALREADY_RESOLVED,
)
@openapi.secured("bearer")
@authenticated(*PARTIES)
async def answer_extension(request: Request, session_id: str) -> HTTPResponse:
    body = parse_body(request, ExtensionAnswerIn)
    session, txn = await extension.answer_extension(
        request.app.ctx.services, request.ctx.user, _sid(session_id), body.extension_id, body.accept
    )
    answer = ExtensionAnswered(session=SessionView.of(session, Role.MITRA))
    if txn is not None:
        answer.transaction = TransactionView.model_validate(pairing.transaction_view(txn))
    return json_response(answer.dump())


@bp.post("/<session_id:str>/extension/decline")
@openapi.summary("Do not extend an EXPIRED session: it moves to CLOSING (customer)")
@answers(200, SessionEnvelope, "the session, CLOSING")
@errors(*ROLE, *WRITE, SESSION_NOT_FOUND, ErrorCode.INVALID_STATE)
@openapi.secured("bearer")
@authenticated(*PARTIES)
async def decline_extension(request: Request, session_id: str) -> HTTPResponse:
    session = await extension.decline_extension(
        request.app.ctx.services, request.ctx.user, _sid(session_id)
    )
    return json_response(SessionEnvelope(session=SessionView.of(session, Role.CUSTOMER)).dump())


@bp.post("/<session_id:str>/end")
@openapi.summary("End an ACTIVE session early: it moves to CLOSING (either party)")
@answers(200, SessionEnvelope, "the session, CLOSING")
@errors(*ROLE, *WRITE, SESSION_NOT_FOUND, ErrorCode.INVALID_STATE)
@openapi.secured("bearer")
@authenticated(*PARTIES)
async def end_session(request: Request, session_id: str) -> HTTPResponse:
    user = request.ctx.user
    session = await closing.end_early(request.app.ctx.services, user, _sid(session_id))
    return json_response(
        SessionEnvelope(session=SessionView.of(session, session.role_of(user.id))).dump()
    )


@bp.post("/<session_id:str>/closure")
@openapi.summary("Write this party's closing message (once, in CLOSING)")
@json_body(ClosureIn)
@answers(200, SessionEnvelope, "the session; COMPLETED once both parties wrote theirs")
@errors(*ROLE, *BODY, SESSION_NOT_FOUND, ErrorCode.INVALID_STATE, ErrorCode.ALREADY_SUBMITTED)
@openapi.secured("bearer")
@authenticated(*PARTIES)
async def submit_closure(request: Request, session_id: str) -> HTTPResponse:
    body = parse_body(request, ClosureIn)
    user = request.ctx.user
    session = await closing.submit_closure(
        request.app.ctx.services, user, _sid(session_id), body.text
    )
    return json_response(
        SessionEnvelope(session=SessionView.of(session, session.role_of(user.id))).dump()
    )
