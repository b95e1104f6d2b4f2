"""Registry of live WebSocket connections and ordered, non-blocking delivery to them.

Each connection has a bounded outbound queue drained by one writer task, so frames reach a
device in the order they were enqueued and one slow device never stalls a sender.
"""

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from beanie import PydanticObjectId

from halochat.constants import AppState, Role
from halochat.documents.common import utcnow

log = logging.getLogger(__name__)

OUTBOUND_QUEUE_SIZE = 1000  # a device this far behind is dropped; it resyncs on reconnect


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame, default=str).decode()


@dataclass(eq=False)
class Connection:
    ws: Any  # sanic.server.websockets.impl.WebsocketImplProtocol
    user_id: PydanticObjectId
    role: Role
    display_name: str
    device_id: str | None = None
    app_state: AppState = AppState.FOREGROUND
    queue: asyncio.Queue[str | None] = field(
        default_factory=lambda: asyncio.Queue(OUTBOUND_QUEUE_SIZE)
    )
    writer: asyncio.Task[None] | None = None
    closed: bool = False
    # session id -> first message seq this device received live; a later hello replay
    # stops below it, so no message reaches a device twice (halochat/domain/messaging.py).
    live_from_seq: dict[PydanticObjectId, int] = field(default_factory=dict)
    # The authenticating token's life: the socket closes at expires_at; an admin's token
    # revocation closes sockets whose token was issued at or before it.
    expires_at: datetime | None = None
    token_issued_at: datetime | None = None
    _close_timer: asyncio.TimerHandle | None = None
    _closer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.writer = asyncio.create_task(self._drain(), name=f"ws-writer-{self.user_id}")

    async def _drain(self) -> None:
        while (text := await self.queue.get()) is not None:
            try:
                await self.ws.send(text)
            except Exception:  # connection gone; the reader side cleans up
                self.closed = True
                return

    def send(self, frame: dict[str, Any]) -> bool:
        """Enqueue a frame; False if the connection is closed or hopelessly behind."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(encode(frame))
        except asyncio.QueueFull:
            log.warning("dropping slow connection of user %s", self.user_id)
            self.closed = True
            asyncio.get_running_loop().create_task(self.ws.close(code=1013, reason="too slow"))
            return False
        return True

    async def send_wait(self, frame: dict[str, Any], timeout: float = 10.0) -> bool:
        """Enqueue with backpressure (long replays); a device that does not drain within
        `timeout` is dropped like a slow one."""
        if self.closed:
            return False
        try:
            await asyncio.wait_for(self.queue.put(encode(frame)), timeout)
        except TimeoutError:
            log.warning("dropping stalled connection of user %s", self.user_id)
            self.closed = True
            asyncio.get_running_loop().create_task(self.ws.close(code=1013, reason="too slow"))
            return False
        return True

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
        if self.writer is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)
            # Give queued frames a moment to flush, then cancel.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.writer), 1.0)
            self.writer.cancel()


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[PydanticObjectId, set[Connection]] = defaultdict(set)

    def add(self, conn: Connection) -> None:
        self._by_user[conn.user_id].add(conn)
        conn.start()

    async def remove(self, conn: Connection) -> None:
        conns = self._by_user.get(conn.user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_user[conn.user_id]
        await conn.stop()

    def connections(self, user_id: PydanticObjectId) -> list[Connection]:
        return [c for c in self._by_user.get(user_id, ()) if not c.closed]

    def is_online(self, user_id: PydanticObjectId) -> bool:
        return bool(self.connections(user_id))

    def send_to_user(self, user_id: PydanticObjectId, frame: dict[str, Any]) -> int:
        """Sends to every live device of the user; returns how many are in the foreground."""
        foreground = 0
        for conn in self.connections(user_id):
            if conn.send(frame) and conn.app_state == AppState.FOREGROUND:
                foreground += 1
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

    @property
    def socket_count(self) -> int:
        return sum(len(c) for c in self._by_user.values())

    async def close_all(self) -> None:
        for conns in list(self._by_user.values()):
            for conn in list(conns):
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=1001, reason="server shutting down")
                await self.remove(conn)
