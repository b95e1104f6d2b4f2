"""Admin views of users: a keyset-paginated listing and local-mode token issuing."""

from beanie import PydanticObjectId

from halochat.auth import issue_token
from halochat.config import Settings
from halochat.constants import AuthMode, ErrorCode, Role
from halochat.documents import User
from halochat.errors import conflict, not_found

USERS_DEFAULT_LIMIT = 50
USERS_MAX_LIMIT = 200


async def list_users(
    role: Role | None, limit: int, after: PydanticObjectId | None
) -> tuple[list[User], PydanticObjectId | None]:
    """Users in creation (id) order after `after`; the second value is the cursor of the
    next page (None on the last one). Reads one extra user to know whether more exist."""
    query: dict[str, object] = {}
    if role is not None:
        query["role"] = role.value
    if after is not None:
        query["_id"] = {"$gt": after}
    found = await User.find(query).sort("_id").limit(limit + 1).to_list()
    page = found[:limit]
    next_after = page[-1].id if len(found) > limit else None
    return page, next_after


async def token_for(settings: Settings, user_id: PydanticObjectId) -> tuple[User, str]:
    """A local-mode bearer token for a stored, enabled user (dev tools such as the
    playground). In Firebase mode tokens come from Firebase, never from halochat."""
    if settings.auth_mode != AuthMode.LOCAL:
        raise conflict(
            "tokens are issued by Firebase in this auth mode",
            details={"auth_mode": settings.auth_mode.value},
        )
    user = await User.get(user_id)
    if user is None:
        raise not_found("user not found", ErrorCode.NOT_FOUND)
    if user.disabled:
        raise conflict("the user is disabled", details={"disabled": True})
    return user, issue_token(settings, user.id)
