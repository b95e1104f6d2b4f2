"""The app factory: create_app(settings) is used by the server, the tests and the scripts."""

import logging

from sanic import Blueprint, Sanic
from sanic_ext import Extend, openapi

import halochat.ws.frames  # noqa: F401  (registers the frame handlers)
from halochat.config import Settings
from halochat.db.connect import init_db, make_client
from halochat.domain import recovery
from halochat.domain.app_config import ensure_config
from halochat.errors import install_error_handler
from halochat.jobs.timers import Timers
from halochat.push import PushService
from halochat.routes import ROUTE_BLUEPRINTS
from halochat.services import Services
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

    @app.before_server_start
    async def start_services(app: Sanic) -> None:
        client = make_client(settings.mongodb_uri)
        await init_db(client, settings.db_name)
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
        services.timers.start()
        await recovery.recover(services)

    @app.before_server_stop
    async def stop_services(app: Sanic) -> None:
        services: Services = app.ctx.services
        services.timers.shutdown()
        await services.hub.close_all()
        await services.message_writer.aclose()
        await services.push.drain()
        await services.push.aclose()
        await services.client.close()

    return app
