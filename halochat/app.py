"""The app factory: create_app(settings) is used by the server, the tests and the scripts."""

import asyncio
import contextlib
import logging

from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse
from sanic_ext import Extend, openapi

import halochat.ws.frames  # noqa: F401  (registers the frame handlers)
from halochat import clock
from halochat.auth import firebase_auth_app
from halochat.cluster.delivery import CLOSE_RESYNC, ClusterDelivery
from halochat.cluster.membership import Membership, StartRefused
from halochat.config import Settings
from halochat.constants import AuthMode
from halochat.db.connect import init_db, make_client
from halochat.documents import ChatSession
from halochat.domain import live_sessions, recovery
from halochat.domain.app_config import ensure_config
from halochat.domain.sweeper import run_sweeper
from halochat.errors import install_error_handler
from halochat.jobs.timers import Timers
from halochat.notify.notifier import Notifier
from halochat.observability import logs, metrics, timeline
from halochat.playground import playground_blueprint
from halochat.push import PushService
from halochat.routes import ROUTE_BLUEPRINTS, test_clock
from halochat.services import Services
from halochat.settings_check import check_settings
from halochat.ws.handler import websocket_endpoint
from halochat.ws.hub import Hub

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Sanic:
    settings = settings or Settings()
    if not settings.mongodb_uri:
        raise ValueError(
            "create_app needs settings.mongodb_uri (halochat.server starts the "
            "embedded database when MONGODB_URI is unset)"
        )
    check_settings(settings)  # no forgeable tokens (raises UnsafeSettings)
    if settings.test_clock_offset_seconds is not None:  # tests only (docs/testing.md)
        clock.install(clock.ManualClock(settings.test_clock_offset_seconds))
        log.warning(
            "TEST CLOCK: time runs %g s ahead of the system clock and an admin may advance it "
            "(POST /v1/test/clock); never in production",
            settings.test_clock_offset_seconds,
        )
    app = Sanic(settings.app_name)
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    # Oversized frames are answered with an error frame by our own check, so the
    # protocol-level limit (which closes the socket, 1009) sits above it; not far above, as
    # it also sizes the read backpressure (halochat/ws/read_gate.py).
    app.config.WEBSOCKET_MAX_SIZE = max(settings.ws_max_frame_bytes * 2, 16 * 1024)
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.OAS_TITLE = "halochat API"
    app.config.OAS_DESCRIPTION = "HTTP API of halochat. The WebSocket protocol: docs/protocol.md."
    app.config.OAS_VERSION = "1.0.0"
    app.config.OAS_URL_PREFIX = "/docs"
    app.config.OAS_AUTODOC = True
    app.config.CORS = False
    Extend(app)
    app.ext.openapi.add_security_scheme("bearer", "http", scheme="bearer", bearer_format="JWT")
    install_error_handler(app)

    for bp in ROUTE_BLUEPRINTS:
        app.blueprint(bp)
    # The WebSocket is documented in docs/protocol.md, not as an HTTP operation.
    ws_bp = Blueprint("ws")
    ws_bp.add_websocket_route(websocket_endpoint, "/ws")
    app.blueprint(ws_bp)
    openapi.exclude(bp=ws_bp)
    if settings.test_clock_offset_seconds is not None:
        app.blueprint(test_clock.bp)
        openapi.exclude(bp=test_clock.bp)
    if settings.playground:
        # Static files for developers (docs/playground.md), not part of the API.
        playground_bp = playground_blueprint()
        app.blueprint(playground_bp)
        openapi.exclude(bp=playground_bp)

    @app.on_request
    async def tag_request(request: Request) -> None:
        """The request id of this request's log lines (docs/operations.md "Logs")."""
        rid = logs.accept_request_id(request.headers.get(logs.REQUEST_ID_HEADER))
        request.ctx.request_id = rid
        logs.request_id.set(rid)

    @app.on_response
    async def echo_request_id(request: Request, response: HTTPResponse) -> None:
        if (rid := getattr(request.ctx, "request_id", None)) is not None:
            response.headers[logs.REQUEST_ID_HEADER] = rid

    @app.before_server_start
    async def start_services(app: Sanic) -> None:
        if settings.auth_mode == AuthMode.FIREBASE:
            firebase_auth_app(settings)  # made once, before the first token arrives
        client = make_client(
            settings.mongodb_uri, settings.db_timeout_seconds, [metrics.DbCommandListener()]
        )
        await init_db(client, settings.db_name)
        # First: alone on this database (or refuse, StartRefused) before any other write.
        app.ctx.membership = Membership(settings, on_lost=app.stop)
        await app.ctx.membership.join()
        if settings.seed_on_start:
            _, created = await ensure_config(settings)
            if created:
                log.info("seeded the default app_config")
        services = Services(
            settings=settings,
            client=client,
            hub=Hub(settings.ws_outbound_max_bytes, settings.ws_max_sockets_per_user),
            push=PushService(settings),
            timers=Timers(),
        )
        app.ctx.services = services
        # Cluster mode: the stored last_seq is every process's counter; events go over NATS.
        live_sessions.enabled = settings.nats_url is None
        if settings.nats_url:
            services.cluster = await start_delivery(settings, services, app.ctx.membership.id)
            services.notifier = Notifier(services.cluster)
        metrics.bind(lambda: services.hub.socket_count, count_sessions_by_state)
        services.timers.start()
        await recovery.recover(services)
        # Fires deadlines the timers missed (a database outage, a lost process).
        app.ctx.sweeper = asyncio.create_task(run_sweeper(services), name="sweeper")

    @app.before_server_stop
    async def stop_services(app: Sanic) -> None:
        services: Services = app.ctx.services
        app.ctx.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app.ctx.sweeper
        services.timers.shutdown()
        await services.hub.close_all()
        if services.cluster is not None:
            await services.cluster.stop()
        await services.message_writer.aclose()
        await services.push.drain()
        await services.push.aclose()
        await timeline.RECORDER.flush()
        await app.ctx.membership.leave()  # last write: the next process may start now
        await services.client.close()

    return app


async def start_delivery(
    settings: Settings, services: Services, process_id: str
) -> ClusterDelivery:
    """Connects to the NATS bus (or refuses to start: a member without it would miss events)."""
    hub = services.hub

    async def resync_all() -> None:  # the bus reconnected: frames may have been missed
        conns = hub.all_connections()
        await asyncio.gather(*(c.close(CLOSE_RESYNC, "bus_reconnected") for c in conns))

    delivery = ClusterDelivery(
        url=settings.nats_url or "",
        db_name=settings.db_name,
        process_id=process_id,
        hub=hub,
        push=services.push,
        on_resync=resync_all,
    )
    try:
        await delivery.start()
    except Exception as exc:
        raise StartRefused(
            f"cluster mode: cannot reach the NATS bus at {settings.nats_url} ({exc!r}); "
            "start nats-server first or fix HALOCHAT_NATS_URL (docs/scaling.md)"
        ) from exc
    return delivery


async def count_sessions_by_state() -> dict[str, int]:
    """For the halochat_sessions gauge: one aggregation over the sessions."""
    pipeline = [{"$group": {"_id": "$state", "n": {"$sum": 1}}}]
    coll = ChatSession.get_pymongo_collection()
    return {row["_id"]: row["n"] async for row in await coll.aggregate(pipeline)}
