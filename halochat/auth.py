"""Bearer-token authentication for HTTP routes and the WebSocket.

The role always comes from the stored user, never from the token or the request. A token is
accepted only while it is unexpired, its user exists and is not disabled, and it was issued
after the user's last token revocation (docs/operations.md, "Authentication").
"""

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import firebase_admin
import jwt
from beanie import PydanticObjectId
from bson.errors import InvalidId
from firebase_admin import auth as fb_auth
from google.auth.credentials import AnonymousCredentials
from sanic import Request

from halochat.config import Settings
from halochat.constants import AuthMode, ErrorCode, Role
from halochat.documents import User
from halochat.documents.common import utcnow
from halochat.errors import ApiError
from halochat.rate_limits import Action
from halochat.settings_check import UnsafeSettings, firebase_project_id

log = logging.getLogger(__name__)

# WebSocket close codes (docs/protocol.md): sign in again / the account is disabled.
CLOSE_AUTH_FAILED = 4401
CLOSE_USER_DISABLED = 4403
CLOSE_TRY_AGAIN_LATER = 1013

# Certificate fetches (Google's public keys) give up after this; the request answers 503.
FIREBASE_HTTP_TIMEOUT_SECONDS = 10

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


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for, and the token's life (sockets close at `expires_at`)."""

    user: User
    expires_at: datetime
    # iat for local tokens, auth_time (the sign-in) for Firebase ones: compared with the
    # user's tokens_valid_after.
    issued_at: datetime


@dataclass(frozen=True)
class _Claims:
    subject: str
    expires_at: datetime
    issued_at: datetime


def _instant(value: Any) -> datetime:
    """A NumericDate claim; one past the calendar's end means "never"."""
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, OSError, ValueError):
        if int(value) < 0:
            raise
        return datetime.max.replace(tzinfo=UTC)


def _local_claims(settings: Settings, token: str) -> _Claims:
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
    # No iat: issued at the epoch as far as revocation goes (any revocation refuses it).
    issued_at = _instant(claims.get("iat", 0))
    return _Claims(str(claims["sub"]), _instant(claims["exp"]), issued_at)


_firebase_apps: dict[str, firebase_admin.App] = {}
_firebase_apps_lock = threading.Lock()  # verification runs in worker threads


def firebase_auth_app(settings: Settings) -> firebase_admin.App:
    """The firebase-admin app that verifies ID tokens (one per project, made once).

    Verifying needs only the project id: Google's public keys are fetched without a
    credential, so the app gets anonymous credentials instead of Application Default
    Credentials (which would fail where none are installed). Push has its own app.
    """
    project = firebase_project_id(settings)
    if not project:
        raise UnsafeSettings("the Firebase project id is not configured")
    with _firebase_apps_lock:
        app = _firebase_apps.get(project)
        if app is None:
            app = firebase_admin.initialize_app(
                AnonymousCredentials(),
                {"projectId": project, "httpTimeout": FIREBASE_HTTP_TIMEOUT_SECONDS},
                name=f"halochat-auth-{project}",
            )
            _firebase_apps[project] = app
        return app


def _firebase_claims(settings: Settings, token: str) -> _Claims:
    """Runs in a thread: verify_id_token may fetch Google's public keys."""

    def why(exc: Exception) -> str:  # the library's message, never the token itself
        return f"{type(exc).__name__}: {str(exc).replace(token, '<token>')}"

    try:
        claims = fb_auth.verify_id_token(token, app=firebase_auth_app(settings))
    except fb_auth.CertificateFetchError as exc:
        log.error("cannot verify Firebase ID tokens: %s", why(exc))
        raise ApiError(
            503, ErrorCode.UNAVAILABLE, "token verification is unavailable; retry later"
        ) from exc
    except fb_auth.ExpiredIdTokenError as exc:
        log.info("Firebase ID token refused: %s", why(exc))
        raise _unauthorized(ErrorCode.TOKEN_EXPIRED, "token expired") from exc
    except (ValueError, fb_auth.InvalidIdTokenError) as exc:
        log.warning("Firebase ID token refused: %s", why(exc))
        raise _unauthorized(ErrorCode.INVALID_TOKEN, "invalid token") from exc
    try:
        expires_at = _instant(claims["exp"])
        # Revocation goes by the sign-in (auth_time), as Firebase's own does: a refreshed
        # ID token of a revoked sign-in stays refused.
        issued_at = _instant(claims.get("auth_time", claims["iat"]))
    except (KeyError, TypeError, ValueError, OSError) as exc:
        log.warning("Firebase ID token refused: no usable exp/iat/auth_time claim")
        raise _unauthorized(ErrorCode.INVALID_TOKEN, "invalid token") from exc
    # The emulator mode of firebase-admin does not check expiry; we always do.
    if expires_at <= utcnow():
        raise _unauthorized(ErrorCode.TOKEN_EXPIRED, "token expired")
    return _Claims(claims["uid"], expires_at, issued_at)


async def _find_user(settings: Settings, subject: str) -> User | None:
    if settings.auth_mode == AuthMode.FIREBASE:
        return await User.find_one(User.auth_uid == subject)
    try:
        user_id = PydanticObjectId(subject)
    except (InvalidId, TypeError) as exc:
        raise _unauthorized(ErrorCode.INVALID_TOKEN, "invalid token subject") from exc
    return await User.get(user_id)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def token_revoked(user: User, issued_at: datetime) -> bool:
    """iat has whole seconds: a token from the revocation's own second counts as revoked."""
    valid_after = user.tokens_valid_after
    return valid_after is not None and issued_at <= _aware(valid_after)


def _check_user(user: User | None, issued_at: datetime) -> None:
    if user is None:
        raise _unauthorized(ErrorCode.USER_NOT_FOUND, "unknown user")
    if user.disabled:
        raise ApiError(403, ErrorCode.USER_DISABLED, "this account is disabled")
    if token_revoked(user, issued_at):
        raise _unauthorized(ErrorCode.TOKEN_REVOKED, "token revoked; sign in again")


async def verify(settings: Settings, token: str | None) -> Identity:
    if not token:
        raise _unauthorized(ErrorCode.AUTH_REQUIRED, "missing bearer token")
    if settings.auth_mode == AuthMode.FIREBASE:
        claims = await asyncio.to_thread(_firebase_claims, settings, token)
    else:
        claims = _local_claims(settings, token)
    user = await _find_user(settings, claims.subject)
    _check_user(user, claims.issued_at)
    assert user is not None
    return Identity(user=user, expires_at=claims.expires_at, issued_at=claims.issued_at)


async def recheck(identity: Identity) -> None:
    """Raises as `verify` would if the user was disabled or revoked since (a socket checks
    once more after registering: a disable or revoke in between found nothing to close)."""
    _check_user(await User.get(identity.user.id), identity.issued_at)


def ws_close_code(err: ApiError) -> int:
    if err.code == ErrorCode.USER_DISABLED:
        return CLOSE_USER_DISABLED
    # The token could not be checked (e.g. Google's keys unreachable): 1013 "try again later",
    # so the app does not throw away a token that may be good.
    return CLOSE_TRY_AGAIN_LATER if err.status >= 500 else CLOSE_AUTH_FAILED


async def authenticate(settings: Settings, token: str | None) -> User:
    return (await verify(settings, token)).user


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
