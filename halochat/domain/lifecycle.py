"""The second half of the session lifecycle (DESIGN.md): timers, warning, expiry, extension,
end early, closures, grace, and the recovery of all of it after a restart."""

from halochat.documents import ChatSession
from halochat.services import Services


async def on_session_active(services: Services, session: ChatSession) -> None:
    """Called whenever a session (re)enters ACTIVE (accept, extension accepted): arms the
    1-minute warning and the expiry timers for `session.ends_at`."""


async def recover_lifecycle(services: Services) -> None:
    """Start-up: reconcile ACTIVE / EXPIRED / EXTENSION_PENDING / CLOSING sessions with the
    clock and re-arm their timers."""
