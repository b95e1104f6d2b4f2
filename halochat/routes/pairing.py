"""Pairing over HTTP: chat options, chat request, read, accept, cancel; Mitra availability."""

from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.constants import ChoiceKind, ErrorCode, Role
from halochat.domain import pairing
from halochat.inputs import Line
from halochat.routes.common import json_response, object_id, parse_body
from halochat.routes.openapi_docs import BODY, ROLE, WRITE, answers, errors, json_body
from halochat.views import (
    ChatOptions,
    ChatRequested,
    ChatRequestList,
    SessionEnvelope,
    SessionView,
    TransactionView,
    UserView,
)

bp = Blueprint("pairing", url_prefix="/v1")


class ChatRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    choice: ChoiceKind
    tier_id: Line | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _tier_matches_choice(self) -> "ChatRequestIn":
        if self.choice == ChoiceKind.TIER and self.tier_id is None:
            raise ValueError("tier_id is required when choice is 'tier'")
        if self.choice == ChoiceKind.FREE_TRIAL and self.tier_id is not None:
            raise ValueError("tier_id must be omitted for the free trial")
        return self


class AvailabilityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    available: bool = Field(strict=True)


def session_id_of(value: str) -> PydanticObjectId:
    return object_id(value, ErrorCode.SESSION_NOT_FOUND, "session")


@bp.get("/chat/options")
@openapi.summary("What this customer may choose: the free trial, or the tiers")
@answers(200, ChatOptions, "the free trial (kind free_trial) or the tiers (kind tiers)")
@errors(*ROLE)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER)
async def chat_options(request: Request) -> HTTPResponse:
    services = request.app.ctx.services
    options = await pairing.chat_options(services, request.ctx.user)
    return json_response(ChatOptions.model_validate(options).dump())


@bp.post("/sessions")
@openapi.summary("Request a chat (customer): records the transaction, starts pairing")
@json_body(ChatRequestIn)
@answers(201, ChatRequested, "the PAIRING session and its transaction")
@errors(
    *ROLE,
    *BODY,
    ErrorCode.TIER_NOT_FOUND,
    ErrorCode.SESSION_ALREADY_OPEN,
    ErrorCode.FREE_TRIAL_UNAVAILABLE,
)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER)
async def request_chat(request: Request) -> HTTPResponse:
    body = parse_body(request, ChatRequestIn)
    session, txn = await pairing.request_chat(
        request.app.ctx.services, request.ctx.user, body.choice, body.tier_id
    )
    answer = ChatRequested(
        session=SessionView.of(session, Role.CUSTOMER),
        transaction=TransactionView.model_validate(pairing.transaction_view(txn)),
    )
    return json_response(answer.dump(), status=201)


@bp.get("/sessions/<session_id:str>")
@openapi.summary("A session of the caller (its customer or Mitra)")
@answers(200, SessionEnvelope, "the session as the caller sees it")
@errors(*ROLE, ErrorCode.SESSION_NOT_FOUND)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER, Role.MITRA)
async def get_session(request: Request, session_id: str) -> HTTPResponse:
    session, role = await pairing.get_session(request.ctx.user, session_id_of(session_id))
    return json_response(SessionEnvelope(session=SessionView.of(session, role)).dump())


@bp.post("/sessions/<session_id:str>/accept")
@openapi.summary("Accept a chat request (Mitra); the first accept wins, others get 409")
@answers(200, SessionEnvelope, "the session, ACTIVE")
@errors(
    *ROLE, *WRITE, ErrorCode.SESSION_NOT_FOUND, ErrorCode.REQUEST_TAKEN, ErrorCode.INVALID_STATE
)
@openapi.secured("bearer")
@authenticated(Role.MITRA)
async def accept(request: Request, session_id: str) -> HTTPResponse:
    session = await pairing.accept(
        request.app.ctx.services, request.ctx.user, session_id_of(session_id)
    )
    return json_response(SessionEnvelope(session=SessionView.of(session, Role.MITRA)).dump())


@bp.post("/sessions/<session_id:str>/cancel")
@openapi.summary("Cancel a chat request while it is pairing (customer)")
@answers(200, SessionEnvelope, "the session, CANCELLED")
@errors(*ROLE, *WRITE, ErrorCode.SESSION_NOT_FOUND, ErrorCode.INVALID_STATE)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER)
async def cancel(request: Request, session_id: str) -> HTTPResponse:
    session = await pairing.cancel(
        request.app.ctx.services, request.ctx.user, session_id_of(session_id)
    )
    return json_response(SessionEnvelope(session=SessionView.of(session, Role.CUSTOMER)).dump())


@bp.put("/mitra/availability")
@openapi.summary("Set this Mitra's availability for chat requests")
@json_body(AvailabilityIn)
@answers(200, UserView, "the Mitra, with its availability")
@errors(*ROLE, *BODY)
@openapi.secured("bearer")
@authenticated(Role.MITRA)
async def set_availability(request: Request) -> HTTPResponse:
    body = parse_body(request, AvailabilityIn)
    user = await pairing.set_availability(
        request.app.ctx.services, request.ctx.user, body.available
    )
    return json_response(UserView.of(user).dump())


@bp.get("/mitra/requests")
@openapi.summary("The chat requests this Mitra can accept now")
@answers(200, ChatRequestList, "the open requests")
@errors(*ROLE)
@openapi.secured("bearer")
@authenticated(Role.MITRA)
async def open_requests(request: Request) -> HTTPResponse:
    sessions = await pairing.open_requests_for(request.ctx.user.id)
    requests = [pairing.chat_request_data(s) for s in sessions]
    return json_response(ChatRequestList.model_validate({"requests": requests}).dump())
