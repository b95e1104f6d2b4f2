"""Helpers shared by the Beanie documents."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Server clock, UTC, timezone-aware (DESIGN.md: times are UTC from the server clock)."""
    return datetime.now(UTC)
