"""The session state machine's graph (DESIGN.md): which trigger moves a session from which
states to which. What a move does is in halochat/domain/state_machine.py.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from halochat.constants import SessionState
from halochat.documents import ChatSession, EventActor

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


@dataclass(frozen=True)
class Entered:
    """A transition that happened: the session after it, the state it left, why, and who."""

    session: ChatSession
    source: SessionState
    trigger: Trigger
    actor: EventActor
