"""A loopback TCP proxy that can be cut and restored, to make a database unreachable.

`cut()` stops listening (new connections are refused) and drops every open connection;
`restore()` listens again on the same port. `delay` (seconds, settable at any time) holds
back every chunk sent upstream: a slow link to the database. It runs its own event loop in
a thread, so both sync and async tests can drive it.
"""

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from pymongo.uri_parser import parse_uri

from halochat.launch import free_port


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.delay = 0.0

    @classmethod
    def for_mongodb(cls, uri: str) -> "TcpProxy":
        """A proxy to the (first) host of a mongodb:// URI; proxied_uri() reaches it."""
        host, port = parse_uri(uri)["nodelist"][0]
        proxy = cls(host, port)
        proxy.upstream_uri = uri
        return proxy

    upstream_uri = ""

    def proxied_uri(self) -> str:
        """upstream_uri with its hosts replaced by this proxy (credentials and options kept),
        connecting directly to that one node."""
        rest = self.upstream_uri.split("://", 1)[1]
        hosts, _, tail = rest.partition("/")
        userinfo = hosts.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        path, _, query = tail.partition("?")
        options = [o for o in query.split("&") if o and not o.startswith("directConnection=")]
        options.append("directConnection=true")
        return f"mongodb://{netloc}/{path}?{'&'.join(options)}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> "TcpProxy":
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # RST: the client sees the connection drop at once
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._writers |= pair
        try:
            await asyncio.gather(
                _pump(reader, up_writer, lambda: self.delay), _pump(up_reader, writer)
            )
        finally:
            self._writers -= pair
            for w in pair:
                w.transport.abort()


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: Callable[[], float] | None = None,
) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            if delay is not None and (seconds := delay()) > 0:
                await asyncio.sleep(seconds)
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
