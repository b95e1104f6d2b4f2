"""FCM push through firebase-admin: deep-link data, display block, invalid-token cleanup.

Every push is built from a `Push`: its `data` carries what an app needs to open the exact
conversation (docs/push.md). Sending is fire-and-forget so a slow FCM never delays a chat.
"""

import asyncio
import logging
from dataclasses import dataclass, field

import firebase_admin
from beanie import PydanticObjectId
from firebase_admin import credentials, messaging

from halochat.config import Settings
from halochat.constants import PushFailure, PushType, Role, TimelineKind
from halochat.documents import Device
from halochat.observability import metrics, timeline

log = logging.getLogger(__name__)

FCM_DEFAULT_BASE = "https://fcm.googleapis.com"
ANDROID_CHANNEL_ID = "halochat_chat"

# Who receives a push of this type; the others name the sender as other_role.
_RECIPIENT_ROLE = {
    PushType.CHAT_REQUEST: Role.MITRA,
    PushType.EXTENSION_REQUEST: Role.MITRA,
    PushType.PAIRING_RESULT: Role.CUSTOMER,
    PushType.EXTENSION_ANSWER: Role.CUSTOMER,
}


@dataclass(frozen=True)
class Push:
    type: PushType
    session_id: str
    title: str
    body: str
    # Extra deep-link fields (other party id/name/role, seq, ...); values become strings.
    data: dict[str, object] = field(default_factory=dict)

    def data_block(self) -> dict[str, str]:
        """FCM data values must be strings; None values are left out."""
        merged: dict[str, object] = {"type": self.type.value, "session_id": self.session_id}
        merged.update(self.data)
        return {k: str(v) for k, v in merged.items() if v is not None}

    @property
    def recipient_role(self) -> Role | None:
        if (role := _RECIPIENT_ROLE.get(self.type)) is not None:
            return role
        other = self.data.get("other_role")
        return Role(other).counterpart if other in (Role.CUSTOMER, Role.MITRA) else None


def build_message(push: Push, token: str) -> messaging.Message:
    return messaging.Message(
        token=token,
        notification=messaging.Notification(title=push.title, body=push.body),
        data=push.data_block(),
        android=messaging.AndroidConfig(
            priority="high",
            collapse_key=push.session_id,
            notification=messaging.AndroidNotification(
                tag=push.session_id, channel_id=ANDROID_CHANNEL_ID
            ),
        ),
        apns=messaging.APNSConfig(
            headers={"apns-priority": "10", "apns-collapse-id": push.session_id},
            payload=messaging.APNSPayload(
                aps=messaging.Aps(
                    content_available=True, thread_id=push.session_id, sound="default"
                )
            ),
        ),
    )


def _token_is_dead(exc: Exception) -> bool:
    if isinstance(exc, messaging.UnregisteredError | messaging.SenderIdMismatchError):
        return True
    # FCM answers INVALID_ARGUMENT for a malformed token; other INVALID_ARGUMENTs are ours.
    return isinstance(exc, firebase_admin.exceptions.InvalidArgumentError) and (
        "registration token" in str(exc).lower()
    )


def _outcome(push: Push, sent: int, failures: list[PushFailure]) -> None:
    """Metrics per device; one timeline event per push (chat messages are not timeline
    events): push_sent if any device got it, else push_failed with the first reason."""
    if sent:
        metrics.PUSHES_SENT.labels(push.type.value).inc(sent)
    for reason in failures:
        metrics.PUSHES_FAILED.labels(push.type.value, reason.value).inc()
    if push.type == PushType.CHAT_MESSAGE:
        return
    role = push.recipient_role
    timeline.record(
        push.session_id,
        TimelineKind.PUSH_SENT if sent else TimelineKind.PUSH_FAILED,
        timeline.SYSTEM,
        {
            "type": push.type.value,
            "role": role.value if role else None,
            "reason": None if sent else failures[0].value,
            "devices": sent,
            "failed_devices": len(failures),
        },
    )


class PushService:
    def __init__(self, settings: Settings) -> None:
        self._app: firebase_admin.App | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        if settings.fcm_credentials_file is None:
            log.info("FCM disabled: HALOCHAT_FCM_CREDENTIALS_FILE is not set")
            return
        cred = credentials.Certificate(str(settings.fcm_credentials_file))
        options = {"projectId": settings.fcm_project_id} if settings.fcm_project_id else {}
        self._app = firebase_admin.initialize_app(cred, options, name=f"halochat-{id(self)}")
        if settings.fcm_endpoint:
            # Test hook: the real send path, pointed at a local fake FCM endpoint.
            service = messaging._get_messaging_service(self._app)
            service._fcm_url = service._fcm_url.replace(
                FCM_DEFAULT_BASE, settings.fcm_endpoint.rstrip("/")
            )

    @property
    def enabled(self) -> bool:
        return self._app is not None

    def send_later(self, user_id: PydanticObjectId, push: Push) -> None:
        if not self.enabled:
            return
        task = asyncio.get_running_loop().create_task(self.send(user_id, push))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, user_id: PydanticObjectId, push: Push) -> int:
        """Sends to each registered device of the user; returns how many FCM accepted."""
        if self._app is None:
            return 0
        devices = await Device.find(Device.user_id == user_id).to_list()
        if not devices:
            _outcome(push, 0, [PushFailure.NO_DEVICES])
            return 0
        messages = [build_message(push, d.fcm_token) for d in devices]
        try:
            batch = await messaging.send_each_async(messages, app=self._app)
        except Exception:
            log.exception("FCM send failed for user %s", user_id)
            _outcome(push, 0, [PushFailure.FCM_ERROR] * len(devices))
            return 0
        failures: list[PushFailure] = []
        for device, resp in zip(devices, batch.responses, strict=True):
            if resp.exception is not None:
                if _token_is_dead(resp.exception):
                    log.info("dropping dead FCM token of user %s", user_id)
                    await Device.find(Device.fcm_token == device.fcm_token).delete()
                    failures.append(PushFailure.INVALID_TOKEN)
                else:
                    log.warning("FCM error for user %s: %s", user_id, resp.exception)
                    failures.append(PushFailure.REJECTED)
        _outcome(push, batch.success_count, failures)
        return batch.success_count

    async def drain(self) -> None:
        """Waits for in-flight pushes (shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        app, self._app = self._app, None
        if app is None:
            return
        # firebase-admin's messaging service closes its httpx client with asyncio.run(),
        # which fails inside our running loop; close it here and make that a no-op.
        service = messaging._get_messaging_service(app)
        await service._async_client.aclose()
        service.close = lambda: None
        firebase_admin.delete_app(app)
