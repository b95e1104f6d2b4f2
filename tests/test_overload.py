"""A client far ahead of the server: extra frames get rate_limited, the socket stays open,
keepalive keeps working, and every acknowledged message is stored exactly once."""

import json

from tests.support.clients import WsClient, api
from tests.support.flows import make_pair, open_active_session
from tests.support.server import ServerProcess

BURST = 600  # well above the server's per-connection inbox (ws/handler.py INBOX_SIZE)


async def test_burst_beyond_the_inbox_is_refused_not_dropped(server: ServerProcess) -> None:
    customer, mitra = make_pair(server, "-burst")
    session = await open_active_session(server, customer, mitra)
    sid = session["id"]
    ws = await WsClient.open(server.ws_url, customer)
    try:
        await ws.wait_for("ready")
        frames = [
            json.dumps(
                {
                    "type": "message.send",
                    "id": f"b{i}",
                    "data": {"session_id": sid, "client_msg_id": f"burst-{i}", "body": f"m{i}"},
                }
            )
            for i in range(BURST)
        ]
        for text in frames:  # no waiting for answers: the burst outruns the database
            await ws.send(text)
        answers = await ws.answers("b", BURST, timeout=90)
        acked = {k: v for k, v in answers.items() if v["type"] == "ack"}
        refused = {k: v for k, v in answers.items() if v["type"] == "error"}
        assert refused, "the burst should overflow the inbox"
        assert {v["error"]["code"] for v in refused.values()} == {"rate_limited"}
        assert acked, "frames inside the inbox are still handled"
        pong = await ws.request("ping")
        assert pong["type"] == "pong"  # the connection survived the burst
    finally:
        await ws.close()

    stored: list[dict] = []
    async with api(server.base_url, customer) as http:
        has_more = True
        while has_more:  # forward paging from the start
            after = stored[-1]["seq"] if stored else 0
            page = (
                await http.get(
                    f"/v1/sessions/{sid}/messages", params={"after_seq": after, "limit": 200}
                )
            ).json()
            stored += page["messages"]
            has_more = page["has_more"]
    ids = [m["client_msg_id"] for m in stored]
    assert len(ids) == len(set(ids)) == len(acked)
    assert {f"burst-{k[1:]}" for k in acked} == set(ids)
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
