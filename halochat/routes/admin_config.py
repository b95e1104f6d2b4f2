"""The Control Center configuration (admin): read, replace (PUT, every field), merge (PATCH)."""

from typing import Any

from pydantic import ConfigDict, Field, StrictBool
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from halochat.auth import authenticated
from halochat.constants import Role
from halochat.documents import ConfigValues, Tier
from halochat.documents.app_config import (
    MAX_FREE_TRIAL_MINUTES,
    MAX_PAIRING_TIMEOUT_SECONDS,
    MAX_TIERS,
)
from halochat.domain.app_config import replace_config, require_config, update_config
from halochat.routes.common import json_response, parse_body
from halochat.routes.openapi_docs import BODY, ROLE, answers, errors, json_body
from halochat.views import ConfigView

bp = Blueprint("admin_config", url_prefix="/v1/admin/config")


class ConfigIn(ConfigValues):
    """PUT: the whole configuration. Every field is required, so that a forgotten one is a
    422 instead of a silent reset to its default."""

    model_config = ConfigDict(extra="forbid")

    free_trial_enabled: StrictBool
    free_trial_minutes: int = Field(gt=0, le=MAX_FREE_TRIAL_MINUTES)
    pairing_timeout_seconds: int = Field(gt=0, le=MAX_PAIRING_TIMEOUT_SECONDS)


def _without_defaults(schema: dict[str, Any]) -> None:
    # The None defaults below only mean "absent"; clients must not read them as values.
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class ConfigPatch(ConfigValues):
    """PATCH: only the fields given change (a JSON merge; `tiers` is replaced as a whole);
    null is not a value of any field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_without_defaults)

    # Defaults are not validated: an absent field stays absent (exclude_unset) while an
    # explicit null fails its type. (The None defaults are never read.)
    tiers: list[Tier] = Field(default=None, min_length=1, max_length=MAX_TIERS)  # type: ignore[assignment]
    free_trial_enabled: StrictBool = Field(default=None)  # type: ignore[assignment]
    free_trial_minutes: int = Field(  # type: ignore[assignment]
        default=None, gt=0, le=MAX_FREE_TRIAL_MINUTES
    )
    pairing_timeout_seconds: int = Field(  # type: ignore[assignment]
        default=None, gt=0, le=MAX_PAIRING_TIMEOUT_SECONDS
    )


@bp.get("/")
@openapi.summary("Read the Control Center configuration (admin)")
@answers(200, ConfigView, "the configuration")
@errors(*ROLE)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def read_config(request: Request) -> HTTPResponse:
    config = await require_config(request.app.ctx.services.settings)
    return json_response(ConfigView.of(config).dump())


@bp.put("/")
@openapi.summary("Replace the Control Center configuration, every field required (admin)")
@json_body(ConfigIn)
@answers(200, ConfigView, "the new configuration (version + 1)")
@errors(*ROLE, *BODY)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def write_config(request: Request) -> HTTPResponse:
    values = parse_body(request, ConfigIn)
    config = await replace_config(request.app.ctx.services.settings, values)
    return json_response(ConfigView.of(config).dump())


@bp.patch("/")
@openapi.summary("Change some Control Center settings; the others stay as they are (admin)")
@json_body(ConfigPatch)
@answers(200, ConfigView, "the new configuration (version + 1)")
@errors(*ROLE, *BODY)
@openapi.secured("bearer")
@authenticated(Role.ADMIN)
async def patch_config(request: Request) -> HTTPResponse:
    changes = parse_body(request, ConfigPatch).model_dump(mode="python", exclude_unset=True)
    config = await update_config(request.app.ctx.services.settings, changes)
    return json_response(ConfigView.of(config).dump())
