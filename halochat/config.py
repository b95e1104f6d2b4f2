"""Settings from the environment (see the README's configuration table).

Every timing of the product lives here so tests can shrink minutes to seconds.
"""

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from halochat.constants import AuthMode, LogFormat

# The value in the source: anyone can read it, so only a development server may sign with it.
DEV_JWT_SECRET = "dev-only-secret-change-me-0123456789abcdef"
MIN_JWT_SECRET_BYTES = 32


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
    log_format: LogFormat = LogFormat.TEXT  # json: one object per line (docs/operations.md)

    # Auth
    auth_mode: AuthMode = AuthMode.LOCAL
    jwt_secret: str = DEV_JWT_SECRET
    jwt_ttl_seconds: int = 30 * 24 * 3600
    jwt_issuer: str = "halochat"
    # Allows the development JWT secret or a short one (make run, make seed); never in production.
    dev_mode: bool = False
    # Firebase project whose ID tokens are accepted (auth_mode=firebase); defaults to
    # fcm_project_id, then to the project of fcm_credentials_file (docs/operations.md).
    firebase_project_id: str | None = None

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
    # WebSocket sends under way are bounded to what is answered within this, on average
    # (ws/admission.py); the p99 of accepted sends lands near 3x it (docs/performance.md)
    send_admit_seconds: float = 0.03

    # Seed the default app_config on start when none exists (make run does).
    seed_on_start: bool = True

    # The browser playground at /playground (docs/playground.md): off unless asked for
    # (make run turns it on); when off, /playground is a 404.
    playground: bool = False
    # More than one process (docs/scaling.md). Unset = one process per database, enforced by
    # a lease in the database. Set = cluster mode: processes joined by this NATS bus.
    nats_url: str | None = None
    # Several server processes on this machine (HALOCHAT_WORKERS > 1): one embedded database
    # and one local nats-server shared by all, each worker in cluster mode on the same port.
    workers: int = Field(default=1, ge=1, le=64)
    reuse_port: bool = False  # set for the workers: listen with SO_REUSEPORT
    lease_heartbeat_seconds: float = Field(default=5.0, gt=0)
    lease_ttl_seconds: float = Field(default=15.0, gt=0)

    # Faults (docs/operations.md "Faults and recovery"). db_timeout_seconds: how long a
    # database call waits for an unreachable database before answering 503.
    # sweep_interval_seconds: how often overdue session deadlines are swept.
    # embedded_restart_delay_seconds: wait before restarting a dead embedded database child.
    db_timeout_seconds: float = 3.0
    sweep_interval_seconds: float = 5.0
    embedded_restart_delay_seconds: float = 0.5

    # Tests only (docs/testing.md "The test clock"): unset = the system clock. Set = a manual
    # clock starting this many seconds ahead, advanced through POST /v1/test/clock (admin);
    # refused unless dev_mode is set (halochat/settings_check.py).
    test_clock_offset_seconds: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> "Settings":
        # A live process must renew its lease at least twice within the TTL.
        if self.lease_ttl_seconds < 2 * self.lease_heartbeat_seconds:
            raise ValueError("HALOCHAT_LEASE_TTL_SECONDS must be >= 2 x the heartbeat")
        return self
