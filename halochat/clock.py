"""The one clock: every product time (deadlines, timestamps, timer due times) comes from here.

Production runs on `SystemClock`, the system's UTC time. Tests may run a server on a
`ManualClock` (HALOCHAT_TEST_CLOCK_OFFSET_SECONDS, refused unless HALOCHAT_DEV_MODE is set;
see docs/testing.md): the system's time plus an offset that only moves forward, advanced by
the test through `POST /v1/test/clock` (halochat/routes/test_clock.py), which also runs the
timers that fell due (halochat/jobs/timers.py). Real time keeps flowing underneath, so
ordering by time still works; tests use product timings long enough that nothing falls due
unless they advance the clock.

Process-wide on purpose: documents' default factories, the domain and the timers all read it
through `now()` (or halochat.documents.common.utcnow), with nothing to thread through.
"""

from datetime import UTC, datetime, timedelta


class SystemClock:
    """The system's UTC time."""

    offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def to_system(self, when: datetime) -> datetime:
        """The system time at which this clock reads `when` (what APScheduler waits for)."""
        return when - self.offset


class ManualClock(SystemClock):
    """The system's time plus an offset that a test advances (Synapse's reactor.advance())."""

    def __init__(self, offset_seconds: float = 0.0) -> None:
        if offset_seconds < 0:
            raise ValueError("a test clock starts at or after the system time")
        self.offset = timedelta(seconds=offset_seconds)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> timedelta:
        """Moves the clock forward (never back: deadlines already passed stay passed)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        step = timedelta(seconds=seconds)
        self.offset += step
        return step


_clock: SystemClock = SystemClock()


def current() -> SystemClock:
    return _clock


def install(clock: SystemClock) -> None:
    """Makes `clock` the process's clock (create_app, from the settings)."""
    global _clock
    _clock = clock


def now() -> datetime:
    """The current time, UTC, timezone-aware."""
    return _clock.now()
