"""The sweeper: fires every overdue session deadline, found from the documents alone.

Timers (halochat/jobs/timers.py) fire deadlines on time in the process that armed them and
retry a step that failed. The sweeper is the net under them: every
HALOCHAT_SWEEP_INTERVAL_SECONDS it reads the sessions whose stored deadline has passed
(ACTIVE past `ends_at`, EXPIRED / EXTENSION_PENDING / CLOSING past `grace_deadline`, PAIRING
past `pairing_deadline`; each query served by an index in ChatSession.Settings.indexes) and
reconciles each with the same functions as start-up recovery. Those are conditional updates,
so the sweeper needs nothing from this process's timers: any number of processes may sweep
the same database at once, and each deadline still fires exactly once.
"""

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from halochat.constants import GRACE_STATES, SessionState
from halochat.documents import ChatSession
from halochat.documents.common import utcnow
from halochat.domain import lifecycle
from halochat.domain.recovery import reconcile_session
from halochat.errors import database_unavailable
from halochat.services import Services

log = logging.getLogger(__name__)

S = SessionState

SWEEP_BATCH = 200  # sessions read per query
MAX_BATCHES = 10  # per query and pass; the rest waits for the next pass
GRACE_STATE_VALUES = sorted(s.value for s in GRACE_STATES)


def overdue_queries(now: datetime) -> list[tuple[dict[str, Any], str]]:
    """(filter, deadline field) of each kind of overdue session."""
    return [
        ({"state": S.ACTIVE.value, "ends_at": {"$lte": now}}, "ends_at"),
        ({"state": {"$in": GRACE_STATE_VALUES}, "grace_deadline": {"$lte": now}}, "grace_deadline"),
        ({"state": S.PAIRING.value, "pairing_deadline": {"$lte": now}}, "pairing_deadline"),
    ]


async def sweep_warnings(services: Services, now: datetime) -> int:
    """ "1 minute left" warnings due now and not yet sent (the process that armed their timer
    may be gone): `send_warning` claims each once per ends_at, whoever else tries."""
    lead = timedelta(seconds=services.settings.warning_lead_seconds)
    query = {"state": S.ACTIVE.value, "ends_at": {"$gt": now, "$lte": now + lead}}
    batch = await ChatSession.find(query).sort("ends_at").limit(SWEEP_BATCH).to_list()
    sent = 0
    for session in batch:
        if session.id is not None and session.warned_for != session.ends_at:
            sent += await lifecycle.send_warning(services, session.id, session.ends_at)
    return sent


async def sweep(services: Services) -> int:
    """One pass over the overdue deadlines; returns how many sessions it reconciled (some
    may have been decided meanwhile by a timer or another process: then nothing changes).
    Raises when the database is unavailable; other errors are logged per session."""
    count = 0
    for query, deadline in overdue_queries(utcnow()):
        for _ in range(MAX_BATCHES):
            batch = await ChatSession.find(query).sort(deadline).limit(SWEEP_BATCH).to_list()
            for session in batch:
                try:
                    await reconcile_session(services, session)
                except Exception as exc:
                    if database_unavailable(exc) is not None:
                        raise
                    log.exception("sweeper: could not reconcile session %s", session.id)
            count += len(batch)
            if len(batch) < SWEEP_BATCH:
                break
    return count + await sweep_warnings(services, utcnow())


async def run_sweeper(services: Services) -> None:
    """Sweeps every sweep_interval_seconds until cancelled; a failed pass (the database
    unavailable) is logged once per outage and tried again at the next interval."""
    interval = services.settings.sweep_interval_seconds
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            fired = await sweep(services)
        except Exception as exc:
            if database_unavailable(exc) is None:
                log.exception("sweep failed")
            elif not failing:
                log.warning("sweep failed: database unavailable (%s)", type(exc).__name__)
            failing = True
            continue
        if failing:
            log.info("sweep succeeded again")
            failing = False
        if fired:
            log.info("sweeper reconciled %d overdue session(s)", fired)
