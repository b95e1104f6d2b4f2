from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated, issue_token
from halochat.constants import AuthMode, ErrorCode, Role
from halochat.domain import accounts
from halochat.domain.users import USERS_DEFAULT_LIMIT, USERS_MAX_LIMIT, list_users, token_for
from halochat.inputs import Line
from halochat.routes.common import json_response, object_id, parse_body, parse_query
from halochat.routes.openapi_docs import AUTH, BODY, ROLE, WRITE, answers, errors, json_body
from halochat.views import AdminUserView, CreatedUserView, UserPage, UserToken, UserView

bp = Blueprint("users", url_prefix="/v1")


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    display_name: Line = Field(max_length=80)
    auth_uid: Line | None = Field(default=None, max_length=128)


@bp.get("/me")
@openapi.summary("The calling user")
@answers(200, UserView, "the calling user")
@errors(*AUTH)
@openapi.secured("bearer")
@authenticated()
async def me(request: Request) -> HTTPResponse:
    return json_response(UserView.of(request.ctx.user).dump())


@bp.post("/admin/users")
@openapi.summary("Create a user (admin). In local auth mode the answer carries a token.")
@json_body(NewUser)
@answers(201, CreatedUserView, "the new user (with a token in local auth mode)")
@errors(*ROLE, *BODY, ErrorCode.DUPLICATE)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def create_user(request: Request) -> HTTPResponse:
    body = parse_body(request, NewUser)
    user = await accounts.create_user(body.role, body.display_name, body.auth_uid)
    settings = request.app.ctx.services.settings
    token = issue_token(settings, user.id) if settings.auth_mode == AuthMode.LOCAL else None
    return json_response(CreatedUserView.of_new(user, token).dump(), status=201)


def _uid(value: str) -> PydanticObjectId:
    return object_id(value, ErrorCode.NOT_FOUND, "user")


@bp.get("/admin/users/<user_id:str>")
@openapi.summary("An account as admins see it: role, auth_uid, disabled, tokens_valid_after")
@answers(200, AdminUserView, "the account")
@errors(*ROLE, ErrorCode.NOT_FOUND)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def read_user(request: Request, user_id: str) -> HTTPResponse:
    return json_response(AdminUserView.of(await accounts.load_user(_uid(user_id))).dump())


@bp.post("/admin/users/<user_id:str>/disable")
@openapi.summary("Disable an account (admin)")
@openapi.description(
    "Its tokens are refused from now on (HTTP 403 `user_disabled`; WebSocket close 4403) and "
    "its live sockets close at once with 4403. Idempotent. An admin cannot disable themselves "
    "(409 `self_lockout`). Unknown id: 404 `not_found`."
)
@answers(200, AdminUserView, "the account, disabled")
@errors(*ROLE, *WRITE, ErrorCode.NOT_FOUND, ErrorCode.SELF_LOCKOUT)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def disable_user(request: Request, user_id: str) -> HTTPResponse:
    services = request.app.ctx.services
    user = await accounts.disable_user(services, request.ctx.user, _uid(user_id))
    return json_response(AdminUserView.of(user).dump())


@bp.post("/admin/users/<user_id:str>/enable")
@openapi.summary("Re-enable a disabled account (admin)")
@openapi.description(
    "Its unexpired, unrevoked tokens work again. Idempotent. Unknown id: 404 `not_found`."
)
@answers(200, AdminUserView, "the account, enabled")
@errors(*ROLE, *WRITE, ErrorCode.NOT_FOUND)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def enable_user(request: Request, user_id: str) -> HTTPResponse:
    user = await accounts.enable_user(request.ctx.user, _uid(user_id))
    return json_response(AdminUserView.of(user).dump())


@bp.post("/admin/users/<user_id:str>/revoke-tokens")
@openapi.summary("Revoke every token issued to an account so far (admin)")
@openapi.description(
    "Tokens issued up to now (including this very second) are refused with 401 "
    "`token_revoked`, and sockets opened with them close with 4401; tokens issued later work. "
    "Firebase mode compares the sign-in time (`auth_time`): the user signs in again. An admin "
    "cannot revoke their own tokens (409 `self_lockout`). Unknown id: 404 `not_found`."
)
@answers(200, AdminUserView, "the account; tokens_valid_after is now")
@errors(*ROLE, *WRITE, ErrorCode.NOT_FOUND, ErrorCode.SELF_LOCKOUT)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def revoke_tokens(request: Request, user_id: str) -> HTTPResponse:
    services = request.app.ctx.services
    user = await accounts.revoke_tokens(services, request.ctx.user, _uid(user_id))
    return json_response(AdminUserView.of(user).dump())


class UsersQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    limit: int = Field(default=USERS_DEFAULT_LIMIT, ge=1, le=USERS_MAX_LIMIT)
    after: str | None = Field(default=None, pattern=r"^[0-9a-f]{24}$")


@bp.get("/admin/users")
@openapi.summary("List users in creation order (admin), keyset-paginated")
@openapi.parameter("role", str, description="customer | mitra | admin (default: every role)")
@openapi.parameter("limit", int, description=f"1..{USERS_MAX_LIMIT}, default {USERS_DEFAULT_LIMIT}")
@openapi.parameter("after", str, description="next_after of the previous page (a user id)")
@answers(200, UserPage, "one page of users")
@errors(*ROLE, ErrorCode.VALIDATION_ERROR)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def users_list(request: Request) -> HTTPResponse:
    query = parse_query(request, UsersQuery)
    after = PydanticObjectId(query.after) if query.after else None
    users, next_after = await list_users(query.role, query.limit, after)
    page = UserPage(
        users=[AdminUserView.of(u) for u in users],
        next_after=str(next_after) if next_after else None,
    )
    return json_response(page.dump())


@bp.post("/admin/users/<user_id:str>/token")
@openapi.summary("Issue a bearer token for a user (admin, local auth mode only; dev tools)")
@answers(200, UserToken, "the user and a fresh bearer token")
@errors(*ROLE, *WRITE, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def user_token(request: Request, user_id: str) -> HTTPResponse:
    settings = request.app.ctx.services.settings
    user, token = await token_for(settings, object_id(user_id, what="user"))
    return json_response(UserToken(user=UserView.of(user), token=token).dump())
