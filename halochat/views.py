"""Response models: every HTTP success body as the apps see it, in one place.

Ids are strings, times ISO 8601 UTC. Each model is built from the documents (`SessionView.of`,
`UserView.of`, ...) or, where the domain builds the data (transactions, chat options, receipts,
timelines), validated from it; `dump()` is the dict the server sends. The WebSocket frames and
pushes carry the same views through `session_view()` / `message_view()` / `user_view()`: the
models' own field builders (`fields_of`), without the validation (they run for every frame).
The same models are the OpenAPI `components/schemas` (halochat/routes/openapi_docs.py), so
/docs/openapi.json describes exactly what is sent.

Absent is not null: a field that is sometimes left out (`available` of a non-Mitra, `token`
outside local auth, `status` of a message seen without its session, ...) has no default value
in the document and is dropped from `dump()` unless it was given (`exclude_unset`); a field that
is always sent but may be null is required and nullable.

Times: the top-level ones are datetimes that orjson writes (`+00:00`); those inside the embedded
documents (extension, closures) were always pydantic's JSON (`Z`) and stay so (`DocTime`).
"""

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, TypeAdapter

from halochat.constants import (
    ActorRole,
    ChoiceKind,
    EndReason,
    ExtensionStatus,
    MessageStatus,
    OptionsKind,
    Role,
    SessionState,
    TimelineKind,
    TransactionKind,
    TransactionStatus,
)
from halochat.documents import AppConfig, ChatSession, Device, Message, User
from halochat.domain.live_sessions import current_last_seq

_TIME = TypeAdapter(datetime)


def _doc_time(value: datetime) -> str:
    return _TIME.dump_python(value, mode="json")


# A time inside an embedded document: written as pydantic's JSON has always written it.
DocTime = Annotated[datetime, PlainSerializer(_doc_time, return_type=str, when_used="always")]


def _absent_is_not_null(schema: dict[str, Any]) -> None:
    # The None defaults of optional fields only mean "absent": clients must not read them.
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class View(BaseModel):
    """A response body (or part of one): exact keys, enums sent as their values."""

    model_config = ConfigDict(
        extra="forbid", use_enum_values=True, json_schema_extra=_absent_is_not_null
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="python", exclude_unset=True)


# Marks a field that is left out (not null) when it does not apply.
def sometimes(description: str) -> Any:
    return Field(default=None, description=description)


# ------------------------------------------------------------------------------ users


class UserView(View):
    id: str
    role: Role
    display_name: str
    created_at: datetime
    available: bool = sometimes("Mitras only: open to chat requests")

    @staticmethod
    def fields_of(user: User) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "id": str(user.id),
            "role": user.role.value,
            "display_name": user.display_name,
            "created_at": user.created_at,
        }
        if user.role == Role.MITRA:
            fields["available"] = user.available
        return fields

    @classmethod
    def of(cls, user: User) -> Self:
        return cls(**cls.fields_of(user))


class CreatedUserView(UserView):
    """POST /v1/admin/users: the user, and a token in local auth mode."""

    token: str = sometimes("local auth mode only: a bearer token for this user")

    @classmethod
    def of_new(cls, user: User, token: str | None) -> Self:
        fields = cls.fields_of(user)
        if token is not None:
            fields["token"] = token
        return cls(**fields)


class AdminUserView(UserView):
    """What an admin sees of an account: the user view plus its auth state."""

    auth_uid: str | None
    disabled: bool
    tokens_valid_after: datetime | None

    @classmethod
    def of(cls, user: User) -> Self:
        return cls(
            **cls.fields_of(user),
            auth_uid=user.auth_uid,
            disabled=user.disabled,
            tokens_valid_after=user.tokens_valid_after,
        )


class UserPage(View):
    users: list[AdminUserView]
    next_after: str | None = Field(description="`after` for the next page; null: last page")


class UserToken(View):
    user: UserView
    token: str


def user_view(user: User) -> dict[str, Any]:
    return UserView.fields_of(user)


def admin_user_view(user: User) -> dict[str, Any]:
    return AdminUserView.of(user).dump()


# ---------------------------------------------------------------------- configuration


class TierView(View):
    id: str
    label: str
    minutes: int
    price: int
    currency: str
    test: bool


class ConfigView(View):
    tiers: list[TierView]
    free_trial_enabled: bool
    free_trial_minutes: int
    pairing_timeout_seconds: int
    version: int
    updated_at: datetime

    @classmethod
    def of(cls, config: AppConfig) -> Self:
        return cls(
            **config.values().model_dump(mode="json"),
            version=config.version,
            updated_at=config.updated_at,
        )


def config_view(config: AppConfig) -> dict[str, Any]:
    return ConfigView.of(config).dump()


# --------------------------------------------------------------------------- devices


class DeviceView(View):
    device_id: str
    platform: str | None
    updated_at: datetime

    @classmethod
    def of(cls, device: Device) -> Self:
        return cls(
            device_id=device.device_id, platform=device.platform, updated_at=device.updated_at
        )


class DeviceList(View):
    devices: list[DeviceView]


class DeviceDeleted(View):
    deleted: str = Field(description="the device_id that was unregistered")


# -------------------------------------------------------------------------- sessions


class PartyRef(View):
    id: str
    name: str


class OtherParty(View):
    id: str
    name: str
    role: Role


class TierSnapshotView(View):
    kind: ChoiceKind
    tier_id: str | None
    label: str
    minutes: int
    price: int
    currency: str


class ExtensionView(View):
    id: str
    tier_id: str
    label: str
    minutes: int
    price: int
    currency: str
    status: ExtensionStatus
    requested_at: DocTime
    answered_at: DocTime | None
    transaction_id: str | None


class ClosureView(View):
    text: str
    at: DocTime


class ClosuresView(View):
    customer: ClosureView | None
    mitra: ClosureView | None


class WatermarkView(View):
    delivered: int
    read: int


class WatermarksView(View):
    customer: WatermarkView
    mitra: WatermarkView


class SessionView(View):
    """The session as either party sees it (docs/lifecycle.md)."""

    id: str
    state: SessionState
    customer: PartyRef
    mitra: PartyRef | None
    tier: TierSnapshotView
    created_at: datetime
    pairing_deadline: datetime | None
    started_at: datetime | None
    ends_at: datetime | None
    grace_deadline: datetime | None
    ended_at: datetime | None
    completed_at: datetime | None
    end_reason: EndReason | None
    extension: ExtensionView | None
    closures: ClosuresView
    last_seq: int
    watermarks: WatermarksView
    other_party: OtherParty | None = sometimes(
        "the other party as the caller sees it; null while nobody accepted"
    )

    @staticmethod
    def fields_of(session: ChatSession, viewer_role: Role | None = None) -> dict[str, Any]:
        """The view as JSON-ready data (what the WebSocket frames carry)."""
        ext = session.extension
        fields: dict[str, Any] = {
            "id": str(session.id),
            "state": session.state.value,
            "customer": {"id": str(session.customer_id), "name": session.customer_name},
            "mitra": (
                {"id": str(session.mitra_id), "name": session.mitra_name}
                if session.mitra_id is not None
                else None
            ),
            "tier": session.tier.model_dump(mode="json"),
            "created_at": session.created_at,
            "pairing_deadline": session.pairing_deadline,
            "started_at": session.started_at,
            "ends_at": session.ends_at,
            "grace_deadline": session.grace_deadline,
            "ended_at": session.ended_at,
            "completed_at": session.completed_at,
            "end_reason": session.end_reason,
            "extension": ext.model_dump(mode="json") if ext is not None else None,
            "closures": {
                role.value: (
                    c.model_dump(mode="json") if (c := session.closures.of(role)) else None
                )
                for role in (Role.CUSTOMER, Role.MITRA)
            },
            "last_seq": current_last_seq(session),
            "watermarks": session.watermarks.model_dump(mode="json"),
        }
        if viewer_role is not None:
            other_id, other_name = session.other_party(viewer_role)
            fields["other_party"] = (
                {"id": str(other_id), "name": other_name, "role": viewer_role.counterpart.value}
                if other_id is not None
                else None
            )
        return fields

    @classmethod
    def of(cls, session: ChatSession, viewer_role: Role | None = None) -> Self:
        """`other_party` is filled for a known viewer."""
        return cls.model_validate(cls.fields_of(session, viewer_role))


def session_view(session: ChatSession, viewer_role: Role | None = None) -> dict[str, Any]:
    return SessionView.fields_of(session, viewer_role)


class HistorySession(SessionView):
    total_minutes: int = Field(description="the tier's minutes plus every accepted extension")


class SessionEnvelope(View):
    session: SessionView


class TransactionView(View):
    id: str
    session_id: str
    kind: TransactionKind
    tier_id: str | None
    minutes: int
    price: int
    currency: str
    status: TransactionStatus
    created_at: datetime


class ChatRequested(View):
    """POST /v1/sessions: the new PAIRING session and its transaction."""

    session: SessionView
    transaction: TransactionView


class ExtensionRequested(View):
    session: SessionView
    extension: ExtensionView


class ExtensionAnswered(View):
    session: SessionView
    transaction: TransactionView = sometimes("accepted only: the extension's transaction")


class SessionList(View):
    sessions: list[SessionView]


class HistoryPage(View):
    sessions: list[HistorySession]
    next_cursor: str | None = Field(description="`cursor` for the next page; null: last page")


# ----------------------------------------------------------------------------- pairing


class FreeTrialOption(View):
    minutes: int
    available_in_seconds: int = sometimes("seconds until the free trial may be requested again")


class OptionTier(View):
    id: str
    label: str
    minutes: int
    price: int
    currency: str


class ChatOptions(View):
    """`kind` says which of `free_trial` / `tiers` is sent."""

    kind: OptionsKind
    free_trial: FreeTrialOption = sometimes("kind free_trial only")
    tiers: list[OptionTier] = sometimes("kind tiers only")


class ChatRequestView(View):
    """A chat request a Mitra may accept (also the `chat.request` frame's data)."""

    session_id: str
    customer: PartyRef
    kind: ChoiceKind
    label: str
    minutes: int
    pairing_deadline: datetime | None


class ChatRequestList(View):
    requests: list[ChatRequestView]


# ---------------------------------------------------------------------------- messages


def message_status(message: Message, session: ChatSession) -> MessageStatus:
    """Status as the sender sees it, from the *recipient's* watermarks."""
    recipient = message.sender_role.counterpart
    mark = getattr(session.watermarks, recipient.value)
    if mark.read >= message.seq:
        return MessageStatus.READ
    if mark.delivered >= message.seq:
        return MessageStatus.DELIVERED
    return MessageStatus.SENT


class MessageView(View):
    id: str
    session_id: str
    seq: int
    sender_id: str
    sender_role: Role
    client_msg_id: str
    body: str
    created_at: datetime
    status: MessageStatus = sometimes("in history: the status as the sender sees it")

    @classmethod
    def of(cls, message: Message, session: ChatSession | None = None) -> Self:
        return cls.model_validate(cls.fields_of(message, session))

    @staticmethod
    def fields_of(message: Message, session: ChatSession | None = None) -> dict[str, Any]:
        """The view as JSON-ready data (what the WebSocket frames carry)."""
        fields: dict[str, Any] = {
            "id": str(message.id),
            "session_id": str(message.session_id),
            "seq": message.seq,
            "sender_id": str(message.sender_id),
            "sender_role": message.sender_role.value,
            "client_msg_id": message.client_msg_id,
            "body": message.body,
            "created_at": message.created_at,
        }
        if session is not None:
            fields["status"] = message_status(message, session).value
        return fields


def message_view(message: Message, session: ChatSession | None = None) -> dict[str, Any]:
    return MessageView.fields_of(message, session)


class MessagePage(View):
    messages: list[MessageView]
    has_more: bool


class MessageSent(View):
    message: MessageView
    replayed: bool = Field(description="true: this client_msg_id was already stored (200)")


class ReceiptView(View):
    session_id: str
    by_role: Role
    delivered: int
    read: int


class ReceiptAnswer(View):
    receipt: ReceiptView


# ------------------------------------------------------------------------ operations


Check = Literal["ok", "down", "not_used"]


class HealthChecks(View):
    timers: Check
    sweeper: Check
    embedded_database: Check = Field(description="not_used: an external MongoDB")


class Liveness(View):
    status: Literal["ok"]
    checks: HealthChecks


class Readiness(View):
    status: Literal["ready"]
    database: Literal["ok"]


class Load(View):
    sockets: int
    queued_bytes: int
    store_inflight: int
    store_inflight_bytes: int
    sends_pending: int  # WebSocket sends read and not yet answered (ws/admission.py)
    sends_limit: int  # their current bound
    pending_reads: int  # frame hand-overs of sockets not yet taken (ws/read_gate.py)
    tasks: int  # the event loop's tasks
    bus: Literal["connected", "disconnected", "not_used"]  # the NATS link (docs/scaling.md)


class EventActorView(View):
    role: ActorRole
    id: str | None


class TimelineEventView(View):
    at: datetime
    kind: TimelineKind
    actor: EventActorView
    data: dict[str, Any]


class SessionTimeline(View):
    session_id: str
    events: list[TimelineEventView]
