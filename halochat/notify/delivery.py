"""How a frame reaches a user: the one seam between the notifier and the transport.

`Delivery` is what a cluster bus replaces (docs/architecture.md "Where the cluster bus plugs
in"): `LocalDelivery` reaches the sockets of this process; a cluster implementation reaches a
user's sockets on every process and makes the push decision cluster-wide.

Methods are synchronous and must keep the order of calls per user: the notifier calls them
under the session lock for chat messages, so a session's messages reach each device in seq
order (a cluster implementation enqueues onto one ordered publisher, it never awaits here).
"""

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from beanie import PydanticObjectId

from halochat.notify.events import Origin
from halochat.push import Push

# A frame as it goes on the wire: {"type": ..., "data": {...}} (docs/protocol.md).
Frame = dict[str, Any]


class Delivery(ABC):
    @abstractmethod
    def to_user(self, user_id: PydanticObjectId, frame: Frame, push: Push | None = None) -> None:
        """`frame` to every live device of the user; `push` only when none of them is in
        the foreground (no socket, or every app reported background)."""

    @abstractmethod
    def to_user_except(
        self, user_id: PydanticObjectId, frame: Frame, except_conn: Origin | None
    ) -> None:
        """`frame` to the user's live devices but `except_conn` (the actor's other devices);
        never a push."""

    @abstractmethod
    async def close_user(
        self,
        user_id: PydanticObjectId,
        code: int,
        frame: Frame,
        issued_until: datetime | None = None,
    ) -> int:
        """Closes the user's sockets (those whose token was issued up to `issued_until`, when
        given) after `frame`; returns how many this process closed."""
