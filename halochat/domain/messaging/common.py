"""What every chat action shares: who acts, and the errors they answer."""

from dataclasses import dataclass
from typing import Any

from beanie import PydanticObjectId

from halochat.constants import (
    ErrorCode,
    Role,
)
from halochat.documents import ChatSession, Message, User
from halochat.domain.access import invalid_state, load_session, session_not_found
from halochat.errors import ApiError
from halochat.notify.events import Origin
from halochat.observability import metrics


@dataclass(frozen=True)
class Sender:
    """Who acts: from the HTTP user or the WebSocket connection (role from the stored user)."""

    id: PydanticObjectId
    role: Role

    @classmethod
    def of_user(cls, user: User) -> "Sender":
        return cls(user.id, user.role)


@dataclass(frozen=True)
class Outgoing:
    """A send being stored: who, where, what, from which device, and by when (loop time)."""

    who: Sender
    session_id: PydanticObjectId
    client_msg_id: str
    body: str
    origin: Origin | None
    deadline: float


@dataclass(frozen=True)
class SendResult:
    message: Message
    replayed: bool  # True: a retried client_msg_id, the stored message is returned


def overloaded() -> ApiError:
    """503, retryable: the send was not stored (retry it with the same client_msg_id)."""
    metrics.RATE_LIMITED.labels(metrics.LIMIT_STORE_OVERLOADED).inc()
    return ApiError(
        503,
        ErrorCode.OVERLOADED,
        "server busy: the message was not stored; retry it with the same client_msg_id",
        {"retry_after": 1},
    )


def invalid_input(message: str, **details: Any) -> ApiError:
    return ApiError(422, ErrorCode.VALIDATION_ERROR, message, details or None)


def party_filter(who: Sender) -> dict[str, Any]:
    field = "customer_id" if who.role == Role.CUSTOMER else "mitra_id"
    return {field: who.id}


async def party_session(who: Sender, session_id: PydanticObjectId) -> ChatSession:
    session = await load_session(session_id)
    if session.role_of(who.id) is None:
        raise session_not_found()
    return session


async def why_refused(who: Sender, session_id: PydanticObjectId, action: str) -> ApiError:
    """After a conditional update matched nothing: 404 for non-parties, else 409 + state."""
    session = await load_session(session_id)
    if session.role_of(who.id) is None:
        return session_not_found()
    return invalid_state(session, action)
