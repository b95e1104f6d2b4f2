"""Settings the server refuses to start with (docs/operations.md, "Deployment checklist").

Light on imports on purpose: `python -m halochat serve` runs this before loading the app, so
a refused configuration fails in well under a second.
"""

import json
from pathlib import Path

from halochat.config import DEV_JWT_SECRET, MIN_JWT_SECRET_BYTES, Settings
from halochat.constants import AuthMode


class UnsafeSettings(Exception):
    """Settings the server refuses to start with; the message says what to change."""


def check_settings(settings: Settings) -> str | None:
    """Refuses a server that anyone could forge tokens for (or that cannot verify any).

    local mode: the JWT secret must not be the one in the source, and must be at least
    MIN_JWT_SECRET_BYTES long, unless HALOCHAT_DEV_MODE is set (then the problem is returned,
    for the caller to warn about). firebase mode: local tokens are not accepted at all (the
    JWT secret is unused), and the project id must be known. The test clock (an admin could
    move every deadline) only runs with HALOCHAT_DEV_MODE.
    """
    if settings.test_clock_offset_seconds is not None and not settings.dev_mode:
        raise UnsafeSettings(
            "HALOCHAT_TEST_CLOCK_OFFSET_SECONDS is set: the server would run on a test clock "
            "that an admin can move forward, ending every session early. Unset it (production "
            "runs on the system clock), or set HALOCHAT_DEV_MODE=1 for a test server."
        )
    if settings.auth_mode == AuthMode.FIREBASE:
        if not firebase_project_id(settings):
            raise UnsafeSettings(
                "HALOCHAT_AUTH_MODE=firebase needs the Firebase project id: set "
                "HALOCHAT_FIREBASE_PROJECT_ID (or HALOCHAT_FCM_PROJECT_ID, or a "
                "HALOCHAT_FCM_CREDENTIALS_FILE that names it)"
            )
        return None
    size = len(settings.jwt_secret.encode())
    if settings.jwt_secret == DEV_JWT_SECRET:
        problem = "HALOCHAT_JWT_SECRET is not set: the development secret from the source is in use"
    elif size < MIN_JWT_SECRET_BYTES:
        problem = f"HALOCHAT_JWT_SECRET is {size} bytes long, under {MIN_JWT_SECRET_BYTES}"
    else:
        return None
    if settings.dev_mode:
        return f"{problem}; accepted because HALOCHAT_DEV_MODE is set (development only)"
    raise UnsafeSettings(
        f"{problem}, so anyone could sign tokens (an admin's included). Set HALOCHAT_JWT_SECRET "
        f"to a random value of at least {MIN_JWT_SECRET_BYTES} bytes (e.g. the output of "
        "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`), or set "
        "HALOCHAT_DEV_MODE=1 on a development machine."
    )


def firebase_project_id(settings: Settings) -> str | None:
    """HALOCHAT_FIREBASE_PROJECT_ID, else HALOCHAT_FCM_PROJECT_ID, else the `project_id` of
    the service-account file HALOCHAT_FCM_CREDENTIALS_FILE."""
    if settings.firebase_project_id or settings.fcm_project_id:
        return settings.firebase_project_id or settings.fcm_project_id
    if settings.fcm_credentials_file is not None:
        try:
            data = json.loads(Path(settings.fcm_credentials_file).read_text())
        except (OSError, ValueError) as exc:
            raise UnsafeSettings(f"cannot read HALOCHAT_FCM_CREDENTIALS_FILE: {exc}") from exc
        project = data.get("project_id") if isinstance(data, dict) else None
        return project if isinstance(project, str) and project else None
    return None
