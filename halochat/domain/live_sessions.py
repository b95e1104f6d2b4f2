"""What the server process keeps about the sessions being chatted in: a lock per session and,
for ACTIVE sessions, the parties and the message counter.

The server is one process (DESIGN.md), so this in-memory state is authoritative while it
runs and lets a chat message cost one database write (its insert) instead of two:

- A LiveSession is made when a session enters ACTIVE (from the transition's result), for
  the ACTIVE sessions at start-up, or else on the first send; it then holds the session's
  `last_seq`, and sends take the next seq under the session lock.
- The stored `last_seq` is written when the session leaves ACTIVE (in the same conditional
  update as the transition, under the session lock, see state_machine.transition) and
  repaired from the stored messages at start-up after a crash. So whenever no LiveSession
  exists, the stored `last_seq` is exact; while one exists, `current_last_seq` is the truth.
- Leaving ACTIVE drops the LiveSession, so the next send reloads the state and is refused.
- It also holds `ends_at`, so a send after the paid time is refused before the expiry
  transition has landed (the database may be down, the timer retrying); re-entering ACTIVE
  with an accepted extension brings the later `ends_at`.
"""

import asyncio
from dataclasses import dataclass
from datetime import datetime
from weakref import WeakValueDictionary

from beanie import PydanticObjectId

from halochat.constants import Role, SessionState
from halochat.documents import ChatSession

# Locks vanish with their last user (no per-session cleanup needed).
_locks: WeakValueDictionary[PydanticObjectId, asyncio.Lock] = WeakValueDictionary()


def session_lock(session_id: PydanticObjectId) -> asyncio.Lock:
    """Serialises a session's sends, replays and its transitions out of ACTIVE."""
    lock = _locks.get(session_id)
    if lock is None:
        lock = _locks[session_id] = asyncio.Lock()
    return lock


@dataclass
class LiveSession:
    id: PydanticObjectId
    customer_id: PydanticObjectId
    mitra_id: PydanticObjectId
    customer_name: str
    mitra_name: str
    last_seq: int
    ends_at: datetime

    def time_up(self, now: datetime) -> bool:
        """The paid time is over, whether or not the session has been expired yet."""
        return now >= self.ends_at

    def party_id(self, role: Role) -> PydanticObjectId:
        return self.customer_id if role == Role.CUSTOMER else self.mitra_id

    def party_name(self, role: Role) -> str:
        return self.customer_name if role == Role.CUSTOMER else self.mitra_name


_live: dict[PydanticObjectId, LiveSession] = {}
# False in cluster mode (set at start-up): no process may keep a session's counter, the
# stored last_seq is the counter (halochat/domain/messaging/taken_seq.py).
enabled = True


def get(session_id: PydanticObjectId) -> LiveSession | None:
    return _live.get(session_id)


def remember(session: ChatSession) -> LiveSession | None:
    """A session that just entered ACTIVE (or is ACTIVE at start-up, after the seq repair):
    its stored last_seq is exact, so its first send needs no read. An entry a concurrent
    send already loaded is kept (it may be ahead), its ends_at moved to the later one.
    None unless the session is ACTIVE."""
    if (
        not enabled
        or session.id is None
        or session.state != SessionState.ACTIVE
        or session.mitra_id is None
        or session.ends_at is None
    ):
        return None
    live = _live.setdefault(
        session.id,
        LiveSession(
            id=session.id,
            customer_id=session.customer_id,
            mitra_id=session.mitra_id,
            customer_name=session.customer_name or "",
            mitra_name=session.mitra_name or "",
            last_seq=session.last_seq,
            ends_at=session.ends_at,
        ),
    )
    live.ends_at = max(live.ends_at, session.ends_at)
    return live


async def load(session_id: PydanticObjectId) -> LiveSession | None:
    """The session's LiveSession if it is ACTIVE (loaded on first use). Call under its lock."""
    if (live := _live.get(session_id)) is not None:
        return live
    session = await ChatSession.find_one({"_id": session_id, "state": SessionState.ACTIVE.value})
    return None if session is None else remember(session)


def forget(session_id: PydanticObjectId) -> None:
    _live.pop(session_id, None)


def current_last_seq(session: ChatSession) -> int:
    """The session's last message seq, the live counter included."""
    live = _live.get(session.id) if session.id is not None else None
    return max(session.last_seq, live.last_seq) if live is not None else session.last_seq
