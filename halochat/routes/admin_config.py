from pydantic import ConfigDict
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.constants import Role
from halochat.documents import ConfigValues
from halochat.domain.app_config import replace_config, require_config
from halochat.routes.common import json_response, parse_body
from halochat.routes.openapi_docs import json_body
from halochat.views import config_view

bp = Blueprint("admin_config", url_prefix="/v1/admin/config")


class ConfigIn(ConfigValues):
    model_config = ConfigDict(extra="forbid")


@bp.get("/")
@openapi.summary("Read the Control Center configuration (admin)")
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def read_config(request: Request) -> HTTPResponse:
    config = await require_config(request.app.ctx.services.settings)
    return json_response(config_view(config))


@bp.put("/")
@openapi.summary("Replace the Control Center configuration (admin); applies at once")
@json_body(ConfigIn)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def write_config(request: Request) -> HTTPResponse:
    values = parse_body(request, ConfigIn)
    config = await replace_config(request.app.ctx.services.settings, values)
    return json_response(config_view(config))
