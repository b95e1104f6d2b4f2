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
from halochat.routes.openapi_docs import json_body
from halochat.views import session_view, user_view

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
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER)
async def chat_options(request: Request) -> HTTPResponse:
    services = request.app.ctx.services
    return json_response(await pairing.chat_options(services, request.ctx.user))


@bp.post("/sessions")
@openapi.summary("Request a chat (customer): records the transaction, starts pairing")
@json_body(ChatRequestIn)
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER)
async def request_chat(request: Request) -> HTTPResponse:
    body = parse_body(request, ChatRequestIn)
    session, txn = await pairing.request_chat(
        request.app.ctx.services, request.ctx.user, body.choice, body.tier_id
    )
    return json_response(
        {
            "session": session_view(session, Role.CUSTOMER),
            "transaction": pairing.transaction_view(txn),
        },
        status=201,
    )


@bp.get("/sessions/<session_id:str>")
@openapi.summary("A session of the caller (its customer or Mitra)")
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER, Role.MITRA)
async def get_session(request: Request, session_id: str) -> HTTPResponse:
    session, role = await pairing.get_session(request.ctx.user, session_id_of(session_id))
    return json_response({"session": session_view(session, role)})


@bp.post("/sessions/<session_id:str>/accept")
@openapi.summary("Accept a chat request (Mitra); the first accept wins, others get 409")
@openapi.secured("bearer")
@authenticated(Role.MITRA)
async def accept(request: Request, session_id: str) -> HTTPResponse:
    session = await pairing.accept(
        request.app.ctx.services, request.ctx.user, session_id_of(session_id)
    )
    return json_response({"session": session_view(session, Role.MITRA)})


@bp.post("/sessions/<session_id:str>/cancel")
@openapi.summary("Cancel a chat request while it is pairing (customer)")
@openapi.secured("bearer")
@authenticated(Role.CUSTOMER)
async def cancel(request: Request, session_id: str) -> HTTPResponse:
    session = await pairing.cancel(
        request.app.ctx.services, request.ctx.user, session_id_of(session_id)
    )
    return json_response({"session": session_view(session, Role.CUSTOMER)})


@bp.put("/mitra/availability")
@openapi.summary("Set this Mitra's availability for chat requests")
@json_body(AvailabilityIn)
@openapi.secured("bearer")
@authenticated(Role.MITRA)
async def set_availability(request: Request) -> HTTPResponse:
    body = parse_body(request, AvailabilityIn)
    user = await pairing.set_availability(
        request.app.ctx.services, request.ctx.user, body.available
    )
    return json_response(user_view(user))


@bp.get("/mitra/requests")
@openapi.summary("The chat requests this Mitra can accept now")
@openapi.secured("bearer")
@authenticated(Role.MITRA)
async def open_requests(request: Request) -> HTTPResponse:
    sessions = await pairing.open_requests_for(request.ctx.user.id)
    return json_response({"requests": [pairing.chat_request_data(s) for s in sessions]})
