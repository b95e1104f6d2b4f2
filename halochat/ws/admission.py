"""Admission of `message.send` frames at read time (docs/operations.md "Limits and overload").

Under overload, frames queued in the sockets' inboxes and refused once their deadline had
passed: the server paid for reading, validating and scheduling every one and then for its
refusal, and 95 % of the sends at twice the capacity were refused late (goodput 8 %,
measured). Here a send is refused the moment it is read when the process already has as many
sends under way (read, not yet answered) as it can answer within the target time; the
refusal is one pre-encoded frame and no other work.

The bound adapts every 0.1 s. While admitted sends are answered within the target time
(mean, from arrival) it grows by an eighth; when they take longer it becomes Little's law at
the target: answered sends per second x target seconds, so the sends under way are answered
within about the target and every other send gets `overloaded` at once. An idle process
resets it to the maximum, so an app's burst (its offline queue) is not refused for nothing.
"""

import time

import orjson

from halochat.constants import ErrorCode, ServerFrame
from halochat.observability import metrics

INTERVAL = 0.1  # seconds between limit updates
MIN_LIMIT = 16  # the bound never goes below this (unless the maximum is lower)
SOCKET_SHARE = 4  # under overload one socket holds at most limit / SOCKET_SHARE sends
SOCKET_MIN = 4  # but always at least this many
RATE_WEIGHT = 0.3  # EWMA weight of the newest interval's answer rate
OVERLOADED_ERROR = {
    "code": ErrorCode.OVERLOADED.value,
    "message": "server busy: the message was not stored; retry it with the same client_msg_id",
    "details": {"retry_after": 1},
}


class SendAdmission:
    def __init__(self, target_seconds: float, max_limit: int) -> None:
        self.target_seconds = target_seconds
        self.max_limit = max_limit
        self.pending = 0  # sends read and admitted, not yet answered
        self.limit = max_limit  # until the first measurement
        self._rate: float | None = None
        self._answered = 0  # in this interval, and their total answer time
        self._answer_seconds = 0.0
        self._window_start = time.monotonic()
        # The same error as a send refused later (messaging/common.py overloaded()).
        body = orjson.dumps(OVERLOADED_ERROR).decode()
        self._head = '{"type":"' + ServerFrame.ERROR.value + '","id":'
        self._tail = ',"error":' + body + "}"
        self._refused = metrics.WS_REFUSED_FRAMES.labels(ErrorCode.OVERLOADED.value)
        self._limited = metrics.RATE_LIMITED.labels(metrics.LIMIT_STORE_OVERLOADED)

    def adjust(self, now: float) -> None:
        """Re-computes the bound once per interval (`now`: time.monotonic())."""
        elapsed = now - self._window_start
        if elapsed < INTERVAL:
            return
        if self._answered:
            sample = self._answered / elapsed
            self._rate = (
                sample
                if self._rate is None
                else (RATE_WEIGHT * sample + (1 - RATE_WEIGHT) * self._rate)
            )
            if self._answer_seconds / self._answered > self.target_seconds:
                # Answers slower than the target: Little's law at the target.
                wanted = int(self._rate * self.target_seconds)
                self.limit = min(self.max_limit, max(MIN_LIMIT, min(self.limit, wanted)))
            else:  # quick: room for more, gradually
                self.limit = min(self.max_limit, self.limit + max(1, self.limit // 8))
        elif self.pending == 0:  # idle: a burst (an app's offline queue) may come in whole
            self.limit = self.max_limit
        self._answered = 0
        self._answer_seconds = 0.0
        self._window_start = now

    def admit(self, socket_pending: int) -> bool:
        """True (counted as pending) when one more send may be taken on now. While the bound
        is shrunk (overload) a socket that already has `socket_pending` sends under way gets
        at most a share of it, so one flooding socket cannot take it all from the others;
        otherwise a socket far ahead meets its inbox bound (rate_limited) as before."""
        self.adjust(time.monotonic())
        if self.pending >= self.limit:
            return False
        if self.limit < self.max_limit and socket_pending >= max(
            SOCKET_MIN, self.limit // SOCKET_SHARE
        ):
            return False
        self.pending += 1
        return True

    def answered(self, seconds: float | None = None) -> None:
        """An admitted send got its answer `seconds` after it arrived, or (None) was dropped
        unanswered with its socket."""
        self.pending -= 1
        if seconds is not None:
            self._answered += 1
            self._answer_seconds += seconds

    def refusal(self, frame_id: str | None) -> str:
        """The encoded `overloaded` error frame for a send refused at admission."""
        self._refused.inc()
        self._limited.inc()
        return self._head + orjson.dumps(frame_id).decode() + self._tail
