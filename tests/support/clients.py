"""Real clients for tests: HTTP (httpx) and WebSocket (websockets) against a live server."""

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

_ids = itertools.count(1)


@dataclass
class Actor:
    """A user of the running server: id, role, name and bearer token."""

    id: str
    role: str
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class WsClient:
    """A WebSocket client that buffers frames so tests can wait for a given one."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []
        self._cond = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, ws_url: str, actor: Actor | None = None, *, query: str = "", auth_frame: bool = False
    ) -> "WsClient":
        headers = actor.headers if (actor and not auth_frame and not query) else None
        url = ws_url + (f"?{query}" if query else "")
        conn = await connect(url, additional_headers=headers, max_size=None, open_timeout=10)
        client = cls(conn)
        if auth_frame and actor is not None:
            await client.send({"type": "auth", "data": {"token": actor.token}})
        return client

    async def _read(self) -> None:
        try:
            async for text in self.conn:
                frame = json.loads(text)
                async with self._cond:
                    self.frames.append(frame)
                    self._cond.notify_all()
        except Exception:
            pass
        finally:
            async with self._cond:
                self._cond.notify_all()

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def wait_for(self, type_: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """Waits for (and consumes) the first frame of `type_` whose data matches `match`."""

        def find() -> dict[str, Any] | None:
            for i, f in enumerate(self.frames):
                data = f.get("data") or {}
                if f.get("type") == type_ and all(data.get(k) == v for k, v in match.items()):
                    return self.frames.pop(i)
            return None

        async with asyncio.timeout(timeout):
            async with self._cond:
                while (found := find()) is None:
                    if self._reader.done():
                        raise ConnectionError(f"closed while waiting for {type_}: {self.frames}")
                    await self._cond.wait()
                return found

    def pending(self, type_: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == type_]

    async def request(
        self, type_: str, data: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Sends a frame with an id; returns its ack or error frame."""
        frame_id = f"r{next(_ids)}"
        await self.send({"type": type_, "id": frame_id, "data": data or {}})

        def find() -> dict[str, Any] | None:
            for i, f in enumerate(self.frames):
                if f.get("id") == frame_id and f.get("type") in ("ack", "error", "pong"):
                    return self.frames.pop(i)
            return None

        async with asyncio.timeout(timeout):
            async with self._cond:
                while (found := find()) is None:
                    if self._reader.done():
                        raise ConnectionError(f"closed while waiting for answer to {type_}")
                    await self._cond.wait()
                return found

    async def answers(
        self, id_prefix: str, count: int, timeout: float = 60.0
    ) -> dict[str, dict[str, Any]]:
        """Collects the ack/error answers to `count` frames whose ids start with `id_prefix`
        (sent without waiting), by id; a frame answered twice fails the test."""
        found: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(timeout):
            while len(found) < count:
                for f in list(self.frames):
                    if f.get("type") in ("ack", "error") and str(f.get("id", "")).startswith(
                        id_prefix
                    ):
                        self.frames.remove(f)
                        assert f["id"] not in found, "two answers to one frame"
                        found[f["id"]] = f
                await asyncio.sleep(0.05)
        return found

    async def close(self) -> None:
        await self.conn.close()
        self._reader.cancel()


@asynccontextmanager
async def sockets(target: Any, *actors: Actor) -> AsyncIterator[list[WsClient]]:
    """One ready WebSocket per actor (`target`: a ws URL or anything with `.ws_url`),
    closed on exit."""
    url = target if isinstance(target, str) else target.ws_url
    clients = [await WsClient.open(url, a) for a in actors]
    try:
        for c in clients:
            await c.wait_for("ready")
        yield clients
    finally:
        for c in clients:
            await c.close()


def api(base_url: str, actor: Actor | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url, headers=actor.headers if actor else None, timeout=15.0
    )
