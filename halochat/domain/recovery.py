"""Start-up reconciliation of non-final sessions with the clock (DESIGN.md)."""

from halochat.domain.lifecycle import recover_lifecycle
from halochat.domain.pairing import recover_pairing
from halochat.services import Services


async def recover(services: Services) -> None:
    """Reconciles every non-final session and re-arms its timers; runs before serving."""
    await recover_pairing(services)
    await recover_lifecycle(services)
