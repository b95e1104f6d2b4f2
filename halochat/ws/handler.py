"""The /ws endpoint: authenticate, register the connection, read and dispatch frames.

Bad input gets an error frame and the connection stays open; only auth failures close it.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError
from sanic import Request, Websocket
from websockets.exceptions import ConnectionClosedOK

from halochat.auth import (
    CLOSE_AUTH_FAILED,
    Identity,
    bearer_token,
    recheck,
    verify,
    ws_close_code,
)
from halochat.constants import ClientFrame, ErrorCode, ServerFrame
from halochat.domain.messaging import received_at
from halochat.errors import ApiError, database_unavailable, duplicate_key, validation_error
from halochat.json_input import load_object
from halochat.observability import logs, metrics
from halochat.services import Services
from halochat.ws.hub import Connection, encode
from halochat.ws.protocol import AppStateIn, ClientEnvelope
from halochat.ws.read_gate import ReadGate
from halochat.ws.registry import HANDLERS, AckThen

log = logging.getLogger(__name__)

AUTH_FRAME_TIMEOUT = 10.0
CLOSE_TOO_MANY_SOCKETS = 4429  # the user has settings.ws_max_sockets_per_user sockets open
INBOX_SIZE = 256  # frames read but not yet handled, per connection
INBOX_MAX_BYTES = 256 * 1024  # and their raw size: past either bound -> rate_limited
READ_STALL_SECONDS = 5.0  # recv() wake-up on an idle socket (drift reset of the read gate)

SEND_TYPE = ClientFrame.SEND.value

_workers: set[asyncio.Task[None]] = set()


def error_frame(err: ApiError, frame_id: str | None) -> dict[str, Any]:
    metrics.WS_REFUSED_FRAMES.labels(err.code.value).inc()  # every error frame is built here
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


def frame_bytes(text: str | bytes) -> int:
    """Size of a frame in bytes (a text frame's UTF-8 encoding), as the limit counts it."""
    if isinstance(text, bytes):
        return len(text)
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _parse(services: Services, text: str | bytes, size: int | None = None) -> ClientEnvelope:
    return _validate(_load(services, text, size))


def _load(services: Services, text: str | bytes, size: int | None = None) -> dict[str, Any]:
    limit = services.settings.ws_max_frame_bytes
    if (frame_bytes(text) if size is None else size) > limit:
        raise ApiError(
            413, ErrorCode.PAYLOAD_TOO_LARGE, "frame too large", {"max_bytes": limit}
        )
    return load_object(text, "frame")


def _validate(raw: dict[str, Any]) -> ClientEnvelope:
    try:
        return ClientEnvelope.model_validate(raw)
    except ValidationError as exc:
        raise FrameError(validation_error(exc), _readable_id(raw)) from exc


async def _authenticate_socket(services: Services, request: Request, ws: Websocket) -> Identity:
    """Token from the Authorization header, the `token` query parameter, or a first
    {"type": "auth", "data": {"token": ...}} frame for clients that cannot set headers."""
    token = bearer_token(request) or request.args.get("token")
    if token:
        return await verify(services.settings, token)
    try:
        first = await asyncio.wait_for(ws.recv(), AUTH_FRAME_TIMEOUT)
    except TimeoutError as exc:
        raise ApiError(401, ErrorCode.AUTH_REQUIRED, "no auth frame received") from exc
    if first is None:
        raise ApiError(401, ErrorCode.AUTH_REQUIRED, "connection closed before auth")
    env = _parse(services, first)
    if env.type != ClientFrame.AUTH or not isinstance(env.data.get("token"), str):
        raise ApiError(401, ErrorCode.AUTH_REQUIRED, "first frame must be an auth frame")
    return await verify(services.settings, env.data["token"])


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
    started = time.perf_counter()
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
    if frame_type == ClientFrame.SEND:
        metrics.SEND_ACK_SECONDS.observe(time.perf_counter() - started)


def _token_expired() -> ApiError:
    return ApiError(401, ErrorCode.TOKEN_EXPIRED, "token expired")


async def _frames(ws: Websocket, gate: ReadGate | None) -> AsyncIterator[str | bytes]:
    """The socket's frames, with TCP backpressure on a client that sends faster than they are
    read (halochat/ws/read_gate.py)."""
    while True:
        try:
            # With a gate, wake up now and then: if nothing complete is pending while reading
            # is paused, the gate's count has drifted (control frames) and is reset.
            text = await ws.recv(READ_STALL_SECONDS if gate is not None else None)
        except ConnectionClosedOK:
            return
        if text is None:
            if gate is None:
                return
            gate.resume(reset=True)
            continue
        if gate is not None:
            gate.consumed(frame_bytes(text))
        yield text


def _too_many() -> ApiError:
    return ApiError(
        429, ErrorCode.RATE_LIMITED, "too many frames awaiting an answer; retry shortly"
    )


# An inbox entry: the frame (or the error frame answering an unreadable one), its size, its
# arrival (event-loop time), and whether it is a send counted by the admission.
InboxEntry = tuple[ClientEnvelope | dict[str, Any], int, float, bool]


async def _work(
    services: Services,
    conn: Connection,
    inbox: "asyncio.Queue[InboxEntry | None]",
    inbox_bytes: list[int],
    own_sends: list[int],
) -> None:
    loop = asyncio.get_running_loop()
    while (entry := await inbox.get()) is not None:
        item, size, arrived, admitted = entry
        inbox_bytes[0] -= size
        try:
            await _handle(services, conn, item, arrived)
        finally:
            if admitted:
                own_sends[0] -= 1
                services.send_admission.answered(loop.time() - arrived)


async def _handle(
    services: Services, conn: Connection, item: ClientEnvelope | dict[str, Any], arrived: float
) -> None:
    if not isinstance(item, ClientEnvelope):  # an error frame for an unreadable frame
        conn.send(item)
        return
    if conn.closed:  # closed by the server (auth ended): no frame runs after that
        return
    if conn.token_expired():  # its 4401 close is due: nothing runs on an expired token
        conn.send(error_frame(_token_expired(), item.id))
        return
    received_at.set(arrived)  # a send's answer time counts from its arrival
    try:
        await _dispatch(services, conn, item)
    except DuplicateKeyError as exc:  # as over HTTP (halochat/errors.py)
        conn.send(error_frame(duplicate_key(exc), item.id))
    except Exception as exc:  # never drop a connection for one bad frame
        if (unavailable := database_unavailable(exc)) is not None:
            log.warning("database unavailable (%s): %s", item.type, type(exc).__name__)
            conn.send(error_frame(unavailable, item.id))
            return
        log.exception("frame handler crashed (%s)", item.type)
        conn.send(error_frame(ApiError(500, ErrorCode.INTERNAL, "internal error"), item.id))


async def _recheck(conn: Connection, identity: Identity) -> None:
    """A disable or revoke that landed while this socket authenticated found no socket to
    close: look once more now that it is registered."""
    try:
        await recheck(identity)
    except ApiError as err:
        await conn.close(ws_close_code(err), err.code.value, error_frame(err, None))
    except Exception:  # best effort: the token was verified a moment ago
        log.exception("re-checking the user of a new socket failed")


async def websocket_endpoint(request: Request, ws: Websocket) -> None:
    services: Services = request.app.ctx.services
    # This connection's log lines (and its worker's, which inherits the context) carry it.
    logs.conn_id.set(logs.new_id())
    try:
        identity = await _authenticate_socket(services, request, ws)
    except Exception as exc:
        if (unavailable := database_unavailable(exc)) is not None:
            err = unavailable  # a 503: ws_close_code answers 1013, keep the token
        elif isinstance(exc, ApiError):
            err = exc
        else:
            raise
        with contextlib.suppress(Exception):
            await ws.send(encode(error_frame(err, None)))
            await ws.close(code=ws_close_code(err), reason=err.code.value)
        return
    user = identity.user
    conn = Connection(
        ws=ws,
        user_id=user.id,
        role=user.role,
        device_id=request.args.get("device_id"),
        expires_at=identity.expires_at,
        token_issued_at=identity.issued_at,
    )
    if not services.hub.add(conn):
        metrics.RATE_LIMITED.labels(metrics.LIMIT_WS_SOCKETS).inc()
        err = ApiError(
            429,
            ErrorCode.TOO_MANY_CONNECTIONS,
            "too many open connections for this user; close one and retry",
            {"max_sockets": services.hub.max_sockets_per_user},
        )
        with contextlib.suppress(Exception):
            await ws.send(encode(error_frame(err, None)))
            await ws.close(code=CLOSE_TOO_MANY_SOCKETS, reason=err.code.value)
        return
    if services.cluster is not None:  # cluster mode: this process hears the user's events
        await services.cluster.attach(conn)
    expired = _token_expired()
    conn.close_at(
        identity.expires_at, CLOSE_AUTH_FAILED, expired.code.value, error_frame(expired, None)
    )
    log.info("connected: user %s (%s), device %s", user.id, user.role.value, conn.device_id)
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
    inbox: asyncio.Queue[InboxEntry | None] = asyncio.Queue(INBOX_SIZE)
    admission = services.send_admission
    loop = asyncio.get_running_loop()
    inbox_bytes = [0]  # raw size of the frames in the inbox (bounded like their number)
    own_sends = [0]  # this socket's admitted sends not yet answered (its share of the bound)
    worker = asyncio.create_task(
        _work(services, conn, inbox, inbox_bytes, own_sends), name=f"ws-worker-{user.id}"
    )
    _workers.add(worker)  # a strong reference until it ends (asyncio keeps only weak ones)
    worker.add_done_callback(_workers.discard)
    try:
        await _recheck(conn, identity)
        protocol_max = request.app.config.WEBSOCKET_MAX_SIZE
        gate = ReadGate.install(ws, high=2 * protocol_max, low=protocol_max + 64)
        async for text in _frames(ws, gate):
            if conn.closed:  # dropped as too slow: the transport is being aborted
                break
            item: ClientEnvelope | dict[str, Any]
            size = frame_bytes(text)
            admitted = False
            try:
                raw = _load(services, text, size)
                if raw.get("type") == SEND_TYPE:
                    # Shed at admission: refused now, before any other work, when the
                    # sends under way already fill what the server answers in time.
                    if not admission.admit(own_sends[0]):
                        conn.send_encoded(admission.refusal(_readable_id(raw)))
                        continue
                    admitted = True
                    own_sends[0] += 1
                item = _validate(raw)
            except FrameError as err:
                item = error_frame(err, err.frame_id)
            except ApiError as err:
                item = error_frame(err, None)
            if not isinstance(item, ClientEnvelope):
                size = 0  # only the error frame is kept
            try:
                if inbox_bytes[0] + size > INBOX_MAX_BYTES:
                    raise asyncio.QueueFull
                inbox.put_nowait((item, size, loop.time(), admitted))
            except asyncio.QueueFull:
                if admitted:
                    own_sends[0] -= 1
                    admission.answered(None)
                metrics.RATE_LIMITED.labels(metrics.LIMIT_WS_INBOX).inc()
                frame_id = item.id if isinstance(item, ClientEnvelope) else None
                conn.send(error_frame(_too_many(), frame_id))
                continue
            inbox_bytes[0] += size
    finally:
        # No await before hub.remove: Sanic may cancel this task once the socket is gone.
        # The client is gone, so frames it got no answer for are dropped (the app retries
        # them; client_msg_id keeps a retried send single); the frame in hand completes.
        while not inbox.empty():
            if (entry := inbox.get_nowait()) is not None and entry[3]:
                own_sends[0] -= 1
                admission.answered(None)
        inbox.put_nowait(None)
        log.info("disconnected: user %s", user.id)
        await services.hub.remove(conn)
        if services.cluster is not None:
            await services.cluster.detach(conn)
