"""TCP backpressure on a client that sends faster than the server reads its frames.

Sanic parses the bytes of a readable socket into frames at once (one pending task per chunk)
and pauses the socket only when a frame completes while nobody waits in recv(). Our reader
always waits there, so a client that floods big frames made the server hold everything it
sent (measured: 190 MB after 6 s from 10 sockets). The gate counts the bytes received and
not yet returned by recv() and pauses reading the socket past `high`, until the reader has
caught up below `low`; the kernel's TCP window then slows the sender.

Sanic hands each chunk's frames over in a task that waits until recv() takes them. When the
connection ends first, nobody ever takes them: Sanic (25.12) leaves those tasks pending for
the life of the process, holding the frames and the connection (measured: ~0.3 MB per
dropped flooding socket). The gate keeps its own references to them and cancels them when
the connection is lost.

This replaces `data_received`, `resume_frames` and `connection_lost` of Sanic's
WebsocketImplProtocol instance with versions that do what Sanic's do plus the above, using
its `ws_proto`, `async_data_received` and `io_proto.transport` (no public API offers any of
them); tests/test_limits.py covers it (test_flooding_client_is_held_back,
test_dropped_sockets_leave_nothing_pending) and `install` returns None when the shape is not
there, so a Sanic change degrades to no gate rather than an error.
"""

import asyncio
from collections.abc import Callable
from typing import Any

# WebSocket frame header of a client frame: 2 bytes, 4 of mask, 0/2/8 of extended length.
_MASK_AND_BASE = 6


def wire_bytes(payload: int) -> int:
    return payload + _MASK_AND_BASE + (0 if payload < 126 else 2 if payload < 65536 else 8)


# Frame hand-over tasks of all gated sockets not yet finished (GET /loadz: pending_reads).
_handovers: set[asyncio.Task[None]] = set()


def pending_handovers() -> int:
    return len(_handovers)


class ReadGate:
    def __init__(self, transport: Any, high: int, low: int) -> None:
        self._transport = transport
        self.high = high
        self.low = low
        self.backlog = 0  # bytes received, not yet handed to the reader (approximately)
        self.paused = False
        self.handovers: set[asyncio.Task[None]] = set()  # this socket's, not yet finished

    @classmethod
    def install(cls, ws: Any, high: int, low: int) -> "ReadGate | None":
        transport = getattr(getattr(ws, "io_proto", None), "transport", None)
        ws_proto = getattr(ws, "ws_proto", None)
        hand_over: Callable[[list[bytes], list[Any]], Any] | None = getattr(
            ws, "async_data_received", None
        )
        sanic_resume: Callable[[], bool] | None = getattr(ws, "resume_frames", None)
        sanic_lost: Callable[[Exception | None], None] | None = getattr(ws, "connection_lost", None)
        if (
            transport is None
            or ws_proto is None
            or hand_over is None
            or sanic_resume is None
            or sanic_lost is None
        ):
            return None
        gate = cls(transport, high, low)

        def data_received(data: bytes) -> None:
            # Sanic's data_received, with the hand-over task kept (see the module docstring).
            gate.backlog += len(data)
            ws_proto.receive_data(data)
            to_send = ws_proto.data_to_send()
            events = ws_proto.events_received()
            if to_send or events:
                gate.track(asyncio.create_task(hand_over(to_send, events)))
            if gate.backlog > gate.high:
                gate.pause()

        def connection_lost(exc: Exception | None) -> None:
            sanic_lost(exc)
            gate.drop_handovers()

        def resume_frames() -> bool:
            # Sanic resumes reading whenever recv() takes a frame it had paused for; while
            # the gate holds, reading stays paused (no read happens between the two calls).
            resumed = sanic_resume()
            if gate.paused:
                transport.pause_reading()
            return resumed

        ws.data_received = data_received
        ws.resume_frames = resume_frames
        ws.connection_lost = connection_lost
        return gate

    def track(self, task: asyncio.Task[None]) -> None:
        self.handovers.add(task)
        _handovers.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.handovers.discard(task)
        _handovers.discard(task)

    def drop_handovers(self) -> None:
        """The connection is gone: frames nobody will read are let go."""
        for task in list(self.handovers):
            task.cancel()

    def pause(self) -> None:
        self._transport.pause_reading()
        self.paused = True

    def consumed(self, payload: int) -> None:
        """The reader got a frame of `payload` bytes."""
        self.backlog = max(0, self.backlog - wire_bytes(payload))
        if self.paused and self.backlog < self.low:
            self.resume()

    def resume(self, reset: bool = False) -> None:
        """`reset`: nothing complete is pending (control frames and fragment headers make
        the count drift up); what is left is at most part of a frame."""
        if reset:
            self.backlog = 0
        if self.paused:
            self.paused = False
            self._transport.resume_reading()
