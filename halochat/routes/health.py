from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.constants import ErrorCode
from halochat.db.connect import ping
from halochat.routes.common import json_response

bp = Blueprint("health")


@bp.get("/healthz")
@openapi.summary("Liveness: the process serves HTTP")
async def healthz(request: Request) -> HTTPResponse:
    return json_response({"status": "ok"})


@bp.get("/readyz")
@openapi.summary("Readiness: the database answers")
async def readyz(request: Request) -> HTTPResponse:
    if await ping(request.app.ctx.services.client):
        return json_response({"status": "ready", "database": "ok"})
    return json_response(
        {"error": {"code": ErrorCode.UNAVAILABLE.value, "message": "database unreachable"}},
        status=503,
    )


@bp.get("/loadz")
@openapi.summary("Load: open sockets, bytes queued for them, messages waiting for the store")
async def loadz(request: Request) -> HTTPResponse:
    services = request.app.ctx.services
    writer = services.message_writer
    return json_response(
        {
            "sockets": services.hub.socket_count,
            "queued_bytes": services.hub.queued_bytes(),
            "store_inflight": writer.inflight,
            "store_inflight_bytes": writer.inflight_bytes,
        }
    )
