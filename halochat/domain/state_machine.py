"""The session state machine (DESIGN.md), in one place: the only writer of a session's state,
and the one place that says what entering a state means.

Every transition is ONE conditional update on the session document (`state in from_states`),
so duplicate timers, concurrent accepts, or two server processes produce exactly one change:
the loser gets None back and does nothing. The winner then applies ON_ENTER[new state]:
arm that state's timers and cancel the others, keep or drop the live chat state, settle
what the database still needs, and publish the state's events. Start-up recovery and the
sweeper re-enter the same declarations (`enter` without a transition: timers and live state
only), so a restart arms exactly what a live transition would have.

Leaving ACTIVE also ends the session's chat: it waits for the session lock (no send is half
done), stores the live message counter in the same update and drops the LiveSession, so a
later send sees the new state (halochat/domain/live_sessions.py).
"""

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from halochat.constants import FINAL_STATES, SessionState, TimelineKind, TimerKind
from halochat.documents import ChatSession, EventActor
from halochat.documents.common import utcnow
from halochat.domain import entry_events, live_sessions
from halochat.domain.access import invalid_state
from halochat.domain.session_events import seconds
from halochat.domain.transactions import void_transactions
from halochat.domain.triggers import TRANSITIONS, Edge, Entered, Trigger, can
from halochat.notify.events import Event
from halochat.observability import metrics, timeline
from halochat.services import Services

S = SessionState
T = TimerKind

__all__ = ["ON_ENTER", "Entered", "Trigger", "can", "enter", "guard", "timer_job", "transition"]

Announce = Callable[[Services, Entered], Awaitable[list[Event]]]


@dataclass(frozen=True)
class OnEnter:
    """What entering a state means."""

    timers: tuple[TimerKind, ...] = ()  # armed on entry; the session's other timers cancelled
    chatting: bool = False  # messages flow: the LiveSession is kept (live_sessions.py)
    settle: Callable[[ChatSession], Awaitable[Any]] | None = None  # writes before any event
    announce: Announce | None = None  # what the parties are told (entry_events.py)


ON_ENTER: dict[SessionState, OnEnter] = {
    S.PAIRING: OnEnter(timers=(T.PAIRING_TIMEOUT,)),
    S.ACTIVE: OnEnter(timers=(T.WARNING, T.EXPIRY), chatting=True, announce=entry_events.active),
    S.EXPIRED: OnEnter(timers=(T.GRACE,), announce=entry_events.expired),
    S.EXTENSION_PENDING: OnEnter(timers=(T.GRACE,), announce=entry_events.extension_pending),
    S.CLOSING: OnEnter(timers=(T.GRACE,), announce=entry_events.closing),
    S.COMPLETED: OnEnter(announce=entry_events.completed),
    S.UNMATCHED: OnEnter(settle=void_transactions, announce=entry_events.unmatched),
    S.CANCELLED: OnEnter(settle=void_transactions, announce=entry_events.cancelled),
}

# The step each timer runs, registered by the module that implements it (@timer_job): the
# steps call transition(), so this module cannot import them.
Job = Callable[..., Awaitable[Any]]
TIMER_JOBS: dict[TimerKind, Job] = {}


def timer_job(kind: TimerKind) -> Callable[[Job], Job]:
    def register(job: Job) -> Job:
        TIMER_JOBS[kind] = job
        return job

    return register


def _due(services: Services, session: ChatSession, kind: TimerKind) -> tuple[Any, ...] | None:
    """(when, extra job arguments) of the session's timer of this kind, or None: not due."""
    match kind:
        case T.PAIRING_TIMEOUT:
            return None if session.pairing_deadline is None else (session.pairing_deadline,)
        case T.WARNING:
            # Unless past or already sent for this ends_at; the job gets the ends_at it was
            # armed for, so a warning timer armed before an extension is harmless.
            if session.ends_at is None or session.warned_for == session.ends_at:
                return None
            warn_at = session.ends_at - seconds(services.settings.warning_lead_seconds)
            return (warn_at, session.ends_at) if warn_at > utcnow() else None
        case T.EXPIRY:
            return None if session.ends_at is None else (session.ends_at,)
        case T.GRACE:
            return None if session.grace_deadline is None else (session.grace_deadline,)


def arm_timers(services: Services, session: ChatSession) -> None:
    """The timers of the session's state armed (for its deadlines), all others cancelled."""
    timers = services.timers
    armed = ON_ENTER[session.state].timers
    if stale := [k for k in TimerKind if k not in armed]:
        timers.cancel(session.id, *stale)
    for kind in armed:
        due = _due(services, session, kind)
        if due is None:
            timers.cancel(session.id, kind)
            continue
        if (job := TIMER_JOBS.get(kind)) is None:  # its feature module was never imported
            raise RuntimeError(f"no @timer_job registered for {kind}")
        when: datetime = due[0]
        timers.at(session.id, kind, when, job, services, session.id, *due[1:])


async def enter(
    services: Services,
    session: ChatSession,
    entered: Entered | None = None,
    *,
    first: Callable[[ChatSession], Iterable[Event]] | None = None,
    quiet: bool = False,
) -> None:
    """Applies ON_ENTER[session.state]. With `entered` (a transition just won): then settles
    and publishes `first(session)` (the action's own events), then the state's events,
    unless `quiet`. Without (recovery, the sweeper): timers and live state only."""
    spec = ON_ENTER[session.state]
    arm_timers(services, session)
    if spec.chatting:
        live_sessions.remember(session)
    if entered is None:
        return
    if spec.settle is not None:
        await spec.settle(session)
    if first is not None:
        services.notifier.publish_all(first(session))
    if spec.announce is not None and not quiet:
        services.notifier.publish_all(await spec.announce(services, entered))


def guard(session: ChatSession, trigger: Trigger, action: str) -> None:
    """409 invalid_state unless `trigger` may move the session from its current state."""
    if not can(trigger, session.state):
        raise invalid_state(session, action)


async def transition(
    services: Services,
    session_id: PydanticObjectId,
    trigger: Trigger,
    *,
    set_fields: dict[str, Any] | None = None,
    unset_fields: tuple[str, ...] = (),
    extra_filter: dict[str, Any] | None = None,
    extra_update: dict[str, Any] | None = None,
    actor: EventActor = timeline.SYSTEM,
    first: Callable[[ChatSession], Iterable[Event]] | None = None,
    quiet: bool = False,
) -> ChatSession | None:
    """Applies `trigger` if the session is in one of its source states (and matches
    `extra_filter`); returns the updated session, or None if another actor got there first.

    `extra_update` merges further operators (e.g. {"$push": ...}) into the same update.
    The change is counted and put on the session's timeline with `actor` (who caused it),
    then the new state is entered (`enter`: timers, live state, `first` events, the state's
    events unless `quiet`).
    """
    edge = TRANSITIONS[trigger]
    if S.ACTIVE not in edge.sources:
        done = await _apply(session_id, edge, set_fields, unset_fields, extra_filter, extra_update)
    else:
        async with live_sessions.session_lock(session_id):
            if (live := live_sessions.get(session_id)) is not None:
                extra_update = {**(extra_update or {})}
                extra_update["$max"] = {**extra_update.get("$max", {}), "last_seq": live.last_seq}
            done = await _apply(
                session_id, edge, set_fields, unset_fields, extra_filter, extra_update
            )
            if done is not None:
                live_sessions.forget(session_id)
    if done is None:
        return None
    source, session = done
    metrics.TRANSITIONS.labels(trigger.value, edge.target.value).inc()
    timeline.record(
        session_id,
        TimelineKind.STATE_CHANGED,
        actor,
        {"from": source.value, "to": edge.target.value, "trigger": trigger.value},
    )
    await enter(
        services, session, Entered(session, source, trigger, actor), first=first, quiet=quiet
    )
    return session


async def _apply(
    session_id: PydanticObjectId,
    edge: Edge,
    set_fields: dict[str, Any] | None,
    unset_fields: tuple[str, ...],
    extra_filter: dict[str, Any] | None,
    extra_update: dict[str, Any] | None,
) -> tuple[SessionState, ChatSession] | None:
    """The update, and the state it left. An edge with several sources (GRACE_ELAPSED) is
    tried one source at a time, in the order a session moves through them, so the state it
    left is known: a session moving on meanwhile is still caught by a later try."""
    now = utcnow()
    fields: dict[str, Any] = {"state": edge.target.value, "updated_at": now}
    fields.update(set_fields or {})
    unset = dict.fromkeys(unset_fields, "")
    if edge.target in FINAL_STATES:
        # Frees the customer's one-open-session slot (unique sparse index) atomically.
        unset["open_customer_id"] = ""
        fields.setdefault("completed_at", now)
    update: dict[str, Any] = {"$set": fields}
    if unset:
        update["$unset"] = unset
    for op, spec in (extra_update or {}).items():
        update.setdefault(op, {}).update(spec)
    if extra_filter and "state" in extra_filter:
        sources = [SessionState(extra_filter["state"])]
    else:
        sources = [s for s in SessionState if s in edge.sources]  # declaration order
    for source in sources:
        query: dict[str, Any] = {"_id": session_id, "state": source.value}
        query.update(extra_filter or {})
        raw = await ChatSession.get_pymongo_collection().find_one_and_update(
            query, update, return_document=ReturnDocument.AFTER
        )
        if raw is not None:
            return source, ChatSession.model_validate(raw)
    return None
