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
    return json_response(DeviceView.of(Device.model_validate(raw)).dump())


@bp.get("/")
@openapi.summary("This user's registered devices")
@answers(200, DeviceList, "the devices")
@errors(*AUTH)
@openapi.secured("bearer")
@authenticated()
async def list_devices(request: Request) -> HTTPResponse:
    devices = await Device.find(Device.user_id == request.ctx.user.id).to_list()
    return json_response(DeviceList(devices=[DeviceView.of(d) for d in devices]).dump())


@bp.delete("/<device_id:str>")
@openapi.summary("Unregister a device (logout)")
@answers(200, DeviceDeleted, "the device is unregistered")
@errors(*AUTH, *WRITE, ErrorCode.NOT_FOUND)
@openapi.secured("bearer")
@authenticated()
async def unregister_device(request: Request, device_id: str) -> HTTPResponse:
    result = await Device.get_pymongo_collection().delete_one(
        {"user_id": request.ctx.user.id, "device_id": device_id}
    )
    if result.deleted_count == 0:
        raise not_found("device not registered", ErrorCode.NOT_FOUND)
    return json_response(DeviceDeleted(deleted=device_id).dump())
