"""The one clock (halochat/clock.py) and the timers on it (halochat/jobs/timers.py), in this
process: a manual clock moves forward only, product time follows it, advancing it runs exactly
the timers that fell due (and returns once they ran), and the settings check refuses it
outside development. The endpoint that advances a test server's clock is exercised by
tests/test_lifecycle.py (and found absent on other servers by tests/test_foundation.py)."""

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from halochat import clock
from halochat.config import Settings
from halochat.documents.common import utcnow
from halochat.jobs.timers import TimerKind, Timers
from halochat.settings_check import UnsafeSettings, check_settings

SECRET = "s" * 48


@pytest.fixture
def manual() -> Iterator[clock.ManualClock]:
    installed = clock.ManualClock()
    previous = clock.current()
    clock.install(installed)
    try:
        yield installed
    finally:
        clock.install(previous)


def test_the_test_clock_needs_dev_mode() -> None:
    for mode in ({}, {"auth_mode": "firebase", "firebase_project_id": "p"}):
        with pytest.raises(UnsafeSettings, match="HALOCHAT_TEST_CLOCK_OFFSET_SECONDS"):
            check_settings(Settings(jwt_secret=SECRET, test_clock_offset_seconds=0, **mode))
        check_settings(
            Settings(jwt_secret=SECRET, test_clock_offset_seconds=0, dev_mode=True, **mode)
        )
    assert check_settings(Settings(jwt_secret=SECRET)) is None  # unset: the system clock
    with pytest.raises(ValueError):
        Settings(test_clock_offset_seconds=-1)


def test_a_manual_clock_moves_forward_only(manual: clock.ManualClock) -> None:
    before = datetime.now(UTC)
    manual.advance(3600)
    assert utcnow() - before >= timedelta(seconds=3600)
    ahead = utcnow() - datetime.now(UTC)
    assert abs(ahead - timedelta(seconds=3600)) < timedelta(seconds=1)
    with pytest.raises(ValueError):
        manual.advance(-1)
    with pytest.raises(ValueError):
        clock.ManualClock(-5)
    assert clock.ManualClock(30).to_system(utcnow()) < utcnow()


async def test_advancing_runs_exactly_the_timers_that_fell_due(
    manual: clock.ManualClock,
) -> None:
    timers = Timers()
    timers.start()
    ran: list[tuple[str, datetime]] = []

    async def job(name: str) -> None:
        await asyncio.sleep(0.05)  # advance returns after the job, not when it starts
        ran.append((name, utcnow()))

    try:
        start = utcnow()
        timers.at("hour", TimerKind.EXPIRY, start + timedelta(hours=1), job, "hour")
        timers.at("half", TimerKind.WARNING, start + timedelta(minutes=30), job, "half")
        timers.at("day", TimerKind.GRACE, start + timedelta(days=1), job, "day")
        await timers.advance(0)
        assert ran == []
        await timers.advance(3600)
        assert [name for name, _ in ran] == ["half", "hour"]
        assert all(at >= start + timedelta(hours=1) for _, at in ran)
        assert timers.pending == 1
        # A timer armed on the advanced clock waits for the advanced clock's deadline.
        timers.at("soon", TimerKind.EXPIRY, utcnow() + timedelta(minutes=10), job, "soon")
        await timers.advance(9 * 60)
        assert [name for name, _ in ran] == ["half", "hour"]
        await timers.advance(61)
        assert [name for name, _ in ran] == ["half", "hour", "soon"]
        await timers.advance(86400)
        assert [name for name, _ in ran][-1] == "day" and timers.pending == 0
    finally:
        timers.shutdown()


async def test_the_system_clock_cannot_be_advanced_and_its_timers_wait_for_real() -> None:
    """Real time: APScheduler's own waiting (one of the real-timer smoke tests)."""
    timers = Timers()
    timers.start()
    fired = asyncio.Event()

    async def job() -> None:
        fired.set()

    try:
        with pytest.raises(RuntimeError):
            await timers.advance(60)
        armed = utcnow()
        timers.at("real", TimerKind.EXPIRY, armed + timedelta(seconds=0.3), job)
        await asyncio.wait_for(fired.wait(), 10)
        assert utcnow() - armed >= timedelta(seconds=0.3)
    finally:
        timers.shutdown()
