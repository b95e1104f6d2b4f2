"""What domain actions emit: typed events, routed by the notifier (halochat/notify/notifier.py).

A domain function changes the database, then hands the events of that change to
`services.notifier.publish(...)`. Events name who must learn what; they know nothing of sockets,
processes or FCM. The frame `type` (constants.ServerFrame) is what happened, as the apps see it;
the event class (and its `kind`) says how it is routed.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from beanie import PydanticObjectId

from halochat.constants import Role, ServerFrame
from halochat.documents import ChatSession
from halochat.errors import ApiError
from halochat.push import Push

# The device a request came from (a WebSocket connection), opaque to the domain: events that
# echo to "the actor's other devices" skip it, since it gets an ack instead.
Origin = object


class EventKind(StrEnum):
    USER_NOTICE = "user_notice"  # a frame (maybe a push) for one user
    PARTY_NOTICE = "party_notice"  # a session event for one party, with the session view
    MESSAGE_STORED = "message_stored"  # a chat message: recipient + sender's other devices
    RECEIPT_MOVED = "receipt_moved"  # a watermark moved: other party + mover's other devices
    ACCESS_ENDED = "access_ended"  # a user's sockets must close (disabled, tokens revoked)


@dataclass(frozen=True)
class UserNotice:
    """`type` with `data` to every live device of `user_id`; `push` when none is in the
    foreground."""

    kind: ClassVar[EventKind] = EventKind.USER_NOTICE
    user_id: PydanticObjectId | None
    type: ServerFrame
    data: dict[str, Any]
    push: Push | None = None


@dataclass(frozen=True)
class PartyNotice:
    """A session event for one party: `data` plus the session as that party sees it."""

    kind: ClassVar[EventKind] = EventKind.PARTY_NOTICE
    session: ChatSession
    role: Role
    type: ServerFrame
    data: dict[str, Any]
    push: Push | None = None


@dataclass(frozen=True)
class MessageStored:
    """A stored chat message (`data` is its message.new payload). Published under the
    session lock, so every device gets a session's messages in seq order."""

    kind: ClassVar[EventKind] = EventKind.MESSAGE_STORED
    session_id: PydanticObjectId
    seq: int
    data: dict[str, Any]
    sender_id: PydanticObjectId
    recipient_id: PydanticObjectId
    push: Push
    origin: Origin | None = None


@dataclass(frozen=True)
class ReceiptMoved:
    """A party's delivered/read watermark moved (`data` is the receipt.updated payload)."""

    kind: ClassVar[EventKind] = EventKind.RECEIPT_MOVED
    by_id: PydanticObjectId
    other_id: PydanticObjectId | None
    data: dict[str, Any]
    origin: Origin | None = None


@dataclass(frozen=True)
class AccessEnded:
    """The user may no longer use the sockets opened so far (or only those whose token was
    issued up to `issued_until`): each gets `error` as its last frame, then closes."""

    kind: ClassVar[EventKind] = EventKind.ACCESS_ENDED
    user_id: PydanticObjectId
    error: ApiError
    issued_until: datetime | None = None


Event = UserNotice | PartyNotice | MessageStored | ReceiptMoved | AccessEnded
