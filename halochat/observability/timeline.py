"""The session timeline for support (docs/support.md "Session timeline"): every transition,
extension request and answer, closure message, timer firing and push of a session, with its
time and actor, in the `session_timeline` collection.

Recording never blocks or fails the user's action: `record` only enqueues (bounded); one
writer task stores the events in batches. A full queue or a failed write is logged and
counted (halochat_timeline_failures), never raised. Chat messages are not timeline events.
"""

import asyncio
import contextlib
import logging
from typing import Any

from beanie import PydanticObjectId
from bson import ObjectId
from bson.errors import InvalidId

from halochat.constants import ActorRole, Role, TimelineKind
from halochat.documents import EventActor, TimelineEvent, User
from halochat.documents.common import utcnow
from halochat.observability import metrics

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000  # events waiting for the writer; past it new events are dropped (counted)
BATCH_SIZE = 200
MAX_EVENTS = 10_000  # a session has dozens; the admin read is bounded all the same
RETRY_DELAY = 0.5  # seconds before the one retry of a failed batch

SYSTEM = EventActor(role=ActorRole.SYSTEM)


def actor_of(user: User) -> EventActor:
    return EventActor(role=ActorRole(user.role.value), id=str(user.id))


def party(role: Role, user_id: object) -> EventActor:
    return EventActor(role=ActorRole(role.value), id=None if user_id is None else str(user_id))


class Recorder:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[dict[str, Any] | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def record(
        self,
        session_id: object,
        kind: TimelineKind,
        actor: EventActor = SYSTEM,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Enqueues one event stamped now; never raises."""
        try:
            doc = {
                "_id": ObjectId(),
                "session_id": PydanticObjectId(session_id),
                "at": utcnow(),
                "kind": kind.value,
                "actor": actor.model_dump(mode="json"),
                "data": data or {},
            }
            self._writer_queue().put_nowait(doc)
        except asyncio.QueueFull:
            metrics.TIMELINE_FAILURES.labels("queue_full").inc()
            log.warning("timeline queue full: %s event of session %s dropped", kind, session_id)
        except (InvalidId, TypeError, RuntimeError):
            metrics.TIMELINE_FAILURES.labels("invalid").inc()
            log.exception("timeline event %s of session %s not recorded", kind, session_id)

    def _writer_queue(self) -> "asyncio.Queue[dict[str, Any] | None]":
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue(QUEUE_SIZE)
            self._task = asyncio.get_running_loop().create_task(
                self._write(self._queue), name="timeline-writer"
            )
        return self._queue

    async def _write(self, queue: "asyncio.Queue[dict[str, Any] | None]") -> None:
        while (first := await queue.get()) is not None:
            batch = [first]
            stop = False
            while len(batch) < BATCH_SIZE and not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            await self._store(batch)
            if stop:
                return

    async def _store(self, batch: list[dict[str, Any]]) -> None:
        coll = TimelineEvent.get_pymongo_collection()
        for attempt in range(2):
            try:
                await coll.insert_many(batch, ordered=True)
            except Exception:
                if attempt == 0:
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                metrics.TIMELINE_FAILURES.labels("write_failed").inc(len(batch))
                log.exception("could not store %d timeline event(s)", len(batch))
                return
            for doc in batch:
                metrics.TIMELINE_EVENTS.labels(doc["kind"]).inc()
            return

    async def flush(self, timeout: float = 5.0) -> None:
        """Stores what is queued and stops the writer (server shutdown)."""
        queue, task = self._queue, self._task
        self._queue = self._task = None
        if queue is None or task is None or task.done():
            return
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, timeout)


RECORDER = Recorder()
record = RECORDER.record


async def session_timeline(session_id: PydanticObjectId) -> list[dict[str, Any]]:
    """The session's events in chronological order, as the admin API shows them."""
    cursor = TimelineEvent.get_pymongo_collection().find(
        {"session_id": session_id}, sort=[("at", 1), ("_id", 1)], limit=MAX_EVENTS
    )
    return [
        {"at": doc["at"], "kind": doc["kind"], "actor": doc["actor"], "data": doc["data"]}
        async for doc in cursor
    ]
