"""Chat frames: message.send, receipt, typing, hello (docs/protocol.md, "Chat")."""

from typing import Annotated, Any

from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field

from halochat.constants import ClientFrame, ErrorCode, ReceiptKind, TypingState
from halochat.domain import messaging
from halochat.domain.messaging import Sender
from halochat.inputs import INT64_MAX, Line, Text, object_id
from halochat.services import Services
from halochat.views import message_view
from halochat.ws.hub import Connection
from halochat.ws.registry import AckThen, on
from halochat.ws.resync import plan_hello, resync

# Strict: a number where text is expected (or the reverse) is a 422, not silently coerced.
_STRICT = ConfigDict(extra="forbid", strict=True)


class SendFrame(BaseModel):
    model_config = _STRICT

    session_id: str
    client_msg_id: Line = Field(max_length=64)
    body: Text  # length is checked after trimming (messaging.send_message)


class ReceiptFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(strict=True)
    kind: ReceiptKind
    seq: int = Field(strict=True, ge=1, le=INT64_MAX)


class TypingFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(strict=True)
    state: TypingState


class HelloFrame(BaseModel):
    model_config = _STRICT

    # session id -> the last seq the client has (0: none yet).
    sessions: dict[str, Annotated[int, Field(ge=0, le=INT64_MAX)]] = Field(default_factory=dict)


def _session_id(value: str) -> PydanticObjectId:
    return object_id(value, ErrorCode.SESSION_NOT_FOUND, "session")


def _sender(conn: Connection) -> Sender:
    return Sender(conn.user_id, conn.role)


@on(ClientFrame.SEND)
async def send(services: Services, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    frame = SendFrame.model_validate(data)
    result = await messaging.send_message(
        services,
        _sender(conn),
        _session_id(frame.session_id),
        frame.client_msg_id,
        frame.body,
        origin=conn,
    )
    return {"message": message_view(result.message), "replayed": result.replayed}


@on(ClientFrame.RECEIPT)
async def receipt(services: Services, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    frame = ReceiptFrame.model_validate(data)
    return await messaging.receipt(
        services,
        _sender(conn),
        _session_id(frame.session_id),
        frame.kind,
        frame.seq,
        origin=conn,
    )


@on(ClientFrame.TYPING)
async def typing(services: Services, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    frame = TypingFrame.model_validate(data)
    forwarded = await messaging.typing(
        services, _sender(conn), _session_id(frame.session_id), frame.state
    )
    return {"forwarded": forwarded}


@on(ClientFrame.HELLO)
async def hello(services: Services, conn: Connection, data: dict[str, Any]) -> AckThen:
    frame = HelloFrame.model_validate(data)
    plan = plan_hello(frame.sessions)

    async def run(send_ack: Any) -> None:
        sequencer = services.cluster.sequencer if services.cluster is not None else None
        await resync(conn, plan, send_ack, sequencer)

    return AckThen({"sessions": len(frame.sessions)}, run)
