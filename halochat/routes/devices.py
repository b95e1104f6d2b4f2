from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.documents import Device
from halochat.domain import devices
from halochat.inputs import Line
from halochat.routes.common import json_response, parse_body
from halochat.routes.openapi_docs import json_body

bp = Blueprint("devices", url_prefix="/v1/devices")

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    fcm_token: Line = Field(max_length=4096)
    platform: Line | None = Field(default=None, max_length=32)


def device_view(device: Device) -> dict[str, object]:
    return {
        "device_id": device.device_id,
        "platform": device.platform,
        "updated_at": device.updated_at,
    }


@bp.put("/")
@openapi.summary("Register (or refresh) this device's FCM token")
@json_body(DeviceIn)
@openapi.secured("bearer")
@authenticated()
async def register_device(request: Request) -> HTTPResponse:
    body = parse_body(request, DeviceIn)
    device = await devices.register_device(
        request.ctx.user.id, body.device_id, body.fcm_token, body.platform
    )
    return json_response(device_view(device))


@bp.get("/")
@openapi.summary("This user's registered devices")
@openapi.secured("bearer")
@authenticated()
async def list_devices(request: Request) -> HTTPResponse:
    found = await devices.list_devices(request.ctx.user.id)
    return json_response({"devices": [device_view(d) for d in found]})


@bp.delete("/<device_id:str>")
@openapi.summary("Unregister a device (logout)")
@openapi.secured("bearer")
@authenticated()
async def unregister_device(request: Request, device_id: str) -> HTTPResponse:
    await devices.unregister_device(request.ctx.user.id, device_id)
    return json_response({"deleted": device_id})
