"""TCP backpressure on a client that sends faster than the server reads its frames.

Sanic parses the bytes of a readable socket into frames at once (one pending task per chunk)
and pauses the socket only when a frame completes while nobody waits in recv(). Our reader
always waits there, so a client that floods big frames made the server hold everything it
sent (measured: 190 MB after 6 s from 10 sockets). The gate counts the bytes received and
not yet returned by recv() and pauses reading the socket past `high`, until the reader has
caught up below `low`; the kernel's TCP window then slows the sender.

This wraps `data_received` and `resume_frames` of Sanic's WebsocketImplProtocol instance
and uses its `io_proto.transport` (no public API offers any of them); tests/test_limits.py covers it
(test_flooding_client_is_held_back) and `install` returns None when the shape is not there,
so a Sanic change degrades to no gate rather than an error.
"""

from collections.abc import Callable
from typing import Any

# WebSocket frame header of a client frame: 2 bytes, 4 of mask, 0/2/8 of extended length.
_MASK_AND_BASE = 6


def wire_bytes(payload: int) -> int:
    return payload + _MASK_AND_BASE + (0 if payload < 126 else 2 if payload < 65536 else 8)


class ReadGate:
    def __init__(self, transport: Any, high: int, low: int) -> None:
        self._transport = transport
        self.high = high
        self.low = low
        self.backlog = 0  # bytes received, not yet handed to the reader (approximately)
        self.paused = False

    @classmethod
    def install(cls, ws: Any, high: int, low: int) -> "ReadGate | None":
        transport = getattr(getattr(ws, "io_proto", None), "transport", None)
        original: Callable[[bytes], None] | None = getattr(ws, "data_received", None)
        sanic_resume: Callable[[], bool] | None = getattr(ws, "resume_frames", None)
        if transport is None or original is None or sanic_resume is None:
            return None
        gate = cls(transport, high, low)

        def data_received(data: bytes) -> None:
            gate.backlog += len(data)
            original(data)
            if gate.backlog > gate.high:
                gate.pause()

        def resume_frames() -> bool:
            # Sanic resumes reading whenever recv() takes a frame it had paused for; while
            # the gate holds, reading stays paused (no read happens between the two calls).
            resumed = sanic_resume()
            if gate.paused:
                transport.pause_reading()
            return resumed

        ws.data_received = data_received
        ws.resume_frames = resume_frames
        return gate

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
