from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.constants import ErrorCode
from halochat.domain import devices
from halochat.inputs import Line
from halochat.routes.common import json_response, parse_body
from halochat.routes.openapi_docs import AUTH, BODY, WRITE, answers, errors, json_body
from halochat.views import DeviceDeleted, DeviceList, DeviceView

bp = Blueprint("devices", url_prefix="/v1/devices")

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    fcm_token: Line = Field(max_length=4096)
    platform: Line | None = Field(default=None, max_length=32)


@bp.put("/")
@openapi.summary("Register (or refresh) this device's FCM token")
@json_body(DeviceIn)
@answers(200, DeviceView, "the device as registered")
@errors(*AUTH, *BODY)
@openapi.secured("bearer")
@authenticated()
async def register_device(request: Request) -> HTTPResponse:
    body = parse_body(request, DeviceIn)
    device = await devices.register_device(
        request.ctx.user.id, body.device_id, body.fcm_token, body.platform
    )
    return json_response(DeviceView.of(device).dump())


@bp.get("/")
@openapi.summary("This user's registered devices")
@answers(200, DeviceList, "the devices")
@errors(*AUTH)
@openapi.secured("bearer")
@authenticated()
async def list_devices(request: Request) -> HTTPResponse:
    found = await devices.list_devices(request.ctx.user.id)
    return json_response(DeviceList(devices=[DeviceView.of(d) for d in found]).dump())


@bp.delete("/<device_id:str>")
@openapi.summary("Unregister a device (logout)")
@answers(200, DeviceDeleted, "the device is unregistered")
@errors(*AUTH, *WRITE, ErrorCode.NOT_FOUND)
@openapi.secured("bearer")
@authenticated()
async def unregister_device(request: Request, device_id: str) -> HTTPResponse:
    await devices.unregister_device(request.ctx.user.id, device_id)
    return json_response(DeviceDeleted(deleted=device_id).dump())
