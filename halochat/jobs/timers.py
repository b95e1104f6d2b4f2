"""APScheduler wrapper: one-shot timers keyed by (session, kind).

Timers are an optimisation: jobs only call domain transitions, which are conditional updates,
so a job that fires twice, late, or in two processes changes the session once. Jobs are kept
in memory; after a restart the recovery pass rebuilds them from the session documents, and
the sweeper (halochat/domain/sweeper.py) fires any deadline a timer missed.

A job that raises (the database unreachable, say) is retried with backoff under the same id
until it returns: the domain steps check the clock and the state themselves, so "done" and
"no longer due" both simply return.

Deadlines are on halochat's clock (halochat/clock.py); APScheduler waits on the system clock,
so each job is armed at the system time when our clock reads its deadline. On a test clock,
`advance` moves both together (docs/testing.md "The test clock").
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from halochat import clock
from halochat.constants import TimelineKind, TimerKind
from halochat.documents.common import utcnow
from halochat.errors import database_unavailable
from halochat.observability import logs, metrics, timeline

log = logging.getLogger(__name__)

__all__ = ["TimerKind", "Timers", "fire", "job_id"]

# Backoff of a failed job's retries: first, doubling up to the cap (seconds).
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 5.0


def job_id(session_id: object, kind: TimerKind) -> str:
    return f"{session_id}:{kind.value}"


class Timers:
    def __init__(self) -> None:
        # misfire_grace_time=None: a late job still runs (the transition checks the clock).
        self.scheduler = AsyncIOScheduler(
            timezone="UTC",
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        # Jobs handed to the executor and not finished yet: what `settle` waits for.
        self.running = 0
        self.scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        self.scheduler.add_listener(self._on_finished, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    def _on_submitted(self, _event: JobSubmissionEvent) -> None:
        self.running += 1

    def _on_finished(self, _event: JobExecutionEvent) -> None:
        self.running -= 1

    def start(self) -> None:
        if not self.scheduler.running:
            self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def at(
        self,
        session_id: object,
        kind: TimerKind,
        when: datetime,
        func: Callable[..., Awaitable[Any]],
        *args: Any,
    ) -> None:
        """(Re)schedules the session's timer of this kind; a past `when` runs at once. Every
        attempt (a retry too) goes through `fire`, which measures and records it."""
        self._schedule(
            job_id(session_id, kind), when, fire, (session_id, kind, when, func, *args), 0
        )

    def _schedule(
        self,
        id_: str,
        when: datetime,
        func: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        attempt: int,
    ) -> None:
        # APScheduler waits on the system clock; `when` is on halochat's clock (halochat/clock.py).
        run_date = clock.current().to_system(max(when, utcnow()))
        self.scheduler.add_job(
            self._run,
            DateTrigger(run_date=run_date),
            id=id_,
            name=f"{getattr(func, '__name__', 'job')} {id_}",
            args=[id_, func, args, attempt],
            replace_existing=True,
        )

    async def _run(
        self, id_: str, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...], attempt: int
    ) -> None:
        try:
            await func(*args)
        except Exception as exc:
            delay = min(RETRY_FIRST_DELAY * 2**attempt, RETRY_MAX_DELAY)
            if database_unavailable(exc) is not None:
                log.warning(
                    "timer %s failed: database unavailable (%s); retrying in %.1f s",
                    id_,
                    type(exc).__name__,
                    delay,
                )
            elif attempt == 0:  # a bug: its traceback once, then one line per retry
                log.exception("timer %s failed; retrying in %.1f s", id_, delay)
            else:
                log.error("timer %s failed again (%r); retrying in %.1f s", id_, exc, delay)
            # A one-shot job leaves the scheduler when it starts: a job under this id now was
            # armed meanwhile (a later deadline of the session) and supersedes this retry.
            if self.scheduler.running and self.scheduler.get_job(id_) is None:
                when = utcnow() + timedelta(seconds=delay)
                self._schedule(id_, when, func, args, attempt + 1)

    def cancel(self, session_id: object, *kinds: TimerKind) -> None:
        for kind in kinds or tuple(TimerKind):
            job = self.scheduler.get_job(job_id(session_id, kind))
            if job is not None:
                job.remove()

    @property
    def pending(self) -> int:
        return len(self.scheduler.get_jobs())

    async def advance(self, seconds: float, timeout: float = 30.0) -> None:
        """Test clock only (halochat/clock.py ManualClock): moves the clock forward, brings
        every pending job that much closer (the scheduler waits on the system clock), wakes
        the scheduler, and returns once the jobs that fell due have run."""
        manual = clock.current()
        if not isinstance(manual, clock.ManualClock):
            raise RuntimeError("the clock can only be advanced in a test server")
        step = manual.advance(seconds)
        # No await from here on: a job armed meanwhile would be on the new offset already.
        for job in self.scheduler.get_jobs():
            if job.next_run_time is not None:  # modify() wakes the scheduler
                job.modify(next_run_time=job.next_run_time - step)
        if self.scheduler.running:
            self.scheduler.wakeup()
            await self.settle(timeout)

    async def settle(self, timeout: float = 30.0) -> None:
        """Waits until no job is due and none is running (a retry waiting out its backoff is
        not due): what a test clock's advance means by "the timers have fired"."""
        async with asyncio.timeout(timeout):
            while True:
                await asyncio.sleep(0)  # the wakeup runs on the loop (call_soon)
                now = datetime.now(UTC)  # APScheduler's time: the system clock, not ours
                due = any(
                    job.next_run_time is not None and job.next_run_time <= now
                    for job in self.scheduler.get_jobs()
                )
                if not due and self.running == 0:
                    return
                await asyncio.sleep(0.01)


async def fire(
    session_id: object,
    kind: TimerKind,
    due_at: datetime,
    func: Callable[..., Awaitable[Any]],
    *args: Any,
) -> None:
    """Every timer runs through here: its lateness (from the deadline it was armed for, so a
    deadline passed while the server was down counts in full) is measured and put on the
    session's timeline, then the job runs."""
    # The job's task may have inherited the context of the request that armed the timer:
    # its log lines belong to no request or connection.
    logs.request_id.set(None)
    logs.conn_id.set(None)
    lateness = max(0.0, (utcnow() - due_at).total_seconds())
    metrics.TIMER_LATENESS.labels(kind.value).observe(lateness)
    timeline.record(
        session_id,
        TimelineKind.TIMER_FIRED,
        timeline.SYSTEM,
        {"kind": kind.value, "due_at": due_at, "lateness_ms": round(lateness * 1000)},
    )
    await func(*args)
