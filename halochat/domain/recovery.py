"""Start-up reconciliation of non-final sessions with the clock (DESIGN.md)."""

from halochat.domain.lifecycle import open_lifecycle_sessions, recover_lifecycle
from halochat.domain.messaging import recover_messaging
from halochat.domain.orphans import void_orphan_transactions
from halochat.domain.pairing import recover_pairing
from halochat.services import Services


async def recover(services: Services) -> None:
    """Reconciles every non-final session and re-arms its timers; runs before serving.

    The chatted sessions (every open state but PAIRING) are read once: their last_seq is
    repaired first, then the lifecycle reconciles them (pairing recovery never touches them).
    """
    chatted = await open_lifecycle_sessions()
    await recover_messaging(chatted)
    await void_orphan_transactions()
    await recover_pairing(services)
    await recover_lifecycle(services, chatted)
