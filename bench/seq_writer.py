"""The two ways of issue 13 to keep one writer per session's messages, measured side by side.

    .venv/bin/python bench/seq_writer.py [--messages 2000] [--sessions 50]

On one embedded database (halochat.db.embedded) and one nats-server (the venv's):

- (a) owner process: the database cost is the insert alone (the owner keeps the counter in
  memory), plus, for a sender on another process, one NATS request/reply to the owner;
- (b) conditional `$inc`: every send is a find_one_and_update on the session (ACTIVE, the
  sender, ends_at) that takes the seq, then the insert: two database round trips.

Each is run sequentially (latency of one send) and with `--sessions` sessions sending at once
(throughput). docs/scaling.md has the figures and the choice.
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
from bson import ObjectId
from pymongo import ReturnDocument

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from halochat.cluster.bus import nats_server_binary
from halochat.db.embedded import EmbeddedMongo
from halochat.launch import free_port


def doc(session_id: ObjectId, seq: int) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "seq": seq,
        "sender_id": ObjectId(),
        "sender_role": "customer",
        "client_msg_id": f"m{seq}",
        "body": "x" * 64,
        "created_at": datetime.now(UTC),
    }


async def run(messages: int, sessions: int, uri: str, port: int) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        db = client["seqbench"]
        await db["messages"].create_index([("session_id", 1), ("seq", 1)], unique=True)
        sessions_coll, msgs = db["sessions"], db["messages"]
        ends = datetime.now(UTC) + timedelta(hours=1)

        async def new_session() -> ObjectId:
            sid = ObjectId()
            await sessions_coll.insert_one(
                {
                    "_id": sid,
                    "state": "ACTIVE",
                    "customer_id": 1,
                    "ends_at": ends,
                    "last_seq": 0,
                }
            )
            return sid

        async def send_a(sid: ObjectId, seq: int) -> None:
            await msgs.insert_one(doc(sid, seq))

        async def send_b(sid: ObjectId, _seq: int) -> None:
            got = await sessions_coll.find_one_and_update(
                {
                    "_id": sid,
                    "state": "ACTIVE",
                    "customer_id": 1,
                    "ends_at": {"$gt": datetime.now(UTC)},
                },
                {"$inc": {"last_seq": 1}},
                projection={"last_seq": 1},
                return_document=ReturnDocument.AFTER,
            )
            await msgs.insert_one(doc(sid, got["last_seq"]))

        async def take_only(sid: ObjectId, _seq: int) -> None:
            await sessions_coll.find_one_and_update(
                {"_id": sid, "state": "ACTIVE", "ends_at": {"$gt": datetime.now(UTC)}},
                {"$inc": {"last_seq": 1}},
                projection={"last_seq": 1},
            )

        async def measure(send: Any, parallel: int) -> tuple[float, float, float]:
            sids = [await new_session() for _ in range(parallel)]
            per = messages // parallel
            lat: list[float] = []

            async def one(sid: ObjectId) -> None:
                for seq in range(1, per + 1):
                    t = time.perf_counter()
                    await send(sid, seq)
                    lat.append((time.perf_counter() - t) * 1000)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(s) for s in sids))
            elapsed = time.perf_counter() - t0
            lat.sort()
            return per * parallel / elapsed, statistics.median(lat), lat[int(len(lat) * 0.99)]

        nc = await nats.connect(f"nats://127.0.0.1:{port}")

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await nc.subscribe("owner", cb=echo)
        hop: list[float] = []
        for _ in range(500):
            t = time.perf_counter()
            await nc.request("owner", b"x" * 200, timeout=5)
            hop.append((time.perf_counter() - t) * 1000)
        hop.sort()
        await nc.close()
        print(
            f"NATS request/reply (the forward to an owner): p50 {statistics.median(hop):.2f}"
            f" ms, p99 {hop[int(len(hop) * 0.99)]:.2f} ms"
        )
        for name, send in (
            ("(a) insert only", send_a),
            ("(b) $inc + insert", send_b),
            ("(b) its $inc alone", take_only),
        ):
            for parallel in (1, sessions):
                rate, p50, p99 = await measure(send, parallel)
                print(
                    f"{name:<20} {parallel:>3} sessions at once: {rate:7.0f} msg/s, "
                    f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
                )
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_server = EmbeddedMongo(Path(tmp) / "db", exclusive=True)
        uri = db_server.start()
        port = free_port()
        nats_proc = subprocess.Popen(
            [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        try:
            asyncio.run(run(args.messages, args.sessions, uri, port))
        finally:
            nats_proc.terminate()
            nats_proc.wait(5)
            db_server.stop()


if __name__ == "__main__":
    main()
