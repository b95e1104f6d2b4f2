"""Bearer-token authentication for HTTP routes and the WebSocket.

The role always comes from the stored user, never from the token or the request.
"""

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import jwt
from beanie import PydanticObjectId
from bson.errors import InvalidId
from sanic import Request

from halochat.config import Settings
from halochat.constants import AuthMode, ErrorCode, Role
from halochat.documents import User
from halochat.documents.common import utcnow
from halochat.errors import ApiError
from halochat.rate_limits import Action

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _unauthorized(code: ErrorCode, message: str) -> ApiError:
    return ApiError(401, code, message)


def issue_token(settings: Settings, user_id: PydanticObjectId | str) -> str:
    """A local-mode HS256 token for a stored user (seed script, tests, dev tools)."""
    now = utcnow()
    claims = {
        "sub": str(user_id),
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + timedelta(seconds=settings.jwt_ttl_seconds),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def _local_user(settings: Settings, token: str) -> User | None:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            issuer=settings.jwt_issuer,
            options={"require": ["sub", "exp"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise _unauthorized(ErrorCode.TOKEN_EXPIRED, "token expired") from exc
    except jwt.PyJWTError as exc:
        raise _unauthorized(ErrorCode.INVALID_TOKEN, "invalid token") from exc
    try:
        user_id = PydanticObjectId(claims["sub"])
    except (InvalidId, TypeError) as exc:
        raise _unauthorized(ErrorCode.INVALID_TOKEN, "invalid token subject") from exc
    return await User.get(user_id)


async def _firebase_user(token: str) -> User | None:
    from firebase_admin import auth as fb_auth

    try:
        # verify_id_token may fetch Google's public keys: keep it off the event loop.
        claims = await asyncio.to_thread(fb_auth.verify_id_token, token)
    except fb_auth.ExpiredIdTokenError as exc:
        raise _unauthorized(ErrorCode.TOKEN_EXPIRED, "token expired") from exc
    except (ValueError, fb_auth.InvalidIdTokenError) as exc:
        raise _unauthorized(ErrorCode.INVALID_TOKEN, "invalid token") from exc
    return await User.find_one(User.auth_uid == claims["uid"])


async def authenticate(settings: Settings, token: str | None) -> User:
    if not token:
        raise _unauthorized(ErrorCode.AUTH_REQUIRED, "missing bearer token")
    if settings.auth_mode == AuthMode.FIREBASE:
        user = await _firebase_user(token)
    else:
        user = await _local_user(settings, token)
    if user is None or user.disabled:
        raise _unauthorized(ErrorCode.USER_NOT_FOUND, "unknown or disabled user")
    return user


Handler = Callable[..., Awaitable[Any]]


def authenticated(*roles: Role) -> Callable[[Handler], Handler]:
    """Route decorator: sets request.ctx.user, and refuses other roles with 403 wrong_role."""

    def decorator(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Any:
            user = await authenticate(request.app.ctx.services.settings, bearer_token(request))
            if roles and user.role not in roles:
                allowed = ", ".join(r.value for r in roles)
                raise ApiError(403, ErrorCode.WRONG_ROLE, f"only {allowed} may do this")
            request.ctx.user = user
            if request.method in WRITE_METHODS:  # per-user limit (halochat/rate_limits.py)
                await request.app.ctx.services.rate_limits.hit(Action.HTTP_WRITE, user.id)
            return await handler(request, *args, **kwargs)

        return wrapper

    return decorator
