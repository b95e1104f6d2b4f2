"""Registry of live WebSocket connections and ordered, non-blocking delivery to them.

Each connection has an outbound queue bounded in bytes, drained by one writer task, so frames
reach a device in the order they were enqueued and one slow device never stalls a sender; a
device whose queue would pass the bound is disconnected (transport aborted, queue freed).
"""

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from beanie import PydanticObjectId

from halochat.constants import AppState, Role, ServerFrame
from halochat.documents.common import utcnow
from halochat.observability import metrics

log = logging.getLogger(__name__)

OUTBOUND_MAX_BYTES = 1024 * 1024  # default of settings.ws_outbound_max_bytes
CLOSE_TOO_SLOW = 1013  # "try again later": the device resyncs with hello on reconnect


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame, default=str).decode()


def abort(ws: Any) -> None:
    """Drops the TCP connection at once. A close handshake would wait behind the blocked
    writer of a client that does not read; aborting frees the transport's buffers now."""
    transport = getattr(getattr(ws, "io_proto", None), "transport", None)
    if transport is not None:
        transport.abort()


@dataclass(eq=False)
class Connection:
    ws: Any  # sanic.server.websockets.impl.WebsocketImplProtocol
    user_id: PydanticObjectId
    role: Role
    device_id: str | None = None
    app_state: AppState = AppState.FOREGROUND
    max_bytes: int = OUTBOUND_MAX_BYTES
    writer: asyncio.Task[None] | None = None
    closed: bool = False
    # session id -> first message seq this device received live; a later hello replay
    # stops below it, so no message reaches a device twice (halochat/ws/resync.py).
    live_from_seq: dict[PydanticObjectId, int] = field(default_factory=dict)
    # The authenticating token's life: the socket closes at expires_at; an admin's token
    # revocation closes sockets whose token was issued at or before it.
    expires_at: datetime | None = None
    token_issued_at: datetime | None = None
    _close_timer: asyncio.TimerHandle | None = None
    _closer: asyncio.Task[None] | None = None
    # Outbound frames (text, size in UTF-8 bytes), written in order by one writer task.
    # queued_bytes counts them until written, the one being written included.
    _out: deque[tuple[str, int]] = field(default_factory=deque)
    queued_bytes: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

    def start(self) -> None:
        self.writer = asyncio.create_task(self._drain(), name=f"ws-writer-{self.user_id}")

    async def _drain(self) -> None:
        while True:
            while not self._out:
                if self._stopping or self.closed:
                    return
                self._wake.clear()
                await self._wake.wait()
            text, size = self._out.popleft()
            try:
                await self.ws.send(text)
            except Exception:  # connection gone; the reader side cleans up
                self._release()
                return
            self.queued_bytes -= size
            self._wake.set()  # wakes send_wait callers waiting for room

    def _release(self) -> None:
        self.closed = True
        self._out.clear()
        self.queued_bytes = 0
        self._wake.set()

    def drop(self, why: str) -> None:
        """Disconnects a device that does not keep up and frees what was queued for it."""
        if self.closed:
            return
        log.warning("dropping %s connection of user %s", why, self.user_id)
        metrics.RATE_LIMITED.labels(metrics.LIMIT_WS_SLOW_READER).inc()
        self._release()
        abort(self.ws)
        if self.writer is not None and self.writer is not asyncio.current_task():
            self.writer.cancel()

    def _enqueue(self, frame: dict[str, Any]) -> tuple[str, int]:
        data = orjson.dumps(frame, default=str)
        return data.decode(), len(data)

    def send(self, frame: dict[str, Any]) -> bool:
        """Enqueue a frame; False if the connection is closed. A device whose queued
        frames would pass max_bytes is disconnected (it resyncs with hello on reconnect).
        One frame is always accepted into an empty queue, so a large answer (a sync of many
        sessions) cannot lock a device out; the bound is max_bytes plus one frame."""
        if self.closed:
            return False
        return self.send_encoded(*self._enqueue(frame))

    def send_encoded(self, text: str, size: int | None = None) -> bool:
        """`send` for a frame already encoded (`size`: its UTF-8 length when known)."""
        if self.closed:
            return False
        if size is None:
            size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if self.queued_bytes and self.queued_bytes + size > self.max_bytes:
            self.drop("slow")
            return False
        self._out.append((text, size))
        self.queued_bytes += size
        self._wake.set()
        return True

    async def send_wait(self, frame: dict[str, Any], timeout: float = 10.0) -> bool:
        """Enqueue with backpressure (long replays): waits for room under half the bound;
        a device that does not drain within `timeout` is dropped like a slow one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed and self.queued_bytes > self.max_bytes // 2:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
            except TimeoutError:
                self.drop("stalled")
                return False
        return self.send(frame)

    def note_live(self, frame: dict[str, Any]) -> None:
        """Remembers the first seq of each session this device got live (a message.new sent,
        or acked to it as the sender), so a later hello replay stops below it
        (halochat/ws/resync.py) and no message reaches a device twice."""
        if frame.get("type") == ServerFrame.MESSAGE.value:
            data = frame["data"]
            session_id = PydanticObjectId(data["session_id"])
            self.live_from_seq.setdefault(session_id, data["message"]["seq"])

    def token_expired(self) -> bool:
        return self.expires_at is not None and utcnow() >= self.expires_at

    async def close(self, code: int, reason: str, frame: dict[str, Any] | None = None) -> None:
        """Server-side close after a last frame (flushed first, at most 1 s); the reader loop
        then ends and the handler removes the connection from the hub."""
        if self.closed:
            return
        if frame is not None:
            self.send(frame)
        await self.stop()
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, reason=reason)

    def close_at(self, when: datetime, code: int, reason: str, frame: dict[str, Any]) -> None:
        """Closes at `when` (token expiry) even if the client sends nothing until then."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, (when - utcnow()).total_seconds())

        def fire() -> None:
            self._closer = loop.create_task(self.close(code, reason, frame))

        self._close_timer = loop.call_later(delay, fire)

    async def stop(self) -> None:
        self.closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._stopping = True
        self._wake.set()
        if self.writer is not None:
            # Give queued frames a moment to flush, then cancel.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.writer), 1.0)
            self.writer.cancel()
        self._release()


MAX_SOCKETS_PER_USER = 10  # default of settings.ws_max_sockets_per_user


class Hub:
    def __init__(
        self,
        max_bytes: int = OUTBOUND_MAX_BYTES,
        max_sockets_per_user: int = MAX_SOCKETS_PER_USER,
    ) -> None:
        self._by_user: dict[PydanticObjectId, set[Connection]] = defaultdict(set)
        self.max_bytes = max_bytes
        self.max_sockets_per_user = max_sockets_per_user

    def add(self, conn: Connection) -> bool:
        """Registers and starts the connection; False (nothing registered) when the user
        already has max_sockets_per_user sockets: the new one is refused, the others stay."""
        conns = self._by_user[conn.user_id]
        if len(conns) >= self.max_sockets_per_user:
            if not conns:
                del self._by_user[conn.user_id]
            return False
        conn.max_bytes = self.max_bytes
        conns.add(conn)
        conn.start()
        return True

    async def remove(self, conn: Connection) -> None:
        conns = self._by_user.get(conn.user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_user[conn.user_id]
        await conn.stop()

    def connections(self, user_id: PydanticObjectId) -> list[Connection]:
        return [c for c in self._by_user.get(user_id, ()) if not c.closed]

    def send_to_user(
        self, user_id: PydanticObjectId, frame: dict[str, Any], except_conn: object = None
    ) -> int:
        """Sends to every live device of the user but `except_conn` (the sender's device,
        which gets an ack instead, yet counts as having seen the frame live); returns how many
        got it in the foreground."""
        foreground = 0
        for conn in self.connections(user_id):
            if conn is not except_conn and conn.send(frame):
                foreground += conn.app_state == AppState.FOREGROUND
            conn.note_live(frame)
        return foreground

    async def close_user(
        self,
        user_id: PydanticObjectId,
        code: int,
        reason: str,
        frame: dict[str, Any],
        *,
        issued_until: datetime | None = None,
    ) -> int:
        """Closes the user's live sockets (only those whose token was issued at or before
        `issued_until`, when given) after `frame`; returns how many."""
        conns = [
            c
            for c in self.connections(user_id)
            if issued_until is None
            or c.token_issued_at is None
            or c.token_issued_at <= issued_until
        ]
        await asyncio.gather(*(c.close(code, reason, frame) for c in conns))
        return len(conns)

    def all_connections(self) -> list[Connection]:
        return [c for conns in self._by_user.values() for c in conns if not c.closed]

    def queued_bytes(self) -> int:
        """Bytes queued for all sockets (what slow readers can make the server hold)."""
        return sum(c.queued_bytes for conns in self._by_user.values() for c in conns)

    @property
    def socket_count(self) -> int:
        return sum(len(c) for c in self._by_user.values())

    async def close_all(self) -> None:
        for conns in list(self._by_user.values()):
            for conn in list(conns):
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=1001, reason="server shutting down")
                await self.remove(conn)
