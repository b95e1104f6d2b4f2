from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated, issue_token
from halochat.constants import AuthMode, Role
from halochat.documents import User
from halochat.inputs import Line
from halochat.routes.common import json_response, parse_body
from halochat.routes.openapi_docs import json_body
from halochat.views import user_view

bp = Blueprint("users", url_prefix="/v1")


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    display_name: Line = Field(max_length=80)
    auth_uid: Line | None = Field(default=None, max_length=128)


@bp.get("/me")
@openapi.summary("The calling user")
@openapi.secured("bearer")
@authenticated()
async def me(request: Request) -> HTTPResponse:
    return json_response(user_view(request.ctx.user))


@bp.post("/admin/users")
@openapi.summary("Create a user (admin). In local auth mode the answer carries a token.")
@json_body(NewUser)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def create_user(request: Request) -> HTTPResponse:
    body = parse_body(request, NewUser)
    user = User(role=body.role, display_name=body.display_name, auth_uid=body.auth_uid)
    await user.insert()
    out = user_view(user)
    settings = request.app.ctx.services.settings
    if settings.auth_mode == AuthMode.LOCAL:
        out["token"] = issue_token(settings, user.id)
    return json_response(out, status=201)
