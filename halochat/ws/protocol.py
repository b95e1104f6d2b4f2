"""Envelope of every client frame: {"type": ..., "id": ..., "data": {...}}."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ClientEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=64)
    # Echoed in the ack/error so the client can match answers to requests.
    id: str | None = Field(default=None, min_length=1, max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)
