"""Start-up reconciliation of non-final sessions with the clock (DESIGN.md), and the same
step for the sweeper (halochat/domain/sweeper.py).

An overdue deadline is fired through the step its timer would run (a conditional
transition, so a timer firing at the same moment, here or in another process, is harmless);
otherwise the session re-enters its state (state_machine.enter): the timers and live state a
live transition into that state would have set up.
"""

import logging

from halochat.constants import GRACE_STATES, SessionState
from halochat.documents import ChatSession
from halochat.documents.common import utcnow
from halochat.domain import lifecycle
from halochat.domain.messaging import recover_messaging
from halochat.domain.orphans import void_orphan_transactions
from halochat.domain.pairing.timeout import pairing_timeout
from halochat.domain.session_events import seconds
from halochat.domain.state_machine import enter
from halochat.services import Services

log = logging.getLogger(__name__)

S = SessionState

# States the lifecycle reconciles (every open state but PAIRING).
LIFECYCLE_STATES = (S.ACTIVE, *sorted(GRACE_STATES))


async def reconcile_pairing(services: Services, session: ChatSession) -> None:
    """Past its deadline the request fails, else its timeout timer is (re)armed."""
    deadline = session.pairing_deadline
    if deadline is None or deadline <= utcnow():
        await pairing_timeout(services, session.id)
    else:
        await enter(services, session)


async def reconcile_lifecycle(services: Services, session: ChatSession) -> None:
    """ACTIVE / EXPIRED / EXTENSION_PENDING / CLOSING against the clock."""
    now = utcnow()
    grace = seconds(services.settings.grace_seconds)
    if session.state == S.ACTIVE:
        if session.ends_at is None:
            log.error("ACTIVE session %s has no ends_at; left alone", session.id)
            return
        if session.ends_at + grace <= now:
            # Stopped longer than the whole grace: expire and complete at once.
            if await lifecycle.expire(services, session.id, quiet=True) is not None:
                await lifecycle.complete_after_grace(services, session.id)
        elif session.ends_at <= now:
            await lifecycle.expire(services, session.id)
        else:
            await enter(services, session)  # last_seq was repaired before: no read on send
        return
    deadline = session.grace_deadline
    if deadline is None:  # not written by this code; bound it anyway
        deadline = (session.ended_at or session.updated_at) + grace
        await ChatSession.get_pymongo_collection().update_one(
            {"_id": session.id, "state": session.state.value, "grace_deadline": None},
            {"$set": {"grace_deadline": deadline}},
        )
    if deadline <= now:
        await lifecycle.complete_after_grace(services, session.id)
    else:
        await enter(services, session.model_copy(update={"grace_deadline": deadline}))


async def reconcile_session(services: Services, session: ChatSession) -> None:
    """One open session against the clock (start-up recovery and the sweeper)."""
    if session.state == S.PAIRING:
        await reconcile_pairing(services, session)
    else:
        await reconcile_lifecycle(services, session)


async def recover(services: Services) -> None:
    """Reconciles every non-final session and re-arms its timers; runs before serving.

    The chatted sessions (every open state but PAIRING) are read once: their last_seq is
    repaired first, then they are reconciled (pairing recovery never touches them).
    """
    states = [s.value for s in LIFECYCLE_STATES]
    chatted = await ChatSession.find({"state": {"$in": states}}).to_list()
    await recover_messaging(chatted)
    await void_orphan_transactions()
    pairing = await ChatSession.find({"state": S.PAIRING.value}).to_list()
    for session in pairing:
        await reconcile_pairing(services, session)
    if pairing:
        log.info("recovered %d pairing session(s)", len(pairing))
    for session in chatted:
        try:
            await reconcile_lifecycle(services, session)
        except Exception:  # one odd document must not keep the server from starting
            log.exception("could not recover session %s", session.id)
    if chatted:
        log.info("recovered %d open session(s)", len(chatted))
