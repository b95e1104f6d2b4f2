"""The adapted embedded engine (halochat.db.mongoeco_flat) answers exactly as mongoeco's own.

The same operations, the ones halochat's code runs plus the edge cases the adaptations touch
(duplicate keys across number types, unordered and ordered batches with errors, conditional
updates by _id, sorted pages after a write changed the field's types), go to two embedded
children on halochat's real indexes: one with the plain engine (`--plain`), one adapted, as
`make run` starts it. Every outcome (result or error, with its code and key) must be equal.
"""

import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import Int64, ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from halochat.db.embedded import DB_FILE, READY_PREFIX
from halochat.documents import ChatSession, Message

START_TIMEOUT = 60


def _start(data_dir: Path, *, plain: bool) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "halochat.db.embedded", "--data-dir", str(data_dir)]
    proc = subprocess.Popen(
        [*args, *(["--plain"] if plain else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the child prints READY <uri>, or exits
    assert line.startswith(READY_PREFIX), f"embedded child did not start: {line!r}"
    return proc, line[len(READY_PREFIX) :].strip()


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Database]]:
    """name -> database; the files are in <root>/<name>/ (see sqlite_file)."""
    root = tmp_path_factory.mktemp("differential")
    procs, clients, dbs = [], [], {}
    try:
        for name in ("plain", "adapted"):
            proc, uri = _start(root / name, plain=name == "plain")
            procs.append(proc)
            client = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=START_TIMEOUT * 1000)
            clients.append(client)
            dbs[name] = client["differential"]
            dbs[name].data_dir = root / name  # type: ignore[attr-defined]
        yield dbs
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()  # the child exits at EOF on its stdin
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def outcome(call: Callable[[], Any]) -> Any:
    """What a client sees: the result, or the error with its code and duplicate key."""
    try:
        result = call()
    except BulkWriteError as exc:
        errors = [
            {k: e.get(k) for k in ("index", "code", "keyPattern", "keyValue", "errmsg")}
            for e in exc.details["writeErrors"]
        ]
        return ("BulkWriteError", exc.details["nInserted"], errors)
    except DuplicateKeyError as exc:
        details = exc.details or {}
        return ("DuplicateKeyError", exc.code, details.get("keyPattern"), details.get("keyValue"))
    except OperationFailure as exc:
        return ("OperationFailure", exc.code, str(exc))
    if hasattr(result, "inserted_id"):
        return ("inserted", result.inserted_id)
    if hasattr(result, "inserted_ids"):
        return ("inserted", result.inserted_ids)
    if hasattr(result, "matched_count"):
        return ("updated", result.matched_count, result.modified_count, result.upserted_id)
    if hasattr(result, "deleted_count"):
        return ("deleted", result.deleted_count)
    return result


def message(session: ObjectId, seq: Any, cmid: str, n: int) -> dict[str, Any]:
    return {
        "_id": ObjectId(f"{n:024x}"),
        "session_id": session,
        "seq": seq,
        "sender_id": session,
        "sender_role": "customer",
        "client_msg_id": cmid,
        "body": f"halo {n}",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
    }


def scenario(db: Database) -> list[Any]:
    """The operations, in order; each appends what the client saw."""
    seen: list[Any] = []
    messages, sessions, misc = db["messages"], db["sessions"], db["misc"]
    messages.create_indexes(Message.Settings.indexes)
    sessions.create_indexes(ChatSession.Settings.indexes)
    seen.append(sorted(i["name"] for i in messages.list_indexes()))

    a, b = ObjectId("6500000000000000000000aa"), ObjectId("6500000000000000000000bb")
    run = seen.append
    # Single inserts, then duplicates of each unique key (numbers equal across types).
    for seq in range(1, 6):
        run(outcome(lambda seq=seq: messages.insert_one(message(a, seq, f"c{seq}", seq))))
    run(outcome(lambda: messages.insert_one(message(b, 1, "c1", 100))))  # other session
    for n, (seq, cmid) in enumerate([(2, "new"), (2.0, "new"), (Int64(2), "new"), (9, "c3")]):
        run(outcome(lambda s=seq, c=cmid, n=n: messages.insert_one(message(a, s, c, 200 + n))))
    run(outcome(lambda: messages.insert_one(message(a, 6, "c6", 1))))  # _id taken

    # Group commit: unordered batches with duplicates inside and against stored messages;
    # an ordered one stops at its first error; a one-document batch.
    batch = [
        message(a, 6, "c6", 300),
        message(a, 3, "dup-seq", 301),
        message(a, 7, "c2", 302),  # client_msg_id taken
        message(a, 8, "c8", 303),
        message(a, 8, "c8b", 304),  # seq repeated inside the batch
        message(b, 2, "c2", 305),
    ]
    run(outcome(lambda: messages.insert_many(batch, ordered=False)))
    ordered = [message(b, 3, "o3", 310), message(b, 3, "o3b", 311), message(b, 4, "o4", 312)]
    run(outcome(lambda: messages.insert_many(ordered, ordered=True)))
    run(outcome(lambda: messages.insert_many([message(b, 1, "one", 320)], ordered=False)))
    run(outcome(lambda: messages.insert_many([message(b, 9, f"k{i}", 400 + i) for i in range(1)])))

    # Reads: the idempotency lookup, history pages, resync ranges, projections, counts.
    run(messages.find_one({"session_id": a, "client_msg_id": "c3"}))
    run(messages.find_one({"session_id": a, "client_msg_id": "missing"}))
    run(list(messages.find({"session_id": a, "seq": {"$lt": 7}}).sort("seq", DESCENDING).limit(3)))
    run(list(messages.find({"session_id": a, "seq": {"$gt": 1, "$lte": 8}}).sort("seq", 1)))
    run(list(messages.find({"session_id": b}, {"_id": 0, "seq": 1, "body": 1}).sort("seq", 1)))
    run(list(messages.find({"seq": {"$in": [1, 4, 8]}}).sort([("session_id", 1), ("seq", -1)])))
    run(messages.count_documents({"session_id": a}))
    run(sorted(messages.distinct("client_msg_id", {"session_id": b})))
    # Updates: unique violations, an update that keeps its own key.
    run(outcome(lambda: messages.update_one({"session_id": a, "seq": 5}, {"$set": {"seq": 1}})))
    run(outcome(lambda: messages.update_one({"session_id": a, "seq": 5}, {"$set": {"body": "e"}})))
    # A write that changes the field's types after the cached features said "numbers only".
    run(outcome(lambda: messages.insert_one(message(a, [20, 0], "arr", 500))))
    run(outcome(lambda: messages.update_one({"client_msg_id": "c4"}, {"$set": {"seq": "four"}})))
    run(list(messages.find({"session_id": a}, {"seq": 1, "_id": 0}).sort("seq", ASCENDING)))
    run(list(messages.find({"session_id": a, "seq": 20}, {"client_msg_id": 1})))
    run(outcome(lambda: messages.insert_one(message(a, 0, "arr", 501))))  # cmid taken

    # Sessions: the open-session unique sparse index, the state machine's conditional
    # transitions by _id + state, and the sweeper's overdue queries.
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    customers = [ObjectId(f"66{i:022x}") for i in range(6)]
    states = ["ACTIVE", "ACTIVE", "EXPIRED", "CLOSING", "PAIRING", "COMPLETED"]
    docs = []
    for i, state in enumerate(states):
        doc = {"_id": ObjectId(f"67{i:022x}"), "customer_id": customers[i], "state": state}
        doc["created_at"] = now - timedelta(minutes=30 - i)
        if state != "COMPLETED":
            doc["open_customer_id"] = customers[i]
        if state == "ACTIVE":
            doc["ends_at"] = now + timedelta(minutes=5 * (2 * i - 1))  # one due, one not
        if state in ("EXPIRED", "CLOSING"):
            doc["grace_deadline"] = now - timedelta(seconds=i)
        if state == "PAIRING":
            doc["pairing_deadline"] = now - timedelta(seconds=1)
        docs.append(doc)
    run(outcome(lambda: sessions.insert_many(docs)))
    again = {"_id": ObjectId(), "customer_id": customers[0], "open_customer_id": customers[0]}
    run(outcome(lambda: sessions.insert_one(again)))  # a second open session
    run(outcome(lambda: sessions.insert_one({"_id": ObjectId("680000000000000000000001")})))

    # The sweeper's three overdue queries (halochat/domain/sweeper.py), sorted by deadline.
    overdue = [
        ({"state": "ACTIVE", "ends_at": {"$lte": now}}, "ends_at"),
        (
            {"state": {"$in": ["CLOSING", "EXPIRED"]}, "grace_deadline": {"$lte": now}},
            "grace_deadline",
        ),
        ({"state": "PAIRING", "pairing_deadline": {"$lte": now}}, "pairing_deadline"),
    ]
    for query, deadline in overdue:
        run(list(sessions.find(query).sort(deadline).limit(10)))
    due = {"state": {"$in": ["ACTIVE", "CLOSING"]}, "ends_at": {"$lte": now}}
    for doc in docs:
        run(sessions.find_one_and_update({"_id": doc["_id"], **due}, {"$set": {"state": "X"}}))
    run(
        sessions.find_one_and_update(
            {"_id": docs[1]["_id"], "state": "ACTIVE"},
            {"$set": {"state": "EXPIRED"}, "$inc": {"last_seq": 3}},
            return_document=ReturnDocument.AFTER,
        )
    )
    run(
        outcome(
            lambda: sessions.update_one(
                {"_id": docs[2]["_id"], "state": "ACTIVE"}, {"$set": {"n": 1}}
            )
        )
    )
    run(
        outcome(
            lambda: sessions.update_one(
                {"_id": docs[3]["_id"], "$or": [{"state": "CLOSING"}, {"n": 2}]},
                {"$unset": {"open_customer_id": ""}},
            )
        )
    )
    run(
        outcome(
            lambda: sessions.update_one(
                {"_id": docs[5]["_id"]}, {"$set": {"open_customer_id": customers[0]}}
            )
        )
    )
    run(
        outcome(
            lambda: sessions.update_one({"_id": ObjectId(), "state": "ACTIVE"}, {"$set": {"n": 1}})
        )
    )
    run(list(sessions.find({"state": {"$in": ["EXPIRED", "X"]}}, {"state": 1}).sort("_id", -1)))

    # Numeric and string _ids: equal numbers of any type are one key.
    for doc_id in (1, 1.0, Int64(1), "1", 2.5, "k"):
        run(outcome(lambda doc_id=doc_id: misc.insert_one({"_id": doc_id, "v": str(doc_id)})))
    run(outcome(lambda: misc.insert_many([{"_id": 3}, {"_id": 3.0}, {"_id": "3"}], ordered=False)))
    run(misc.find_one_and_update({"_id": "k", "v": {"$in": ["k"]}}, {"$set": {"v": "K"}}))
    run(list(misc.find({}, {"_id": 1}).sort("_id", 1)))
    return seen


def test_adapted_engine_answers_as_mongoeco(databases: dict[str, Database]) -> None:
    plain, adapted = scenario(databases["plain"]), scenario(databases["adapted"])
    assert len(plain) == len(adapted)
    for step, (expected, got) in enumerate(zip(plain, adapted, strict=True)):
        assert got == expected, f"step {step}: adapted {got!r} != plain {expected!r}"
    # The scenario did exercise what it is about.
    kinds = {o[0] for o in plain if isinstance(o, tuple)}
    assert {"BulkWriteError", "DuplicateKeyError", "inserted", "updated"} <= kinds
    # Adaptation 10: the plain engine recorded each write's change event, the adapted none.
    assert change_events(databases["plain"]) > 20
    assert change_events(databases["adapted"]) == 0


def change_events(db: Database) -> int:
    path = db.data_dir / DB_FILE  # type: ignore[attr-defined]
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM change_outbox_identities").fetchone()[0]
