"""Envelope of every client frame: {"type": ..., "id": ..., "data": {...}}."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from halochat.constants import AppState


class ClientEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=64)
    # Echoed in the ack/error so the client can match answers to requests.
    id: str | None = Field(default=None, min_length=1, max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)


class AppStateIn(BaseModel):
    """data of an app.state frame: pushes go out while no device is in the foreground."""

    model_config = ConfigDict(extra="forbid")

    state: AppState
