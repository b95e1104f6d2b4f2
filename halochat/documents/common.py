"""Helpers shared by the Beanie documents."""

from datetime import datetime

from halochat import clock


def utcnow() -> datetime:
    """Server clock, UTC, timezone-aware (DESIGN.md: times are UTC from the server clock).
    Read through halochat/clock.py, the one clock (a test may advance it)."""
    return clock.now()
