"""APScheduler wrapper: one-shot timers keyed by (session, kind).

Timers are an optimisation: jobs only call domain transitions, which are conditional updates,
so a job that fires twice, late, or in two processes changes the session once. Jobs are kept
in memory; after a restart the recovery pass rebuilds them from the session documents, and
the sweeper (halochat/domain/sweeper.py) fires any deadline a timer missed.

A job that raises (the database unreachable, say) is retried with backoff under the same id
until it returns: the domain steps check the clock and the state themselves, so "done" and
"no longer due" both simply return.
"""

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

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
        self.scheduler.add_job(
            self._run,
            DateTrigger(run_date=max(when, utcnow())),
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
