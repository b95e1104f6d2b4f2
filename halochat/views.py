"""JSON views of documents as the apps see them (ids as strings, times ISO 8601 UTC)."""

from typing import Any

from halochat.constants import MessageStatus, Role
from halochat.documents import AppConfig, ChatSession, Message, User
from halochat.domain.live_sessions import current_last_seq


def user_view(user: User) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(user.id),
        "role": user.role.value,
        "display_name": user.display_name,
        "created_at": user.created_at,
    }
    if user.role == Role.MITRA:
        view["available"] = user.available
    return view


def admin_user_view(user: User) -> dict[str, Any]:
    """What an admin sees of a user: the app view plus the sign-in id and the disabled flag."""
    return {**user_view(user), "auth_uid": user.auth_uid, "disabled": user.disabled}


def config_view(config: AppConfig) -> dict[str, Any]:
    return {
        **config.values().model_dump(mode="json"),
        "version": config.version,
        "updated_at": config.updated_at,
    }


def session_view(session: ChatSession, viewer_role: Role | None = None) -> dict[str, Any]:
    """The session as either party sees it; `other_party` is filled for a known viewer."""
    ext = session.extension
    view: dict[str, Any] = {
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
            role.value: (c.model_dump(mode="json") if (c := session.closures.of(role)) else None)
            for role in (Role.CUSTOMER, Role.MITRA)
        },
        "last_seq": current_last_seq(session),
        "watermarks": session.watermarks.model_dump(mode="json"),
    }
    if viewer_role is not None:
        other_id, other_name = session.other_party(viewer_role)
        view["other_party"] = (
            {
                "id": str(other_id),
                "name": other_name,
                "role": viewer_role.counterpart.value,
            }
            if other_id is not None
            else None
        )
    return view


def message_status(message: Message, session: ChatSession) -> MessageStatus:
    """Status as the sender sees it, from the *recipient's* watermarks."""
    recipient = message.sender_role.counterpart
    mark = getattr(session.watermarks, recipient.value)
    if mark.read >= message.seq:
        return MessageStatus.READ
    if mark.delivered >= message.seq:
        return MessageStatus.DELIVERED
    return MessageStatus.SENT


def message_view(message: Message, session: ChatSession | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
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
        view["status"] = message_status(message, session).value
    return view
