"""Who may see or act on a session: only its own customer and Mitra.

Anyone else gets 404 session_not_found, exactly as for an id that does not exist, so
session ids cannot be probed.
"""

from beanie import PydanticObjectId

from halochat.constants import ErrorCode, Role
from halochat.documents import ChatSession, User
from halochat.errors import ApiError


def session_not_found() -> ApiError:
    return ApiError(404, ErrorCode.SESSION_NOT_FOUND, "session not found")


async def load_session(session_id: PydanticObjectId) -> ChatSession:
    session = await ChatSession.get(session_id)
    if session is None:
        raise session_not_found()
    return session


async def participant_session(
    user: User, session_id: PydanticObjectId, *roles: Role
) -> tuple[ChatSession, Role]:
    """The session and the caller's role in it; 404 unless the caller is a party.
    With `roles`, a party in another role gets 403 wrong_role."""
    session = await load_session(session_id)
    role = session.role_of(user.id)
    if role is None:
        raise session_not_found()
    if roles and role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise ApiError(403, ErrorCode.WRONG_ROLE, f"only the session's {allowed} may do this")
    return session, role


def invalid_state(session: ChatSession, action: str) -> ApiError:
    return ApiError(
        409,
        ErrorCode.INVALID_STATE,
        f"cannot {action} while the session is {session.state.value}",
        {"state": session.state.value},
    )
