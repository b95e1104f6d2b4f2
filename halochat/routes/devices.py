from pydantic import BaseModel, ConfigDict, Field
from pymongo import ReturnDocument
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.constants import ErrorCode
from halochat.documents import Device
from halochat.documents.common import utcnow
from halochat.errors import not_found
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
    user = request.ctx.user
    # A token belongs to one app install: if another user had it, they no longer do.
    await Device.get_pymongo_collection().delete_many(
        {"fcm_token": body.fcm_token, "user_id": {"$ne": user.id}}
    )
    raw = await Device.get_pymongo_collection().find_one_and_update(
        {"user_id": user.id, "device_id": body.device_id},
        {"$set": {"fcm_token": body.fcm_token, "platform": body.platform, "updated_at": utcnow()}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return json_response(device_view(Device.model_validate(raw)))


@bp.get("/")
@openapi.summary("This user's registered devices")
@openapi.secured("bearer")
@authenticated()
async def list_devices(request: Request) -> HTTPResponse:
    devices = await Device.find(Device.user_id == request.ctx.user.id).to_list()
    return json_response({"devices": [device_view(d) for d in devices]})


@bp.delete("/<device_id:str>")
@openapi.summary("Unregister a device (logout)")
@openapi.secured("bearer")
@authenticated()
async def unregister_device(request: Request, device_id: str) -> HTTPResponse:
    result = await Device.get_pymongo_collection().delete_one(
        {"user_id": request.ctx.user.id, "device_id": device_id}
    )
    if result.deleted_count == 0:
        raise not_found("device not registered", ErrorCode.NOT_FOUND)
    return json_response({"deleted": device_id})
