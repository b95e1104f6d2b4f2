"""The first half of the session lifecycle (DESIGN.md): offer, request, accept, timeout,
cancel."""

from halochat.services import Services


async def recover_pairing(services: Services) -> None:
    """Start-up: fail PAIRING sessions past their deadline, re-arm the others' timeouts."""
