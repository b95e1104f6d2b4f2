"""The browser playground (docs/playground.md): static files served at /playground when
HALOCHAT_PLAYGROUND=true. The page uses only the documented HTTP API and WebSocket protocol."""

from pathlib import Path

from sanic import Blueprint
from sanic.response import HTTPResponse, redirect

STATIC_DIR = Path(__file__).parent / "static"


def playground_blueprint() -> Blueprint:
    bp = Blueprint("playground")
    bp.static("/playground/", STATIC_DIR, index="index.html", name="files")

    @bp.get("/playground", strict_slashes=True)
    async def to_index(request: object) -> HTTPResponse:
        # Relative URLs in the page resolve against /playground/.
        return redirect("/playground/")

    return bp
