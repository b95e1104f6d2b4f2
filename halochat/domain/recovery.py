"""Start-up reconciliation of non-final sessions with the clock (DESIGN.md)."""

from halochat.constants import OPEN_STATES, SessionState
from halochat.documents import ChatSession
from halochat.domain.lifecycle import recover_lifecycle
from halochat.domain.messaging import recover_messaging
from halochat.domain.orphans import void_orphan_transactions
from halochat.domain.pairing import recover_pairing
from halochat.services import Services


async def recover(services: Services) -> None:
    """Reconciles every non-final session and re-arms its timers; runs before serving."""
    chatted = [s.value for s in OPEN_STATES - {SessionState.PAIRING}]
    open_ids = await ChatSession.get_pymongo_collection().distinct(
        "_id", {"state": {"$in": chatted}}
    )
    await recover_messaging(open_ids)
    await void_orphan_transactions()
    await recover_pairing(services)
    await recover_lifecycle(services)
