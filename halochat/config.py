"""Settings from the environment (see the README's configuration table).

Every timing of the product lives here so tests can shrink minutes to seconds.
"""

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from halochat.constants import AuthMode


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HALOCHAT_", extra="ignore")

    # Database: MONGODB_URI unset -> the embedded MongoDB-wire server under data_dir.
    mongodb_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MONGODB_URI", "HALOCHAT_MONGODB_URI")
    )
    db_name: str = "halochat"
    data_dir: Path = Path("var")

    # HTTP / WebSocket
    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "halochat"
    max_body_bytes: int = 64 * 1024
    ws_max_frame_bytes: int = 64 * 1024
    access_log: bool = False

    # Auth
    auth_mode: AuthMode = AuthMode.LOCAL
    jwt_secret: str = "dev-only-secret-change-me-0123456789abcdef"
    jwt_ttl_seconds: int = 30 * 24 * 3600
    jwt_issuer: str = "halochat"

    # FCM (firebase-admin). No credentials file -> push is disabled (logged, not sent).
    fcm_credentials_file: Path | None = None
    fcm_project_id: str | None = None
    # Base URL replacing https://fcm.googleapis.com; only for tests pointing at a local fake.
    fcm_endpoint: str | None = None

    # Timings (seconds). minute_seconds scales tier minutes: tests set it to 1-2.
    minute_seconds: float = 60.0
    pairing_timeout_seconds: int = 120  # seeded into app_config; app_config wins afterwards
    warning_lead_seconds: float = 60.0
    grace_seconds: float = 300.0
    typing_min_interval_seconds: float = 1.0

    # Limits
    message_max_chars: int = 4000
    closure_max_chars: int = 1000
    history_default_limit: int = 50
    history_max_limit: int = 200

    # Limits and overload (docs/operations.md "Limits and overload"). Rates use the `limits`
    # notation ("10/minute", "5 per 10 seconds"); the storage URI selects where counters live
    # ("async+memory://" per process; "async+redis://host:6379" would share them).
    rate_limit_storage_uri: str = "async+memory://"
    chat_request_rate: str = "6/minute"  # POST /v1/sessions per customer
    chat_cancel_rate: str = "6/minute"  # POST /v1/sessions/<id>/cancel per customer
    http_write_rate: str = "120/minute"  # every POST/PUT/PATCH/DELETE per user
    free_trial_cooldown_seconds: float = 600.0  # after cancelling a free-trial request
    ws_outbound_max_bytes: int = 1024 * 1024  # queued for one socket; past it: disconnected
    ws_max_sockets_per_user: int = 10  # one more is refused (close 4429)
    store_max_inflight: int = 512  # messages handed to the store, not yet stored
    store_max_inflight_bytes: int = 8 * 1024 * 1024
    store_wait_seconds: float = 0.5  # a send not let into the store within this: 503

    # Seed the default app_config on start when none exists (make run does).
    seed_on_start: bool = True
