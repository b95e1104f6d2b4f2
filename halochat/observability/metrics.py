"""Every Prometheus metric of halochat, in one place (docs/operations.md "Metrics").

The metrics live in halochat's own registry (one app per server process), served at /metrics.
Counters and histograms are updated where things happen; the live-socket count and the
sessions-by-state gauge are read at scrape time, the latter from the database (through a
short cache), so it is true after restarts and across processes.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from pymongo import monitoring

from halochat.constants import SessionState

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Sub-second operations (acks, database commands) and timers (seconds, minutes after a restart).
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

MESSAGES_STORED = Counter(
    "halochat_messages_stored",
    "Chat messages durably stored (and acknowledged as sent); retries of a stored one excluded",
    registry=REGISTRY,
)
MESSAGES_DELIVERED = Counter(
    "halochat_messages_delivered",
    "Chat messages the recipient's device confirmed as delivered (delivered watermark moves)",
    registry=REGISTRY,
)
SEND_ACK_SECONDS = Histogram(
    "halochat_send_ack_seconds",
    "From reading a message.send frame to enqueuing its ack (the message is stored by then)",
    buckets=FAST_BUCKETS,
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "halochat_session_transitions",
    "Session state transitions applied, by trigger and target state",
    ["trigger", "to"],
    registry=REGISTRY,
)
TIMER_LATENESS = Histogram(
    "halochat_timer_lateness_seconds",
    "How long after its deadline a timer ran, by kind (recovery after downtime included)",
    ["kind"],
    buckets=LATENESS_BUCKETS,
    registry=REGISTRY,
)
PUSHES_SENT = Counter(
    "halochat_pushes_sent",
    "Push messages FCM accepted, one per device, by push type",
    ["type"],
    registry=REGISTRY,
)
PUSHES_FAILED = Counter(
    "halochat_pushes_failed",
    "Pushes not delivered to FCM, by push type and reason",
    ["type", "reason"],
    registry=REGISTRY,
)
DB_COMMAND_SECONDS = Histogram(
    "halochat_db_command_seconds",
    "Database command latency as the driver measured it, by command name",
    ["command"],
    buckets=FAST_BUCKETS,
    registry=REGISTRY,
)
DB_COMMAND_ERRORS = Counter(
    "halochat_db_command_errors",
    "Database commands that failed, by command name",
    ["command"],
    registry=REGISTRY,
)
WS_REFUSED_FRAMES = Counter(
    "halochat_ws_refused_frames",
    "WebSocket error frames sent (a frame refused), by error code",
    ["code"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "halochat_rate_limited",
    "Requests or frames refused by a rate or queue limit, by limit",
    ["limit"],
    registry=REGISTRY,
)
TIMELINE_EVENTS = Counter(
    "halochat_timeline_events",
    "Session timeline events written, by kind",
    ["kind"],
    registry=REGISTRY,
)
TIMELINE_FAILURES = Counter(
    "halochat_timeline_failures",
    "Session timeline events lost (queue full or the write failed), by reason",
    ["reason"],
    registry=REGISTRY,
)

# Names of the limits counted by RATE_LIMITED.
LIMIT_WS_INBOX = "ws_inbox"  # a client ran too far ahead of its answers (ws/handler.py)
LIMIT_WS_SOCKETS = "ws_sockets_per_user"  # one socket more than the per-user cap (refused)
LIMIT_WS_SLOW_READER = "ws_slow_reader"  # a socket dropped: its output passed the byte bound
LIMIT_STORE_OVERLOADED = "store_overloaded"  # a send not stored in time: 503 overloaded
# The per-user rate limits count under their Action values (halochat/rate_limits.py):
# chat_request, chat_cancel, http_write.


# --- values read at scrape time ------------------------------------------------------------

SESSION_COUNT_TTL = 2.0  # seconds a sessions-by-state count is reused
COUNT_TIMEOUT = 2.0  # seconds a scrape waits for the count


class LiveCollector(Collector):
    """The live-socket count (from the hub) and sessions by state (from the database),
    for the app bound with `bind`; `refresh` (awaited by the /metrics route) reloads the
    session counts when they are older than SESSION_COUNT_TTL."""

    def __init__(self) -> None:
        self.socket_count: Callable[[], int] = lambda: 0
        self.count_sessions: Callable[[], Any] | None = None
        self.by_state: dict[str, int] = {}
        self.counted_at = float("-inf")

    async def refresh(self) -> None:
        """A database that does not answer keeps the last counts: the other metrics (its
        errors among them) are still served."""
        if self.count_sessions is None or time.monotonic() - self.counted_at < SESSION_COUNT_TTL:
            return
        try:
            self.by_state = await asyncio.wait_for(self.count_sessions(), COUNT_TIMEOUT)
        except Exception:
            log.warning("sessions by state not counted; serving the last counts", exc_info=True)
        self.counted_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        sockets = GaugeMetricFamily(
            "halochat_ws_connections", "Live WebSocket connections on this process"
        )
        sockets.add_metric([], self.socket_count())
        yield sockets
        sessions = GaugeMetricFamily(
            "halochat_sessions",
            f"Sessions by state, counted in the database (cached {SESSION_COUNT_TTL:g} s)",
            labels=["state"],
        )
        for state in SessionState:
            sessions.add_metric([state.value], self.by_state.get(state.value, 0))
        yield sessions


LIVE = LiveCollector()
REGISTRY.register(LIVE)


def bind(socket_count: Callable[[], int], count_sessions: Callable[[], Any]) -> None:
    """Points the scrape-time values at the running app (create_app's start-up)."""
    LIVE.socket_count = socket_count
    LIVE.count_sessions = count_sessions
    LIVE.counted_at = float("-inf")


async def exposition(accept: str | None) -> tuple[bytes, str]:
    """The body and content type for a scrape: Prometheus text (0.0.4 unless the scraper
    asks for a newer one) or OpenMetrics, as its Accept header asks."""
    await LIVE.refresh()
    encode, content_type = choose_encoder(accept or "")
    return encode(REGISTRY), content_type


# --- database command monitoring -----------------------------------------------------------


class DbCommandListener(monitoring.CommandListener):
    """pymongo's public command-monitoring hook: latency and failures per command."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        DB_COMMAND_SECONDS.labels(event.command_name).observe(event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        DB_COMMAND_SECONDS.labels(event.command_name).observe(event.duration_micros / 1e6)
        DB_COMMAND_ERRORS.labels(event.command_name).inc()
