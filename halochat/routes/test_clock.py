"""POST /v1/test/clock: advances a test server's clock (docs/testing.md "The test clock").

Registered only when HALOCHAT_TEST_CLOCK_OFFSET_SECONDS is set (which needs HALOCHAT_DEV_MODE,
halochat/settings_check.py); on any other server the path is a 404. Admin only, and left out
of the OpenAPI document: it is a test harness, not part of the API.
"""

from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from halochat import clock
from halochat.auth import authenticated
from halochat.constants import Role
from halochat.routes.common import json_response, parse_body

MAX_ADVANCE_SECONDS = 366 * 24 * 3600

bp = Blueprint("test_clock", url_prefix="/v1/test/clock")


class AdvanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # 0: only wait for the timers already due.
    advance_seconds: float = Field(ge=0, le=MAX_ADVANCE_SECONDS, allow_inf_nan=False)


@bp.post("/")
@authenticated(Role.ADMIN)
async def advance_clock(request: Request) -> HTTPResponse:
    """Moves the clock forward, then answers once the timers that fell due have run."""
    body = parse_body(request, AdvanceIn)
    await request.app.ctx.services.timers.advance(body.advance_seconds)
    current = clock.current()
    return json_response({"now": current.now(), "offset_seconds": current.offset.total_seconds()})
