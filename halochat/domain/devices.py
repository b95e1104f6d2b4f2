"""A user's devices and their FCM tokens (PUT /v1/devices; docs/push.md)."""

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from halochat.constants import ErrorCode
from halochat.documents import Device
from halochat.documents.common import utcnow
from halochat.errors import not_found


async def register_device(
    user_id: PydanticObjectId, device_id: str, fcm_token: str, platform: str | None
) -> Device:
    """Registers (or refreshes) the device's token. A token belongs to one app install: if
    another user had it, they no longer do."""
    coll = Device.get_pymongo_collection()
    await coll.delete_many({"fcm_token": fcm_token, "user_id": {"$ne": user_id}})
    raw = await coll.find_one_and_update(
        {"user_id": user_id, "device_id": device_id},
        {"$set": {"fcm_token": fcm_token, "platform": platform, "updated_at": utcnow()}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return Device.model_validate(raw)


async def list_devices(user_id: PydanticObjectId) -> list[Device]:
    return await Device.find(Device.user_id == user_id).to_list()


async def unregister_device(user_id: PydanticObjectId, device_id: str) -> None:
    """404 not_found when the user has no such device."""
    result = await Device.get_pymongo_collection().delete_one(
        {"user_id": user_id, "device_id": device_id}
    )
    if result.deleted_count == 0:
        raise not_found("device not registered", ErrorCode.NOT_FOUND)
