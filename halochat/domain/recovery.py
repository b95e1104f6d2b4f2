"""Start-up reconciliation of non-final sessions with the clock (DESIGN.md)."""

from halochat.services import Services


async def recover(services: Services) -> None:
    """Filled in by the session lifecycle: reconcile every non-final session and
    re-arm its timers."""
