"""Health endpoints (docs/operations.md "Health endpoints").

/healthz (liveness): the process's own parts run: the timers, the sweeper and, with the
embedded database, its child process. /readyz (readiness): the database answers a ping.
"""

import asyncio
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.constants import ErrorCode
from halochat.db.connect import ping
from halochat.routes.common import json_response
from halochat.routes.openapi_docs import answers, errors
from halochat.views import HealthChecks, Liveness, Load, Readiness
from halochat.ws.read_gate import pending_handovers

bp = Blueprint("health")

OK, DOWN, NOT_USED = "ok", "down", "not_used"


def liveness_checks(ctx: Any) -> dict[str, str]:
    """What the process runs by itself, each "ok" or "down" ("not_used": no embedded DB)."""
    services = getattr(ctx, "services", None)
    sweeper = getattr(ctx, "sweeper", None)
    embedded = getattr(ctx, "embedded_db", None)
    return {
        "timers": OK if services is not None and services.timers.scheduler.running else DOWN,
        "sweeper": OK if sweeper is not None and not sweeper.done() else DOWN,
        "embedded_database": NOT_USED if embedded is None else OK if embedded.alive else DOWN,
    }


@bp.get("/healthz")
@openapi.summary("Liveness: the timers, the sweeper and the embedded database child run")
@openapi.description(
    "200 `{status: ok, checks}` when every check is `ok` (or `not_used`); 503 "
    "`service_unavailable` with `details.checks` naming what is `down` (e.g. the embedded "
    "database child died and is being restarted). Does not touch the database: /readyz does."
)
@answers(200, Liveness, "every part runs")
@errors(ErrorCode.UNAVAILABLE)
async def healthz(request: Request) -> HTTPResponse:
    checks = liveness_checks(request.app.ctx)
    if DOWN not in checks.values():
        return json_response(Liveness(status="ok", checks=HealthChecks(**checks)).dump())
    down = ", ".join(name for name, state in checks.items() if state == DOWN)
    return json_response(
        {
            "error": {
                "code": ErrorCode.UNAVAILABLE.value,
                "message": f"not live: {down}",
                "details": {"checks": checks},
            }
        },
        status=503,
    )


@bp.get("/readyz")
@openapi.summary("Readiness: the database answers")
@openapi.description(
    "200 when a ping reaches the database within HALOCHAT_DB_TIMEOUT_SECONDS; else 503 "
    "`service_unavailable`."
)
@answers(200, Readiness, "the database answers")
@errors(ErrorCode.UNAVAILABLE)
async def readyz(request: Request) -> HTTPResponse:
    if await ping(request.app.ctx.services.client):
        return json_response(Readiness(status="ready", database="ok").dump())
    return json_response(
        {"error": {"code": ErrorCode.UNAVAILABLE.value, "message": "database unreachable"}},
        status=503,
    )


@bp.get("/loadz")
@openapi.summary("Load: open sockets, bytes queued for them, messages waiting for the store")
@answers(200, Load, "the counts now")
async def loadz(request: Request) -> HTTPResponse:
    services = request.app.ctx.services
    writer = services.message_writer
    load = Load(
        sockets=services.hub.socket_count,
        queued_bytes=services.hub.queued_bytes(),
        store_inflight=writer.inflight,
        store_inflight_bytes=writer.inflight_bytes,
        # WebSocket sends read and not yet answered, and their current bound (ws/admission.py).
        sends_pending=services.send_admission.pending,
        sends_limit=services.send_admission.limit,
        # Frames read from sockets and not yet taken by their handler (ws/read_gate.py), and
        # the event loop's tasks: both fall back when sockets go (a leak shows here).
        pending_reads=pending_handovers(),
        tasks=len(asyncio.all_tasks()),
        # Cluster mode: the NATS bus link (docs/scaling.md); single mode: not_used.
        bus=NOT_USED
        if services.cluster is None
        else "connected"
        if services.cluster.connected
        else "disconnected",
    )
    return json_response(load.dump())
