"""Dispatch table for client frames: feature modules register their handlers here.

A handler gets (services, connection, frame data) and returns the ack's data (or None for an
empty ack); raising ApiError produces an error frame with its code. Handlers stay thin and
call domain functions.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from halochat.constants import ClientFrame
from halochat.services import Services
from halochat.ws.hub import Connection


@dataclass(frozen=True)
class AckThen:
    """A handler result for frames that must follow the ack, in order: the dispatcher calls
    `run(send_ack)`, which sends the ack (with `data`) when it is right to, then the rest."""

    data: dict[str, Any] | None
    run: Callable[[Callable[[], None]], Awaitable[None]]


FrameHandler = Callable[
    [Services, Connection, dict[str, Any]], Awaitable[dict[str, Any] | AckThen | None]
]

HANDLERS: dict[ClientFrame, FrameHandler] = {}


def on(frame_type: ClientFrame) -> Callable[[FrameHandler], FrameHandler]:
    def register(handler: FrameHandler) -> FrameHandler:
        if frame_type in HANDLERS:
            raise RuntimeError(f"duplicate handler for {frame_type}")
        HANDLERS[frame_type] = handler
        return handler

    return register
