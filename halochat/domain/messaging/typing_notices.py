"""Typing: an ephemeral event, never stored, forwarded at most once per
typing_min_interval_seconds per user and session."""

import time

from beanie import PydanticObjectId

from halochat.constants import (
    ServerFrame,
    SessionState,
    TypingState,
)
from halochat.domain.access import invalid_state
from halochat.domain.messaging.common import (
    Sender,
    party_session,
)
from halochat.notify.events import UserNotice
from halochat.services import Services

# (user, session) -> monotonic time of the last forwarded typing event.
_typing_last: dict[tuple[PydanticObjectId, PydanticObjectId], float] = {}


async def typing(
    services: Services, who: Sender, session_id: PydanticObjectId, state: TypingState
) -> bool:
    """Forwards a typing event to the other party (never stored); at most one per
    typing_min_interval_seconds per user and session. Returns whether it was forwarded."""
    session = await party_session(who, session_id)
    if session.state != SessionState.ACTIVE:
        raise invalid_state(session, "type")
    key = (who.id, session_id)
    now = time.monotonic()
    interval = services.settings.typing_min_interval_seconds
    last = _typing_last.get(key)
    if last is not None and now - last < interval:
        return False
    _typing_last[key] = now
    if len(_typing_last) > 10_000:  # forget stale entries now and then
        for k in [k for k, t in _typing_last.items() if now - t >= interval]:
            del _typing_last[k]
    other_id, _ = session.other_party(who.role)
    services.notifier.publish(
        UserNotice(
            other_id,
            ServerFrame.TYPING,
            {
                "session_id": str(session_id),
                "user_id": str(who.id),
                "role": who.role.value,
                "state": state.value,
            },
        )
    )
    return True
