"""Enums shared by every layer: roles, states, event names, error codes.

Values are the strings that go over the wire and into MongoDB; code always uses the members.
"""

from enum import StrEnum


class Role(StrEnum):
    CUSTOMER = "customer"
    MITRA = "mitra"
    ADMIN = "admin"

    @property
    def counterpart(self) -> "Role":
        """The other party of a session: customer <-> Mitra."""
        return Role.MITRA if self == Role.CUSTOMER else Role.CUSTOMER


class AuthMode(StrEnum):
    LOCAL = "local"  # HS256 JWTs signed with HALOCHAT_JWT_SECRET
    FIREBASE = "firebase"  # Firebase ID tokens verified by firebase-admin


class SessionState(StrEnum):
    PAIRING = "PAIRING"
    UNMATCHED = "UNMATCHED"
    CANCELLED = "CANCELLED"
    ACTIVE = "ACTIVE"
    EXPIRED = "EXPIRED"
    EXTENSION_PENDING = "EXTENSION_PENDING"
    CLOSING = "CLOSING"
    COMPLETED = "COMPLETED"


FINAL_STATES: frozenset[SessionState] = frozenset(
    {SessionState.UNMATCHED, SessionState.CANCELLED, SessionState.COMPLETED}
)
# A customer holds at most one session in any of these states.
OPEN_STATES: frozenset[SessionState] = frozenset(set(SessionState) - FINAL_STATES)
# States bounded by the grace period (DESIGN.md: nothing hangs forever).
GRACE_STATES: frozenset[SessionState] = frozenset(
    {SessionState.EXPIRED, SessionState.EXTENSION_PENDING, SessionState.CLOSING}
)


class TransactionKind(StrEnum):
    TIER = "tier"
    FREE_TRIAL = "free_trial"
    EXTENSION = "extension"


class TransactionStatus(StrEnum):
    PAID = "paid"  # payment is mocked in this phase
    PENDING_PAYMENT = "pending_payment"  # the hook for a real payment gateway
    VOID = "void"


class ChoiceKind(StrEnum):
    """What a customer may pick when opening a chat."""

    TIER = "tier"
    FREE_TRIAL = "free_trial"


class OptionsKind(StrEnum):
    """What GET /v1/chat/options offers: the free trial, or the tiers."""

    FREE_TRIAL = "free_trial"
    TIERS = "tiers"


class PairingReason(StrEnum):
    """The `reason` of pairing.failed / chat.request_withdrawn (session.end_reason: EndReason)."""

    TIMEOUT = "pairing_timeout"
    CANCELLED = "cancelled"
    MITRA_UNAVAILABLE = "mitra_unavailable"  # withdrawn: the Mitra went unavailable


class ExtensionStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    LAPSED = "lapsed"  # unanswered when the grace period ran out


class EndReason(StrEnum):
    """session.end_reason: why the session stopped (set on entering UNMATCHED / CANCELLED /
    EXPIRED / CLOSING; kept when it completes)."""

    PAIRING_TIMEOUT = "pairing_timeout"
    CANCELLED = "cancelled"
    TIME_UP = "time_up"
    ENDED_BY_CUSTOMER = "ended_by_customer"
    ENDED_BY_MITRA = "ended_by_mitra"
    EXTENSION_DECLINED = "extension_declined"
    EXTENSION_REJECTED = "extension_rejected"


class ClientFrame(StrEnum):
    """Frame types a client sends on the WebSocket."""

    AUTH = "auth"
    PING = "ping"
    HELLO = "hello"  # resync: last seq per session
    SEND = "message.send"
    RECEIPT = "receipt"
    TYPING = "typing"
    APP_STATE = "app.state"  # foreground / background


class ServerFrame(StrEnum):
    """Frame types the server sends on the WebSocket."""

    READY = "ready"
    PONG = "pong"
    ACK = "ack"
    ERROR = "error"
    SYNC = "sync"
    MESSAGE = "message.new"
    RECEIPT = "receipt.updated"
    TYPING = "typing"
    # Pairing
    CHAT_REQUEST = "chat.request"
    REQUEST_TAKEN = "chat.request_taken"
    REQUEST_WITHDRAWN = "chat.request_withdrawn"
    PAIRING_STATUS = "pairing.status"
    SESSION_STARTED = "session.started"
    PAIRING_FAILED = "pairing.failed"
    # Lifecycle
    ONE_MINUTE_LEFT = "session.one_minute_left"
    SESSION_EXPIRED = "session.expired"
    EXTENSION_REQUESTED = "session.extension_requested"
    EXTENSION_ANSWERED = "session.extension_answered"
    SESSION_RESUMED = "session.resumed"
    SESSION_CLOSING = "session.closing"
    CLOSURE_SUBMITTED = "session.closure_submitted"
    SESSION_COMPLETED = "session.completed"
    SESSION_CANCELLED = "session.cancelled"


class ReceiptKind(StrEnum):
    DELIVERED = "delivered"
    READ = "read"


class MessageStatus(StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"


class TypingState(StrEnum):
    START = "start"
    STOP = "stop"


class AppState(StrEnum):
    FOREGROUND = "foreground"
    BACKGROUND = "background"


class PushType(StrEnum):
    """The `type` field of every push's data block (docs/push.md)."""

    CHAT_MESSAGE = "chat_message"
    CHAT_REQUEST = "chat_request"
    PAIRING_RESULT = "pairing_result"
    EXTENSION_REQUEST = "extension_request"
    EXTENSION_ANSWER = "extension_answer"
    ONE_MINUTE_LEFT = "one_minute_left"
    SESSION_EXPIRED = "session_expired"
    SESSION_ENDED = "session_ended"


class ErrorCode(StrEnum):
    # 400
    INVALID_JSON = "invalid_json"
    BAD_REQUEST = "bad_request"
    # 401 / 403
    AUTH_REQUIRED = "auth_required"
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    USER_NOT_FOUND = "user_not_found"
    TOKEN_REVOKED = "token_revoked"  # issued before an admin revoked the user's tokens
    USER_DISABLED = "user_disabled"  # 403: an admin disabled the account
    FORBIDDEN = "forbidden"
    WRONG_ROLE = "wrong_role"
    NOT_PARTICIPANT = "not_participant"
    # 404 / 405
    NOT_FOUND = "not_found"
    SESSION_NOT_FOUND = "session_not_found"
    TIER_NOT_FOUND = "tier_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # 409
    CONFLICT = "conflict"
    INVALID_STATE = "invalid_state"
    SESSION_ALREADY_OPEN = "session_already_open"
    REQUEST_TAKEN = "request_taken"
    FREE_TRIAL_UNAVAILABLE = "free_trial_unavailable"
    ALREADY_RESOLVED = "already_resolved"
    ALREADY_SUBMITTED = "already_submitted"
    DUPLICATE = "duplicate"
    SELF_LOCKOUT = "self_lockout"  # an admin may not disable or revoke themselves
    # 413 / 422 / 429
    PAYLOAD_TOO_LARGE = "payload_too_large"
    VALIDATION_ERROR = "validation_error"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_CONNECTIONS = "too_many_connections"  # WebSocket, close code 4429
    # WebSocket-only
    UNKNOWN_FRAME = "unknown_frame"
    # 5xx
    INTERNAL = "internal_error"
    UNAVAILABLE = "service_unavailable"
    OVERLOADED = "overloaded"  # 503, retryable: the server sheds load (docs/protocol.md)


class ActorRole(StrEnum):
    """Who caused a session timeline event: a party, an admin, or the server itself."""

    CUSTOMER = "customer"
    MITRA = "mitra"
    ADMIN = "admin"
    SYSTEM = "system"  # timers, recovery, pushes


class TimelineKind(StrEnum):
    """The `kind` of a session timeline event (docs/support.md lists each one's data)."""

    SESSION_CREATED = "session_created"
    STATE_CHANGED = "state_changed"
    EXTENSION_REQUESTED = "extension_requested"
    EXTENSION_ANSWERED = "extension_answered"
    CLOSURE_SUBMITTED = "closure_submitted"
    TIMER_FIRED = "timer_fired"
    PUSH_SENT = "push_sent"
    PUSH_FAILED = "push_failed"


class PushFailure(StrEnum):
    """Why a push did not reach FCM for a device (metrics and the session timeline)."""

    NO_DEVICES = "no_devices"  # the user has no registered device
    FCM_ERROR = "fcm_error"  # the whole request to FCM failed
    INVALID_TOKEN = "invalid_token"  # FCM says the token is dead; it was dropped
    REJECTED = "rejected"  # FCM refused this device's message for another reason


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"  # one JSON object per line (docs/operations.md "Logs")


class TimerKind(StrEnum):
    """A session's timers (halochat/jobs/timers.py), armed on entering a state
    (halochat/domain/state_machine.py)."""

    PAIRING_TIMEOUT = "pairing_timeout"
    WARNING = "warning"
    EXPIRY = "expiry"
    GRACE = "grace"
