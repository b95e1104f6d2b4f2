"""Benchmarks the embedded database as halochat uses it, at growing numbers of stored messages.

    .venv/bin/python bench/store.py [--sizes 0,10000,100000] [--ops 300] [--rounds 3] [--cpu]
                                    [--keep DIR]

For each size it starts an embedded MongoDB-wire server (halochat.db.embedded.EmbeddedMongo)
in a temporary directory, creates halochat's collections and indexes with init_db and fills
the messages collection with insert_many (100 messages per session). Then, in rounds that
visit every size in turn, it measures through pymongo.AsyncMongoClient the operations the
chat path runs:

- insert_one: a Message into a session (as message.send does);
- find_one by (session_id, client_msg_id): the idempotency lookup before each send;
- update_one: `$inc` of a session's last_seq (a per-update figure);
- find_one_and_update by (_id, state): the state machine's conditional transition;
- insert_many of 50: a group-commit batch of chat messages (documents/s);
- history page: 50 messages of one session by seq range, sorted (GET .../messages).

Each measurement uses a fresh session, so only the size of the whole collection differs.
Figures are medians (see `timed` and `run`). On a shared machine the rates follow the load;
the CPU time the database child spent per operation (`--cpu`, read from /proc) follows it
much less, so it is the figure to compare two versions of the store by.
"""

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson import ObjectId

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from halochat.constants import Role, SessionState
from halochat.db.connect import init_db, make_client
from halochat.db.embedded import EmbeddedMongo
from halochat.documents import ChatSession, Message

DB_NAME = "bench"
PER_SESSION = 100  # messages per filler session
BATCH = 1_000  # insert_many batch size while filling
PAGE = 50
BATCH_OF = 50  # documents per timed insert_many


def message_doc(session_id: ObjectId, seq: int, sender: ObjectId) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "session_id": session_id,
        "seq": seq,
        "sender_id": sender,
        "sender_role": Role.CUSTOMER.value,
        "client_msg_id": f"c-{seq}-{ObjectId()}",
        "body": f"message {seq}: apa kabar? semoga harimu menyenangkan",
        "created_at": datetime.now(UTC),
    }


def session_doc(customer: ObjectId) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "customer_id": customer,
        "customer_name": "Customer",
        "mitra_id": ObjectId(),
        "mitra_name": "Mitra",
        "state": SessionState.ACTIVE.value,
        "tier": {"id": "15m", "label": "15 menit", "minutes": 15, "price": 15000},
        "created_at": datetime.now(UTC),
        "last_seq": 0,
    }


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process `pid` so far (0 without /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, db: Any, ops: int, pid: int | None = None, cpu: bool = False) -> None:
        self.pid = pid  # the database child's, for --cpu
        self.cpu = cpu
        self.sessions = db[ChatSession.Settings.name]
        self.messages = db[Message.Settings.name]
        self.ops = ops
        self.stored = 0
        self.session_ids: list[ObjectId] = []
        self.cpu_ms: dict[str, float] = {}

    async def timed(self, name: str, calls: list[Callable[[], Awaitable[Any]]]) -> list[float]:
        """`timed`, also noting the child's CPU ms per call (warm-up calls included)."""
        before = cpu_seconds(self.pid)
        durations = await timed(calls)
        self.cpu_ms[name] = (cpu_seconds(self.pid) - before) * 1000 / len(calls)
        return durations

    async def fill_to(self, target: int) -> float:
        started = time.perf_counter()
        while self.stored < target:
            count = min(BATCH, target - self.stored)
            docs, new_sessions = [], []
            while len(docs) < count:
                session = session_doc(ObjectId())
                new_sessions.append(session)
                n = min(PER_SESSION, count - len(docs))
                owner = session["customer_id"]
                docs += [message_doc(session["_id"], s, owner) for s in range(1, n + 1)]
                session["last_seq"] = n
            await self.sessions.insert_many(new_sessions)
            await self.messages.insert_many(docs, ordered=False)
            self.session_ids += [s["_id"] for s in new_sessions]
            self.stored += len(docs)
        return time.perf_counter() - started

    async def measure(self) -> dict[str, float]:
        session = session_doc(ObjectId())
        await self.sessions.insert_one(session)
        self.session_ids.append(session["_id"])
        sid, sender = session["_id"], session["customer_id"]

        docs = [message_doc(sid, seq, sender) for seq in range(1, self.ops + 1)]
        inserts = await self.timed(
            "insert_one", [lambda d=d: self.messages.insert_one(d) for d in docs]
        )
        self.stored += self.ops

        async def find(session_id: ObjectId, client_msg_id: str) -> None:
            query = {"session_id": session_id, "client_msg_id": client_msg_id}
            assert await self.messages.find_one(query) is not None

        keys = [(d["session_id"], d["client_msg_id"]) for d in random.sample(docs, len(docs))]
        finds = await self.timed("find_one", [lambda k=k: find(*k) for k in keys])

        async def bump(target: ObjectId) -> None:
            result = await self.sessions.update_one({"_id": target}, {"$inc": {"last_seq": 1}})
            assert result.modified_count == 1

        targets = random.choices(self.session_ids, k=self.ops)
        updates = await self.timed("update_one", [lambda t=t: bump(t) for t in targets])

        async def transition(target: ObjectId) -> None:
            query = {"_id": target, "state": SessionState.ACTIVE.value}
            assert await self.sessions.find_one_and_update(query, {"$inc": {"n": 1}})

        targets = random.choices(self.session_ids, k=self.ops)
        transitions = await self.timed(
            "find_one_and_update", [lambda t=t: transition(t) for t in targets]
        )

        batch_session = ObjectId()
        batches = [
            [message_doc(batch_session, b * BATCH_OF + s, sender) for s in range(1, BATCH_OF + 1)]
            for b in range(max(6, self.ops // 20))
        ]
        insert_manys = await self.timed(
            "insert_many of 50",
            [lambda b=b: self.messages.insert_many(b, ordered=False) for b in batches],
        )
        self.stored += sum(len(b) for b in batches)

        async def page(before: int) -> None:
            cursor = self.messages.find({"session_id": sid, "seq": {"$lt": before}})
            got = await cursor.sort("seq", -1).limit(PAGE).to_list()
            assert [m["seq"] for m in got] == list(range(before - 1, before - 1 - PAGE, -1))

        befores = [random.randint(PAGE + 1, self.ops + 1) for _ in range(max(20, self.ops // 5))]
        pages = await self.timed("history page", [lambda b=b: page(b) for b in befores])
        if self.cpu:
            return {f"{name}, child CPU ms": ms for name, ms in self.cpu_ms.items()}
        return {
            "insert_one/s": 1 / statistics.median(inserts),
            "find_one by (session_id, client_msg_id)/s": 1 / statistics.median(finds),
            "update_one $inc last_seq/s": 1 / statistics.median(updates),
            "find_one_and_update by (_id, state)/s": 1 / statistics.median(transitions),
            "insert_many of 50, documents/s": BATCH_OF / statistics.median(insert_manys),
            "history page of 50, median ms": statistics.median(pages) * 1000,
        }


async def timed(calls: list[Callable[[], Awaitable[Any]]]) -> list[float]:
    """Runs the calls one after the other (after 3 untimed warm-up calls); their durations.

    Figures use the median: the bench machine is shared, and the median keeps a burst of
    someone else's work from passing for a property of the store.
    """
    for call in calls[:3]:
        await call()
    durations = []
    for call in calls[3:]:
        started = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - started)
    return durations


def print_table(results: dict[int, dict[str, float]]) -> bool:
    sizes = sorted(results)
    first, last = sizes[0], sizes[-1]
    names = list(results[first])
    head = f"{'operation':44}" + "".join(f"{f'{s:,} msgs':>14}" for s in sizes)
    head += f"{f'{last:,}/{first:,}':>14}{'slowdown':>10}"
    print(head)
    print("-" * len(head))
    ok = True
    for name in names:
        values = [results[s][name] for s in sizes]
        ratio = values[-1] / values[0]
        # Rates: lower is slower; latency and CPU time: higher is slower.
        slowdown = ratio if name.endswith("ms") else 1 / ratio
        ok &= slowdown <= 2.0
        row = f"{name:44}" + "".join(f"{v:>14.1f}" for v in values)
        print(row + f"{ratio:>14.2f}{slowdown:>9.2f}x")
    print(f"\nall figures at {last:,} within 2x of those at {first:,}: {'yes' if ok else 'NO'}")
    return ok


async def run(data_dir: Path, sizes: list[int], ops: int, rounds: int, cpu: bool) -> bool:
    """One embedded server per size, filled first; then `rounds` rounds that measure every
    size in turn. Each figure is the median over the rounds, so that the sizes are compared
    under the same (shared, fluctuating) machine load rather than minutes apart."""
    with contextlib.ExitStack() as stack:
        benches: dict[int, Bench] = {}
        clients = []
        for size in sizes:
            embedded = EmbeddedMongo(data_dir / f"messages-{size}")
            uri = stack.enter_context(embedded)
            client = make_client(uri)
            clients.append(client)
            await init_db(client, DB_NAME)
            bench = benches[size] = Bench(client[DB_NAME], ops, embedded.pid, cpu)
            if size:
                took = await bench.fill_to(size)
                print(f"filled to {size:,} messages in {took:.1f} s", flush=True)
        try:
            samples: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
            for round_no in range(1, rounds + 1):
                for size in sizes:
                    figures = await benches[size].measure()
                    samples[size].append(figures)
                    print(
                        f"round {round_no}, {size:,} messages: "
                        + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()),
                        flush=True,
                    )
        finally:
            for client in clients:
                await client.close()
    results = {
        size: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        for size, runs in samples.items()
    }
    print()
    return print_table(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0,10000,100000", help="stored messages, ascending")
    parser.add_argument("--ops", type=int, default=300, help="operations timed per figure")
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds per size")
    parser.add_argument(
        "--cpu", action="store_true", help="report the database child's CPU ms per operation"
    )
    parser.add_argument("--keep", type=Path, help="data dir to use (kept); default: a temp dir")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    random.seed(7)
    if args.keep:
        ok = asyncio.run(run(args.keep, sizes, args.ops, args.rounds, args.cpu))
    else:
        with tempfile.TemporaryDirectory(prefix="halochat-bench-") as tmp:
            ok = asyncio.run(run(Path(tmp), sizes, args.ops, args.rounds, args.cpu))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
