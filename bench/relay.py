"""A bare Sanic WebSocket relay: the yardstick bench/load.py compares halochat with.

Same transport, same frame shapes (`ready`, `message.send` → `ack` + `message.new` to the
other sockets of the session), but no auth, no storage, no state machine: what is left is
the cost of Sanic + WebSocket framing + JSON, i.e. the ceiling halochat can approach.

    python bench/relay.py --port 8100
A client joins sessions with `ws://host:port/ws?session=<id>` (repeatable).
"""

import argparse
import contextlib
import itertools
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
from sanic import Request, Sanic, Websocket
from sanic.response import HTTPResponse, json

app = Sanic("halochat_bench_relay")
app.config.WEBSOCKET_MAX_SIZE = 1 << 20
ROOMS: dict[str, set[Websocket]] = defaultdict(set)
SEQS: defaultdict[str, itertools.count] = defaultdict(lambda: itertools.count(1))


def _dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


@app.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    return json({"status": "ready"})


@app.websocket("/ws")
async def relay(request: Request, ws: Websocket) -> None:
    sessions = request.args.getlist("session") or []
    for sid in sessions:
        ROOMS[sid].add(ws)
    await ws.send(_dumps({"type": "ready", "data": {"sessions": sessions}}))
    try:
        async for text in ws:
            frame = orjson.loads(text)
            if frame.get("type") != "message.send":
                await ws.send(_dumps({"type": "ack", "id": frame.get("id"), "data": {}}))
                continue
            data = frame["data"]
            sid = data["session_id"]
            message = {
                "session_id": sid,
                "seq": next(SEQS[sid]),
                "client_msg_id": data["client_msg_id"],
                "body": data["body"],
                "created_at": datetime.now(UTC).isoformat(),
            }
            ack = {"type": "ack", "id": frame.get("id"), "data": {"message": message}}
            await ws.send(_dumps(ack))
            out = _dumps({"type": "message.new", "data": {"message": message}})
            for peer in tuple(ROOMS.get(sid, ())):
                if peer is not ws:
                    with contextlib.suppress(Exception):
                        await peer.send(out)
    finally:
        for sid in sessions:
            ROOMS[sid].discard(ws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    app.run(host=args.host, port=args.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
