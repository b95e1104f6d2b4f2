"""Admin control of accounts: create, disable, re-enable, revoke tokens (docs/operations.md).

Each change is one `$set` on the user document, and the user's live sockets are closed at
once (an AccessEnded event), so nothing keeps working on a token the server now refuses.
"""

from beanie import PydanticObjectId

from halochat.constants import ErrorCode, Role
from halochat.documents import User
from halochat.documents.common import utcnow
from halochat.errors import ApiError, conflict, not_found
from halochat.notify.events import AccessEnded
from halochat.services import Services


async def create_user(role: Role, display_name: str, auth_uid: str | None) -> User:
    """A new account. A taken auth_uid is a 409 duplicate (halochat/errors.py)."""
    user = User(role=role, display_name=display_name, auth_uid=auth_uid)
    await user.insert()
    return user


async def load_user(user_id: PydanticObjectId) -> User:
    user = await User.get(user_id)
    if user is None:
        raise not_found("user not found")
    return user


def _not_self(admin: User, user_id: PydanticObjectId, action: str) -> None:
    # Another admin can do it: so these endpoints alone never lock the last admin out.
    if admin.id == user_id:
        raise conflict(
            f"an admin cannot {action} their own account; ask another admin",
            ErrorCode.SELF_LOCKOUT,
        )


async def disable_user(services: Services, admin: User, user_id: PydanticObjectId) -> User:
    """Refuses the user's tokens from now on (403 user_disabled) and closes their sockets
    (4403). Their open sessions run on under the usual timers."""
    _not_self(admin, user_id, "disable")
    user = await load_user(user_id)
    if not user.disabled:
        await user.set({User.disabled: True})
    err = ApiError(403, ErrorCode.USER_DISABLED, "this account is disabled")
    await services.notifier.end_access(AccessEnded(user_id, err))
    return user


async def enable_user(admin: User, user_id: PydanticObjectId) -> User:
    """Accepts the user's tokens again (those not revoked and not expired)."""
    user = await load_user(user_id)
    if user.disabled:
        await user.set({User.disabled: False})
    return user


async def revoke_tokens(services: Services, admin: User, user_id: PydanticObjectId) -> User:
    """Refuses every token issued up to now (401 token_revoked; tokens carry whole seconds, so
    one from this very second too) and closes the sockets opened with them (4401)."""
    _not_self(admin, user_id, "revoke the tokens of")
    user = await load_user(user_id)
    now = utcnow()
    await user.set({User.tokens_valid_after: now})
    err = ApiError(401, ErrorCode.TOKEN_REVOKED, "token revoked; sign in again")
    await services.notifier.end_access(AccessEnded(user_id, err, issued_until=now))
    return user
