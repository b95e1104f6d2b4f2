"""The session state machine (DESIGN.md), in one place.

Every transition is ONE conditional update on the session document (`state in from_states`),
so duplicate timers, concurrent accepts, or two server processes produce exactly one change:
the loser gets None back and does nothing.

Leaving ACTIVE also ends the session's chat: it waits for the session lock (no send is half
done), stores the live message counter in the same update and drops the LiveSession, so a
later send sees the new state (halochat/domain/live_sessions.py).
"""

from enum import StrEnum
from typing import Any, NamedTuple

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from halochat.constants import FINAL_STATES, SessionState, TimelineKind
from halochat.documents import ChatSession, EventActor
from halochat.documents.common import utcnow
from halochat.domain import live_sessions
from halochat.observability import metrics, timeline

S = SessionState


class Trigger(StrEnum):
    ACCEPT = "accept"  # a Mitra accepts the chat request
    PAIRING_TIMEOUT = "pairing_timeout"
    CANCEL = "cancel"  # the customer cancels while pairing
    TIME_UP = "time_up"
    END_EARLY = "end_early"
    REQUEST_EXTENSION = "request_extension"
    DECLINE_EXTENSION = "decline_extension"  # the customer does not extend
    EXTENSION_ACCEPTED = "extension_accepted"
    EXTENSION_REJECTED = "extension_rejected"
    CLOSURES_DONE = "closures_done"
    GRACE_ELAPSED = "grace_elapsed"


class Edge(NamedTuple):
    sources: frozenset[SessionState]
    target: SessionState


TRANSITIONS: dict[Trigger, Edge] = {
    Trigger.ACCEPT: Edge(frozenset({S.PAIRING}), S.ACTIVE),
    Trigger.PAIRING_TIMEOUT: Edge(frozenset({S.PAIRING}), S.UNMATCHED),
    Trigger.CANCEL: Edge(frozenset({S.PAIRING}), S.CANCELLED),
    Trigger.TIME_UP: Edge(frozenset({S.ACTIVE}), S.EXPIRED),
    Trigger.END_EARLY: Edge(frozenset({S.ACTIVE}), S.CLOSING),
    Trigger.REQUEST_EXTENSION: Edge(frozenset({S.EXPIRED}), S.EXTENSION_PENDING),
    Trigger.DECLINE_EXTENSION: Edge(frozenset({S.EXPIRED}), S.CLOSING),
    Trigger.EXTENSION_ACCEPTED: Edge(frozenset({S.EXTENSION_PENDING}), S.ACTIVE),
    Trigger.EXTENSION_REJECTED: Edge(frozenset({S.EXTENSION_PENDING}), S.CLOSING),
    Trigger.CLOSURES_DONE: Edge(frozenset({S.CLOSING}), S.COMPLETED),
    Trigger.GRACE_ELAPSED: Edge(
        frozenset({S.EXPIRED, S.EXTENSION_PENDING, S.CLOSING}), S.COMPLETED
    ),
}


def can(trigger: Trigger, state: SessionState) -> bool:
    return state in TRANSITIONS[trigger].sources


async def transition(
    session_id: PydanticObjectId,
    trigger: Trigger,
    *,
    set_fields: dict[str, Any] | None = None,
    unset_fields: tuple[str, ...] = (),
    extra_filter: dict[str, Any] | None = None,
    extra_update: dict[str, Any] | None = None,
    actor: EventActor = timeline.SYSTEM,
) -> ChatSession | None:
    """Applies `trigger` if the session is in one of its source states (and matches
    `extra_filter`); returns the updated session, or None if another actor got there first.

    `extra_update` merges further operators (e.g. {"$push": ...}) into the same update.
    The change is counted and put on the session's timeline with `actor` (who caused it).
    """
    edge = TRANSITIONS[trigger]
    if S.ACTIVE not in edge.sources:
        done = await _apply(session_id, edge, set_fields, unset_fields, extra_filter, extra_update)
        if done is not None and edge.target == S.ACTIVE:
            live_sessions.remember(done[1])
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
    if done is not None:
        source, session = done
        metrics.TRANSITIONS.labels(trigger.value, edge.target.value).inc()
        timeline.record(
            session_id,
            TimelineKind.STATE_CHANGED,
            actor,
            {"from": source.value, "to": edge.target.value, "trigger": trigger.value},
        )
        return session
    return None


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
