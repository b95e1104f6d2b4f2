"""The /ws endpoint: authenticate, register the connection, read and dispatch frames.

Bad input gets an error frame and the connection stays open; only auth failures close it.
"""

import asyncio
import contextlib
import logging
from typing import Any

from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError
from sanic import Request, Websocket

from halochat.auth import authenticate, bearer_token
from halochat.constants import ClientFrame, ErrorCode, ServerFrame
from halochat.documents import User
from halochat.errors import ApiError, database_unavailable, duplicate_key, validation_error
from halochat.json_input import load_object
from halochat.services import Services
from halochat.ws.hub import Connection, encode
from halochat.ws.protocol import AppStateIn, ClientEnvelope
from halochat.ws.registry import HANDLERS, AckThen

log = logging.getLogger(__name__)

AUTH_FRAME_TIMEOUT = 10.0
CLOSE_AUTH_FAILED = 4401  # private-use close code: the app should refresh its token
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 registry: the database was unavailable at connect
INBOX_SIZE = 256  # frames read but not yet handled, per connection

_workers: set[asyncio.Task[None]] = set()


def error_frame(err: ApiError, frame_id: str | None) -> dict[str, Any]:
    return {"type": ServerFrame.ERROR.value, "id": frame_id, "error": err.to_dict()}


def ack_frame(frame_id: str | None, data: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": ServerFrame.ACK.value, "id": frame_id, "data": data or {}}


class FrameError(ApiError):
    """An invalid frame; `frame_id` is its id when that much was readable, for the echo."""

    def __init__(self, err: ApiError, frame_id: str | None) -> None:
        super().__init__(err.status, err.code, err.message, err.details)
        self.frame_id = frame_id


def _readable_id(raw: dict[str, Any]) -> str | None:
    frame_id = raw.get("id")
    return frame_id if isinstance(frame_id, str) and 1 <= len(frame_id) <= 64 else None


def _parse(services: Services, text: str | bytes) -> ClientEnvelope:
    if len(text) > services.settings.ws_max_frame_bytes:
        raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, "frame too large")
    raw = load_object(text, "frame")
    try:
        return ClientEnvelope.model_validate(raw)
    except ValidationError as exc:
        raise FrameError(validation_error(exc), _readable_id(raw)) from exc


async def _authenticate_socket(services: Services, request: Request, ws: Websocket) -> User:
    """Token from the Authorization header, the `token` query parameter, or a first
    {"type": "auth", "data": {"token": ...}} frame for clients that cannot set headers."""
    token = bearer_token(request) or request.args.get("token")
    if token:
        return await authenticate(services.settings, token)
    try:
        first = await asyncio.wait_for(ws.recv(), AUTH_FRAME_TIMEOUT)
    except TimeoutError as exc:
        raise ApiError(401, ErrorCode.AUTH_REQUIRED, "no auth frame received") from exc
    if first is None:
        raise ApiError(401, ErrorCode.AUTH_REQUIRED, "connection closed before auth")
    env = _parse(services, first)
    if env.type != ClientFrame.AUTH or not isinstance(env.data.get("token"), str):
        raise ApiError(401, ErrorCode.AUTH_REQUIRED, "first frame must be an auth frame")
    return await authenticate(services.settings, env.data["token"])


async def _dispatch(services: Services, conn: Connection, env: ClientEnvelope) -> None:
    try:
        frame_type = ClientFrame(env.type)
    except ValueError:
        conn.send(
            error_frame(
                ApiError(400, ErrorCode.UNKNOWN_FRAME, f"unknown frame type {env.type!r}"), env.id
            )
        )
        return
    if frame_type == ClientFrame.PING:
        conn.send({"type": ServerFrame.PONG.value, "id": env.id, "data": {}})
        return
    if frame_type == ClientFrame.APP_STATE:
        try:
            conn.app_state = AppStateIn.model_validate(env.data).state
        except ValidationError as exc:
            conn.send(error_frame(validation_error(exc), env.id))
            return
        conn.send(ack_frame(env.id, {"state": conn.app_state.value}))
        return
    handler = HANDLERS.get(frame_type)
    if handler is None:
        err = ApiError(400, ErrorCode.UNKNOWN_FRAME, f"frame type {env.type!r} not accepted here")
        conn.send(error_frame(err, env.id))
        return
    try:
        result = await handler(services, conn, env.data)
    except ApiError as err:
        conn.send(error_frame(err, env.id))
        return
    except ValidationError as exc:
        conn.send(error_frame(validation_error(exc), env.id))
        return
    if isinstance(result, AckThen):
        await result.run(lambda: conn.send(ack_frame(env.id, result.data)))
        return
    conn.send(ack_frame(env.id, result))


def _too_many() -> ApiError:
    return ApiError(
        429, ErrorCode.RATE_LIMITED, "too many frames awaiting an answer; retry shortly"
    )


async def _work(
    services: Services,
    conn: Connection,
    inbox: "asyncio.Queue[ClientEnvelope | dict[str, Any] | None]",
) -> None:
    while (item := await inbox.get()) is not None:
        if not isinstance(item, ClientEnvelope):  # an error frame for an unreadable frame
            conn.send(item)
            continue
        try:
            await _dispatch(services, conn, item)
        except DuplicateKeyError as exc:  # as over HTTP (halochat/errors.py)
            conn.send(error_frame(duplicate_key(exc), item.id))
        except Exception as exc:  # never drop a connection for one bad frame
            if (unavailable := database_unavailable(exc)) is not None:
                log.warning("database unavailable (%s): %s", item.type, type(exc).__name__)
                conn.send(error_frame(unavailable, item.id))
                continue
            log.exception("frame handler crashed (%s)", item.type)
            conn.send(error_frame(ApiError(500, ErrorCode.INTERNAL, "internal error"), item.id))


async def websocket_endpoint(request: Request, ws: Websocket) -> None:
    services: Services = request.app.ctx.services
    try:
        user = await _authenticate_socket(services, request, ws)
    except Exception as exc:
        close_code = CLOSE_AUTH_FAILED
        if (unavailable := database_unavailable(exc)) is not None:
            err, close_code = unavailable, CLOSE_TRY_AGAIN_LATER
        elif isinstance(exc, ApiError):
            err = exc
        else:
            raise
        with contextlib.suppress(Exception):
            await ws.send(encode(error_frame(err, None)))
            await ws.close(code=close_code, reason=err.code.value)
        return
    conn = Connection(
        ws=ws,
        user_id=user.id,
        role=user.role,
        display_name=user.display_name,
        device_id=request.args.get("device_id"),
    )
    services.hub.add(conn)
    conn.send(
        {
            "type": ServerFrame.READY.value,
            "data": {
                "user_id": str(user.id),
                "role": user.role.value,
                "display_name": user.display_name,
            },
        }
    )
    # Frames are read by this task and handled in order by a worker, so that while a handler
    # waits on the database Sanic keeps reading the socket (and its keepalive pongs). A client
    # that runs too far ahead gets rate_limited errors instead of a timed-out connection.
    inbox: asyncio.Queue[ClientEnvelope | dict[str, Any] | None] = asyncio.Queue(INBOX_SIZE)
    worker = asyncio.create_task(_work(services, conn, inbox), name=f"ws-worker-{user.id}")
    _workers.add(worker)  # a strong reference until it ends (asyncio keeps only weak ones)
    worker.add_done_callback(_workers.discard)
    try:
        async for text in ws:
            item: ClientEnvelope | dict[str, Any]
            try:
                item = _parse(services, text)
            except FrameError as err:
                item = error_frame(err, err.frame_id)
            except ApiError as err:
                item = error_frame(err, None)
            try:
                inbox.put_nowait(item)
            except asyncio.QueueFull:
                frame_id = item.id if isinstance(item, ClientEnvelope) else None
                conn.send(error_frame(_too_many(), frame_id))
    finally:
        # No await before hub.remove: Sanic may cancel this task once the socket is gone.
        # The client is gone, so frames it got no answer for are dropped (the app retries
        # them; client_msg_id keeps a retried send single); the frame in hand completes.
        while not inbox.empty():
            inbox.get_nowait()
        inbox.put_nowait(None)
        await services.hub.remove(conn)
